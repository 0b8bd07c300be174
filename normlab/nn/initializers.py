"""Weight initializers, chosen by name from `INITIALIZERS`.

Every registry entry is a *factory*: called with its keyword options it returns a jax-style init
function `init(key, shape, dtype=jnp.float32) -> Array`, which Flax layers take as
`kernel_init`. Fans follow the conv convention of SPEC §1.4: a dense kernel (in, out) has
fan_in = in, fan_out = out; a conv kernel (*receptive, C_in, C_out) has
fan_in = prod(receptive)·C_in and fan_out = prod(receptive)·C_out.

    from normlab.nn.initializers import make_initializer
    init = make_initializer("kaiming_normal", mode="fan_in")
    layer = nn.Conv(64, (3, 3), kernel_init=init)
    w_HWIO = init(jax.random.key(0), (3, 3, 16, 64))   # std = sqrt(2 / (3·3·16))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from normlab.registry import INITIALIZERS

Initializer = Callable[..., jax.Array]  # (key, shape, dtype=jnp.float32) -> Array


def make_initializer(name: str, **kwargs: Any) -> Initializer:
    """The init function registered as `name`, built with `kwargs`.

        init = make_initializer("normal", std=0.05)
        w = init(jax.random.key(0), (128, 64))
    """
    return INITIALIZERS.build(name, **kwargs)


def fans(shape: Sequence[int]) -> tuple[int, int]:
    """(fan_in, fan_out) of a kernel of `shape` = (*receptive, in, out).

    fan_in = prod(receptive)·in, fan_out = prod(receptive)·out; e.g. fans((3, 3, 16, 64)) =
    (144, 576), fans((128, 10)) = (128, 10).
    """
    if len(shape) < 2:
        raise ValueError(f"fans: a kernel shape needs >= 2 dims (*receptive, in, out), "
                         f"got shape={tuple(shape)}")
    receptive = math.prod(shape[:-2])
    fan_in, fan_out = receptive * shape[-2], receptive * shape[-1]
    if fan_in == 0 or fan_out == 0:
        raise ValueError(f"fans: shape={tuple(shape)} has a zero fan")
    return fan_in, fan_out


def _sample_dtype(dtype: Any) -> jnp.dtype:
    # draw in float32 (or wider) so that low-precision params are a rounded exact draw
    return jnp.promote_types(dtype, jnp.float32)


def _gaussian(std_of_shape: Callable[[tuple[int, ...]], float], mean: float = 0.0) -> Initializer:
    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        shape = tuple(shape)
        std = std_of_shape(shape)
        z = jax.random.normal(key, shape, _sample_dtype(dtype))
        return (mean + std * z).astype(dtype)

    return init


def _uniform(limit_of_shape: Callable[[tuple[int, ...]], tuple[float, float]]) -> Initializer:
    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        shape = tuple(shape)
        low, high = limit_of_shape(shape)
        return jax.random.uniform(key, shape, _sample_dtype(dtype), low, high).astype(dtype)

    return init


def _fan(shape: tuple[int, ...], mode: str) -> int:
    fan_in, fan_out = fans(shape)
    return fan_in if mode == "fan_in" else fan_out


def _check_mode(name: str, mode: str) -> None:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"{name}: mode must be 'fan_in' or 'fan_out', got mode={mode!r}")


@INITIALIZERS.register("zeros")
def zeros() -> Initializer:
    """W = 0: every unit computes the same function (the symmetry problem).

    Usage: `make_initializer("zeros")(key, (64, 32))`.
    """
    return constant(0.0)


@INITIALIZERS.register("constant")
def constant(value: float = 0.0) -> Initializer:
    """W = value everywhere.  Usage: `make_initializer("constant", value=1.0)(key, (64,))`."""

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        del key  # deterministic
        return jnp.full(tuple(shape), value, dtype)

    return init


@INITIALIZERS.register("normal")
def normal(std: float = 0.01, mean: float = 0.0) -> Initializer:
    """W ~ N(mean, std²), std fixed whatever the fans (0.01: "small random", 0.05: "larger").

    Usage: `make_initializer("normal", std=0.05)(key, (512, 512))`.
    """
    if not std >= 0:
        raise ValueError(f"normal: std must be >= 0, got std={std}")
    return _gaussian(lambda shape: std, mean)


@INITIALIZERS.register("uniform")
def uniform(low: float = -0.05, high: float = 0.05) -> Initializer:
    """W ~ U[low, high).  Usage: `make_initializer("uniform", low=-0.1, high=0.1)(key, shape)`."""
    if not low < high:
        raise ValueError(f"uniform: need low < high, got low={low}, high={high}")
    return _uniform(lambda shape: (low, high))


@INITIALIZERS.register("lecun_normal")
def lecun_normal() -> Initializer:
    """W ~ N(0, 1/fan_in), a plain (not truncated) Gaussian; the lecture's "Xavier, 1/sqrt(D_in)".

    Usage: `make_initializer("lecun_normal")(key, (3, 3, 16, 64))`  # std = 1/sqrt(144)
    """
    return _gaussian(lambda shape: 1.0 / math.sqrt(fans(shape)[0]))


@INITIALIZERS.register("xavier_normal", "glorot_normal")
def xavier_normal(gain: float = 1.0) -> Initializer:
    """Glorot normal: W ~ N(0, gain²·2/(fan_in + fan_out)).

    Usage: `make_initializer("xavier_normal")(key, (256, 128))`  # std = sqrt(2/384)
    """
    return _gaussian(lambda shape: gain * math.sqrt(2.0 / sum(fans(shape))))


@INITIALIZERS.register("xavier_uniform", "glorot_uniform")
def xavier_uniform(gain: float = 1.0) -> Initializer:
    """Glorot uniform: W ~ U[−a, a], a = gain·sqrt(6/(fan_in + fan_out)) (variance 2/(in+out)).

    Usage: `make_initializer("xavier_uniform")(key, (256, 128))`
    """

    def limits(shape: tuple[int, ...]) -> tuple[float, float]:
        a = gain * math.sqrt(6.0 / sum(fans(shape)))
        return -a, a

    return _uniform(limits)


@INITIALIZERS.register("kaiming_normal", "he_normal")
def kaiming_normal(mode: str = "fan_in", gain: float = math.sqrt(2.0)) -> Initializer:
    """He/MSRA normal: W ~ N(0, gain²/fan), fan = fan_in or fan_out, gain² = 2 for ReLU.

    For leaky ReLU with slope α pass gain = sqrt(2/(1+α²)).
    Usage: `make_initializer("kaiming_normal", mode="fan_out")(key, (3, 3, 16, 64))`
    """
    _check_mode("kaiming_normal", mode)
    return _gaussian(lambda shape: gain / math.sqrt(_fan(shape, mode)))


@INITIALIZERS.register("kaiming_uniform", "he_uniform")
def kaiming_uniform(mode: str = "fan_in", gain: float = math.sqrt(2.0)) -> Initializer:
    """He/MSRA uniform: W ~ U[−a, a], a = gain·sqrt(3/fan) (variance gain²/fan, gain² = 2).

    Usage: `make_initializer("kaiming_uniform")(key, (3, 3, 16, 64))`
    """
    _check_mode("kaiming_uniform", mode)

    def limits(shape: tuple[int, ...]) -> tuple[float, float]:
        a = gain * math.sqrt(3.0 / _fan(shape, mode))
        return -a, a

    return _uniform(limits)


@INITIALIZERS.register("orthogonal")
def orthogonal(gain: float = 1.0) -> Initializer:
    """W = gain·Q, Q from the QR decomposition of a Gaussian matrix, sign-fixed (Saxe et al.).

    The kernel is seen as a (rows, cols) = (prod(receptive)·C_in, C_out) matrix: WᵀW = gain²·I
    when rows ≥ cols, WWᵀ = gain²·I otherwise. Signs of Q's columns follow sign(diag(R)), which
    makes Q Haar-distributed.
    Usage: `make_initializer("orthogonal", gain=math.sqrt(2))(key, (3, 3, 16, 64))`
    """

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        shape = tuple(shape)
        if len(shape) < 2:
            raise ValueError(f"orthogonal: needs a shape with >= 2 dims, got shape={shape}")
        rows, cols = math.prod(shape[:-1]), shape[-1]
        big, small = max(rows, cols), min(rows, cols)
        a = jax.random.normal(key, (big, small), _sample_dtype(dtype))
        q, r = jnp.linalg.qr(a)
        q = q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(q.dtype)
        if rows < cols:
            q = q.T
        return (gain * q).reshape(shape).astype(dtype)

    return init
