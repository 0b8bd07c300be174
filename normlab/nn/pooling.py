"""Fractional max-pooling (Graham 2014), "fractional_max_pool" in `POOLING`.

Max-pooling with a non-integer ratio α = N_in / N_out ∈ (1, 2) per spatial axis. Along an axis
of length N_in the pooling regions are cut by boundaries 0 = a_0 < a_1 < … < a_{N_out} = N_in whose
increments are all 1 or 2:
  pseudo-random  a_i = ⌈α(i + u)⌉ − ⌈α·u⌉,  u ~ U(0, 1)   (ends exactly at N_in: α·N_out = N_in)
  random         a random permutation of (N_in − N_out) increments of 2 and (2·N_out − N_in) of 1
Region i covers rows [a_i, a_{i+1} − 1] (disjoint) or [a_i, a_{i+1}] clipped to N_in − 1
(overlapping). The output is the max over the rectangle (row region) × (column region).

    y_NHWC = fractional_max_pool(x_NHWC, output_size=(21, 21), key=jax.random.key(0))
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from normlab.registry import POOLING

_MAX_WINDOW = 3  # an overlapping region spans at most a_{i+1} − a_i + 1 = 3 rows


def _check_sizes(n_in: int, n_out: int) -> None:
    if not (isinstance(n_in, int) and isinstance(n_out, int) and n_out < n_in < 2 * n_out):
        raise ValueError(
            f"fractional max-pooling needs a ratio N_in/N_out in (1, 2), "
            f"got N_in={n_in}, N_out={n_out}"
        )


def pseudo_random_boundaries(n_in: int, n_out: int, u: jax.Array | float) -> jax.Array:
    """Boundaries a_i = ⌈α(i + u)⌉ − ⌈α·u⌉, i = 0..N_out, α = N_in / N_out, for a given u ∈ [0, 1).

    Evaluated in exact integer arithmetic: with c = ⌈N_in·u⌉, α(i + u) = (N_in·i + N_in·u)/N_out and
    ⌈(A + v)/B⌉ = ⌈(A + ⌈v⌉)/B⌉ for integers A, B, so a_i = ⌈(N_in·i + c)/N_out⌉ − ⌈c/N_out⌉. No
    float rounding can then produce an increment of 0 or 3 or miss the end a_{N_out} = N_in.
    Jittable in u. Returns int32 (N_out + 1,).

        pseudo_random_boundaries(10, 7, 0.5)     # [0, 2, 3, 4, 6, 7, 9, 10]
    """
    _check_sizes(n_in, n_out)
    c = jnp.ceil(n_in * jnp.asarray(u, jnp.float32)).astype(jnp.int32)
    i = jnp.arange(n_out + 1, dtype=jnp.int32)
    return -((-(n_in * i + c)) // n_out) + (-c // n_out)


def random_boundaries(key: jax.Array, n_in: int, n_out: int) -> jax.Array:
    """Boundaries from a uniformly random order of the increments: (N_in − N_out) twos and
    (2·N_out − N_in) ones, so a_0 = 0 and a_{N_out} = N_in. Returns int32 (N_out + 1,).

        random_boundaries(jax.random.key(0), 10, 7)
    """
    _check_sizes(n_in, n_out)
    twos = n_in - n_out
    steps = jnp.concatenate(
        [jnp.full((twos,), 2, jnp.int32), jnp.ones((n_out - twos,), jnp.int32)]
    )
    steps = jax.random.permutation(key, steps)
    return jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(steps, dtype=jnp.int32)])


def draw_boundaries(key: jax.Array, n_in: int, n_out: int, *, pseudo_random: bool) -> jax.Array:
    """One draw of boundaries: `pseudo_random_boundaries` with u = jax.random.uniform(key), or
    `random_boundaries(key, ...)`. Returns int32 (N_out + 1,).

        rows = draw_boundaries(jax.random.key(0), 32, 21, pseudo_random=True)
    """
    if pseudo_random:
        return pseudo_random_boundaries(n_in, n_out, jax.random.uniform(key, ()))
    return random_boundaries(key, n_in, n_out)


def _pool_axis(x: jax.Array, bounds: jax.Array, axis: int, overlapping: bool) -> jax.Array:
    """Max over each region of one axis, with traced boundaries and a fixed window of 3."""
    n_in = x.shape[axis]
    start_O = bounds[:-1]
    last_O = jnp.minimum(bounds[1:], n_in - 1) if overlapping else bounds[1:] - 1
    index_OW = start_O[:, None] + jnp.arange(_MAX_WINDOW, dtype=jnp.int32)[None, :]
    valid_OW = index_OW <= last_O[:, None]
    gathered = jnp.take(x, jnp.minimum(index_OW, n_in - 1), axis=axis)  # axis → (O, W)
    valid_shape = [1] * gathered.ndim
    valid_shape[axis : axis + 2] = valid_OW.shape
    # −inf outside the region: the max and its gradient then only see the region's elements.
    masked = jnp.where(valid_OW.reshape(valid_shape), gathered, -jnp.inf)
    return jnp.max(masked, axis=axis + 1)


def fractional_max_pool_with_boundaries(
    x: jax.Array, rows: jax.Array, cols: jax.Array, *, overlapping: bool = False
) -> jax.Array:
    """Max-pools NHWC `x` over the regions given by row and column boundaries.

    y[n, i, j, c] = max over r ∈ R_i, s ∈ C_j of x[n, r, s, c], with R_i = [a_i, a_{i+1} − 1]
    (disjoint) or [a_i, min(a_{i+1}, N_in − 1)] (overlapping), likewise C_j. A max over a rectangle
    is separable, so rows are pooled first, then columns. Jittable in `rows`/`cols`.

        y = fractional_max_pool_with_boundaries(x_NHWC, rows, cols, overlapping=True)
    """
    if x.ndim != 4:
        raise ValueError(f"fractional max-pooling: input must be NHWC (4-D), got shape={x.shape}")
    y = _pool_axis(x, rows, axis=1, overlapping=overlapping)
    return _pool_axis(y, cols, axis=2, overlapping=overlapping)


def _output_hw(x: jax.Array, output_size: int | tuple[int, int]) -> tuple[int, int]:
    if x.ndim != 4:
        raise ValueError(f"fractional max-pooling: input must be NHWC (4-D), got shape={x.shape}")
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2:
        raise ValueError(
            f"fractional max-pooling: output_size must be an int or (h, w), got {output_size!r}"
        )
    for axis, n_in, n_out in zip("HW", x.shape[1:3], size, strict=True):
        if not (isinstance(n_out, int) and n_out < n_in < 2 * n_out):
            raise ValueError(
                f"fractional max-pooling: output_size={output_size!r} for input shape {x.shape} "
                f"gives N_in/N_out = {n_in}/{n_out} on axis {axis}; the ratio must be in (1, 2)"
            )
    return size


@POOLING.register("fractional_max_pool")
def fractional_max_pool(
    x: jax.Array,
    output_size: int | tuple[int, int],
    *,
    key: jax.Array,
    overlapping: bool = False,
    pseudo_random: bool = True,
) -> jax.Array:
    """Fractional max-pooling (Graham 2014) of NHWC `x` to (h_out, w_out) = `output_size`.

    Each axis needs α = N_in / N_out ∈ (1, 2). Boundaries are drawn once per call, rows from
    k_rows and columns from k_cols where (k_rows, k_cols) = jax.random.split(key): the same
    regions for the whole batch, as in TensorFlow's fractional_max_pool (per-example regions
    would only change which pixels pair up, at the cost of a gather per example). See the module
    docstring for the boundary rules. Jittable; the output has x's dtype.

        y = fractional_max_pool(x_NHWC, (21, 21), key=jax.random.key(0), overlapping=True)
    """
    h_out, w_out = _output_hw(x, output_size)
    key_rows, key_cols = jax.random.split(key)
    rows = draw_boundaries(key_rows, x.shape[1], h_out, pseudo_random=pseudo_random)
    cols = draw_boundaries(key_cols, x.shape[2], w_out, pseudo_random=pseudo_random)
    return fractional_max_pool_with_boundaries(x, rows, cols, overlapping=overlapping)


class FractionalMaxPool(nn.Module):
    """Linen wrapper of `fractional_max_pool`.

    train: a fresh draw of regions per call, from the "dropout" RNG stream.
    eval:  deterministic pseudo-random regions with u = 0.5 for rows and columns, whatever
           `pseudo_random` says, so evaluation is reproducible without an RNG. (Graham instead
           averages test predictions over several random draws; call `fractional_max_pool`
           with several keys for that.)

    Attributes:
      output_size: int or (h_out, w_out); N_in / N_out ∈ (1, 2) on both axes.
      overlapping: regions [a_i, a_{i+1}] instead of [a_i, a_{i+1} − 1].
      pseudo_random: pseudo-random (True) or random (False) boundaries at train time.

        pool = FractionalMaxPool(output_size=21)
        y = pool.apply({}, x_NHWC, train=True, rngs={"dropout": jax.random.key(0)})
    """

    output_size: int | tuple[int, int]
    overlapping: bool = False
    pseudo_random: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        h_out, w_out = _output_hw(x, self.output_size)
        if train:
            return fractional_max_pool(
                x,
                (h_out, w_out),
                key=self.make_rng("dropout"),
                overlapping=self.overlapping,
                pseudo_random=self.pseudo_random,
            )
        rows = pseudo_random_boundaries(x.shape[1], h_out, 0.5)
        cols = pseudo_random_boundaries(x.shape[2], w_out, 0.5)
        return fractional_max_pool_with_boundaries(x, rows, cols, overlapping=self.overlapping)
