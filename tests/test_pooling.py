"""Fractional max-pooling (Graham 2014) vs a float64 NumPy reference with explicit region loops."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normlab.nn.pooling import (
    FractionalMaxPool,
    draw_boundaries,
    fractional_max_pool,
    fractional_max_pool_with_boundaries,
    pseudo_random_boundaries,
    random_boundaries,
)
from normlab.registry import POOLING

SIZES = [(10, 7), (32, 21), (9, 5), (25, 24), (5, 3)]  # (N_in, N_out), ratios in (1, 2)


def _ref_pseudo_random_boundaries(n_in, n_out, u):
    """Graham's formula a_i = ceil(α(i + u)) − ceil(α·u), α = N_in / N_out, in float64."""
    alpha = n_in / n_out
    return np.array([math.ceil(alpha * (i + u)) - math.ceil(alpha * u) for i in range(n_out + 1)])


def _ref_regions(bounds, n_in, overlapping):
    """Inclusive (first, last) index of every region."""
    regions = []
    for i in range(len(bounds) - 1):
        last = min(bounds[i + 1], n_in - 1) if overlapping else bounds[i + 1] - 1
        regions.append((int(bounds[i]), int(last)))
    return regions


def _ref_pool(x, rows, cols, overlapping):
    x = np.asarray(x, np.float64)
    n, h, w, c = x.shape
    row_regions = _ref_regions(rows, h, overlapping)
    col_regions = _ref_regions(cols, w, overlapping)
    y = np.empty((n, len(row_regions), len(col_regions), c))
    for i, (r0, r1) in enumerate(row_regions):
        for j, (c0, c1) in enumerate(col_regions):
            y[:, i, j, :] = x[:, r0 : r1 + 1, c0 : c1 + 1, :].max(axis=(1, 2))
    return y


def _ref_pool_grad(x, rows, cols, overlapping, g):
    """d Σ g·y / dx: each output's cotangent goes to its region's (unique) max element."""
    x = np.asarray(x, np.float64)
    n, h, w, c = x.shape
    grad = np.zeros_like(x)
    for i, (r0, r1) in enumerate(_ref_regions(rows, h, overlapping)):
        for j, (c0, c1) in enumerate(_ref_regions(cols, w, overlapping)):
            for b in range(n):
                for ch in range(c):
                    patch = x[b, r0 : r1 + 1, c0 : c1 + 1, ch]
                    dr, dc = np.unravel_index(np.argmax(patch), patch.shape)
                    grad[b, r0 + dr, c0 + dc, ch] += g[b, i, j, ch]
    return grad


def _check_boundary_properties(bounds, n_in, n_out):
    bounds = np.asarray(bounds)
    assert bounds.shape == (n_out + 1,)
    assert bounds[0] == 0 and bounds[-1] == n_in
    steps = np.diff(bounds)
    assert set(steps.tolist()) <= {1, 2}
    assert (steps == 2).sum() == n_in - n_out


def _numpy_random_boundaries(rng, n_in, n_out):
    steps = rng.permutation([2] * (n_in - n_out) + [1] * (2 * n_out - n_in))
    return np.concatenate([[0], np.cumsum(steps)])


def _float32_u(rng, size):
    # u as the implementation sees it (float32), so both sides use the same number.
    return rng.uniform(size=size).astype(np.float32).astype(np.float64)


def test_registry_name():
    assert POOLING.get("fractional_max_pool") is fractional_max_pool


@pytest.mark.parametrize("n_in,n_out", SIZES)
def test_pseudo_random_boundaries_match_graham_formula(rng, n_in, n_out):
    for u in _float32_u(rng, 20):
        got = np.asarray(pseudo_random_boundaries(n_in, n_out, u))
        np.testing.assert_array_equal(got, _ref_pseudo_random_boundaries(n_in, n_out, u))
        _check_boundary_properties(got, n_in, n_out)


def test_pseudo_random_boundaries_exact_at_u_zero():
    # α·N_out rounds above N_in in float for 21/19, so the float formula would end at 22 here;
    # the boundaries must still end exactly at N_in = 21 (ceil(21·i/19) at u = 0).
    got = np.asarray(pseudo_random_boundaries(21, 19, 0.0))
    np.testing.assert_array_equal(got, [-((-21 * i) // 19) for i in range(20)])
    _check_boundary_properties(got, 21, 19)


@pytest.mark.parametrize("n_in,n_out", SIZES)
def test_random_boundaries_properties_and_uniform_order(n_in, n_out):
    keys = jax.random.split(jax.random.key(1), 2000)
    draws = np.asarray(jax.vmap(lambda k: random_boundaries(k, n_in, n_out))(keys))
    for bounds in draws[:50]:
        _check_boundary_properties(bounds, n_in, n_out)
    # A uniformly random order makes every increment a 2 with probability (N_in − N_out)/N_out.
    p = (n_in - n_out) / n_out
    freq = (np.diff(draws, axis=1) == 2).mean(axis=0)
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / len(draws)) + 1e-12)
    if 0 < p < 1:
        assert len({tuple(b) for b in draws}) > 1


@pytest.mark.parametrize("pseudo_random", [True, False])
def test_drawn_boundaries_properties(pseudo_random):
    for seed in range(10):
        bounds = draw_boundaries(jax.random.key(seed), 32, 21, pseudo_random=pseudo_random)
        _check_boundary_properties(bounds, 32, 21)


@pytest.mark.parametrize("overlapping", [False, True])
@pytest.mark.parametrize("pseudo_random", [True, False])
@pytest.mark.parametrize("shape,out", [((2, 10, 9, 3), (7, 6)), ((1, 32, 32, 2), (21, 21))])
def test_pool_with_boundaries_matches_reference(rng, overlapping, pseudo_random, shape, out):
    x = rng.normal(size=shape).astype(np.float32)
    (h, w), (ho, wo) = shape[1:3], out
    if pseudo_random:
        u_rows, u_cols = _float32_u(rng, 2)
        rows = _ref_pseudo_random_boundaries(h, ho, u_rows)
        cols = _ref_pseudo_random_boundaries(w, wo, u_cols)
    else:  # a random order of increments, drawn here with NumPy
        rows, cols = _numpy_random_boundaries(rng, h, ho), _numpy_random_boundaries(rng, w, wo)
    y = fractional_max_pool_with_boundaries(
        x, jnp.asarray(rows, jnp.int32), jnp.asarray(cols, jnp.int32), overlapping=overlapping
    )
    assert y.shape == (shape[0], ho, wo, shape[3]) and y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), _ref_pool(x, rows, cols, overlapping), rtol=1e-6)


@pytest.mark.parametrize("overlapping", [False, True])
@pytest.mark.parametrize("pseudo_random", [True, False])
def test_public_function_uses_one_draw_for_rows_and_one_for_columns(
    rng, overlapping, pseudo_random
):
    x = rng.normal(size=(3, 12, 11, 2)).astype(np.float32)
    key = jax.random.key(4)
    kw = {"overlapping": overlapping, "pseudo_random": pseudo_random}
    y = fractional_max_pool(x, (8, 7), key=key, **kw)
    y_jit = jax.jit(lambda a, k: fractional_max_pool(a, (8, 7), key=k, **kw))(x, key)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_jit))
    # Documented: rows from split(key)[0], columns from split(key)[1], shared by the batch.
    key_rows, key_cols = jax.random.split(key)
    rows = np.asarray(draw_boundaries(key_rows, 12, 8, pseudo_random=pseudo_random))
    cols = np.asarray(draw_boundaries(key_cols, 11, 7, pseudo_random=pseudo_random))
    _check_boundary_properties(rows, 12, 8)
    _check_boundary_properties(cols, 11, 7)
    np.testing.assert_allclose(np.asarray(y), _ref_pool(x, rows, cols, overlapping), rtol=1e-6)


def test_int_output_size_and_shape(rng):
    x = rng.normal(size=(2, 9, 9, 4)).astype(np.float32)
    y = fractional_max_pool(x, 6, key=jax.random.key(0))
    assert y.shape == (2, 6, 6, 4)


@pytest.mark.parametrize("overlapping", [False, True])
def test_gradient_flows_to_the_max_elements_only(rng, overlapping):
    x = rng.normal(size=(2, 10, 9, 3)).astype(np.float32)
    g = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
    u_rows, u_cols = _float32_u(rng, 2)
    rows = _ref_pseudo_random_boundaries(10, 7, u_rows)
    cols = _ref_pseudo_random_boundaries(9, 6, u_cols)
    rows_j, cols_j = jnp.asarray(rows, jnp.int32), jnp.asarray(cols, jnp.int32)

    def objective(a):
        y = fractional_max_pool_with_boundaries(a, rows_j, cols_j, overlapping=overlapping)
        return jnp.sum(y * g)

    grad = np.asarray(jax.jit(jax.grad(objective))(x))
    ref = _ref_pool_grad(x, rows, cols, overlapping, g)
    np.testing.assert_allclose(grad, ref, rtol=1e-6, atol=1e-7)
    assert np.count_nonzero(grad) <= g.size


def test_bfloat16_is_exact(rng):
    x = jnp.asarray(rng.normal(size=(2, 10, 10, 3)), jnp.bfloat16)
    rows = _ref_pseudo_random_boundaries(10, 7, 0.3)
    y = fractional_max_pool_with_boundaries(x, jnp.asarray(rows), jnp.asarray(rows),
                                            overlapping=True)
    assert y.dtype == jnp.bfloat16
    # A max selects one of its inputs: no rounding at all, so the bf16 result is exact.
    np.testing.assert_array_equal(np.asarray(y, np.float64), _ref_pool(x, rows, rows, True))


@pytest.mark.parametrize("overlapping", [False, True])
def test_module_eval_is_deterministic_with_u_half_and_train_draws_from_dropout(rng, overlapping):
    x = rng.normal(size=(2, 10, 9, 3)).astype(np.float32)
    pool = FractionalMaxPool(output_size=(7, 6), overlapping=overlapping, pseudo_random=False)
    y_eval = pool.apply({}, x, train=False)
    rows = _ref_pseudo_random_boundaries(10, 7, 0.5)
    cols = _ref_pseudo_random_boundaries(9, 6, 0.5)
    np.testing.assert_allclose(np.asarray(y_eval), _ref_pool(x, rows, cols, overlapping),
                               rtol=1e-6)
    outs = [np.asarray(pool.apply({}, x, train=True, rngs={"dropout": jax.random.key(s)}))
            for s in range(6)]
    assert all(o.shape == (2, 7, 6, 3) for o in outs)
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])
    np.testing.assert_array_equal(
        outs[0], np.asarray(pool.apply({}, x, train=True, rngs={"dropout": jax.random.key(0)}))
    )


@pytest.mark.parametrize("output_size", [10, 5, 4, (7, 9), (7, 4)])
def test_ratio_outside_one_two_raises(output_size):
    x = jnp.zeros((1, 10, 9, 1))
    with pytest.raises(ValueError, match="output_size=.*ratio must be in \\(1, 2\\)"):
        fractional_max_pool(x, output_size, key=jax.random.key(0))
    with pytest.raises(ValueError, match="output_size="):
        FractionalMaxPool(output_size=output_size).apply({}, x, train=False)


def test_other_bad_arguments_raise():
    with pytest.raises(ValueError, match="output_size must be an int or"):
        fractional_max_pool(jnp.zeros((1, 10, 10, 1)), (7, 7, 7), key=jax.random.key(0))
    with pytest.raises(ValueError, match="NHWC"):
        fractional_max_pool(jnp.zeros((10, 10, 1)), 7, key=jax.random.key(0))
    with pytest.raises(ValueError, match="NHWC"):
        fractional_max_pool_with_boundaries(jnp.zeros((10, 10)), jnp.arange(3), jnp.arange(3))
    with pytest.raises(ValueError, match="N_in=10, N_out=5"):
        pseudo_random_boundaries(10, 5, 0.5)
    with pytest.raises(ValueError, match="N_in=7, N_out=7"):
        random_boundaries(jax.random.key(0), 7, 7)
