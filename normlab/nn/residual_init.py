"""Residual-branch initialization variants, chosen by name from `RESIDUAL_INITS` (SPEC §1.4).

A residual net computes x_{l+1} = x_l + F_l(x_l). With a standard init Var(F_l(x_l)) ≈ Var(x_l),
so Var(x_l) grows geometrically with depth. The variants here make every branch start as the
zero function, so x + F(x) = x and Var(x + F(x)) = Var(x) at init:

- "standard": nothing special.
- "zero_init_last": the last layer of each branch starts at zero: the scale γ of the branch's
  last norm when there is one (Goyal et al. 2017), otherwise the last kernel.
- "fixup" (Zhang et al. 2019): no normalization; layer j < m−1 of a branch gets its standard init
  scaled by L^(−1/(2m−2)) (L branches of m layers), the last layer is zero; a scalar bias
  (init 0) before each conv/dense and activation, and a scalar multiplier (init 1) then a scalar
  bias after the branch's last layer. (The paper also zeroes the classifier and its bias.)
- "skipinit" (De & Smith 2020): the branch output is multiplied by a learnable scalar α, init 0;
  the paper's recipe has no normalization layer.

Model code asks a `ResidualInit` for each branch layer's inits and wraps with its helpers,
which build Linen submodules and so must be called inside the block's compact method:

    res = RESIDUAL_INITS.build("fixup")

    class Block(nn.Module):
        num_blocks: int

        @nn.compact
        def __call__(self, x):
            kw = dict(num_branches=self.num_blocks, layers_per_branch=2)
            h = nn.Dense(64, kernel_init=res.kernel_init(he, 0, **kw))(res.bias(x))
            h = res.bias(nn.relu(res.bias(h)))
            h = nn.Dense(64, kernel_init=res.kernel_init(he, 1, **kw))(h)
            return x + res.branch_output(h)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from normlab.registry import RESIDUAL_INITS

Initializer = Callable[..., jax.Array]  # (key, shape, dtype=jnp.float32) -> Array


def fixup_scale(num_branches: int, layers_per_branch: int) -> float:
    """Fixup's rescaling of the standard init of a branch's layers: L^(−1/(2m−2)).

    L = num_branches (≥ 1), m = layers_per_branch (≥ 2). E.g. fixup_scale(8, 2) = 8^(−1/2).
    """
    if num_branches < 1:
        raise ValueError(f"fixup_scale: num_branches must be >= 1, got num_branches={num_branches}")
    if layers_per_branch < 2:
        raise ValueError(f"fixup_scale: layers_per_branch must be >= 2, "
                         f"got layers_per_branch={layers_per_branch}")
    return float(num_branches) ** (-1.0 / (2 * layers_per_branch - 2))


def scaled(base: Initializer, factor: float) -> Initializer:
    """The init function `factor · base(key, shape, dtype)`.

        init = scaled(nn.initializers.he_normal(), fixup_scale(8, 2))
    """

    def init(key: jax.Array, shape: Any, dtype: Any = jnp.float32) -> jax.Array:
        return (factor * base(key, shape, dtype)).astype(dtype)

    return init


class ScalarBias(nn.Module):
    """y = x + b, one learnable scalar b (param "bias", init 0) shared by every unit (Fixup).

        y = ScalarBias().apply({"params": {"bias": 0.5}}, x)
    """

    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b = self.param("bias", nn.initializers.zeros, (), self.param_dtype)
        return x + b.astype(x.dtype)


class ScalarMultiplier(nn.Module):
    """y = s·x, one learnable scalar s (param "scale", init 1) (Fixup's branch multiplier).

        y = ScalarMultiplier().apply({"params": {"scale": 2.0}}, x)
    """

    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = self.param("scale", nn.initializers.ones, (), self.param_dtype)
        return s.astype(x.dtype) * x


class SkipInit(nn.Module):
    """y = α·x, one learnable scalar α (param "alpha", init `init_value` = 0) (De & Smith 2020).

        y = SkipInit().apply({"params": {"alpha": 0.0}}, branch)   # zero at init
    """

    init_value: float = 0.0
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        alpha = self.param("alpha", nn.initializers.constant(self.init_value), (),
                           self.param_dtype)
        return alpha.astype(x.dtype) * x


@dataclasses.dataclass(frozen=True)
class ResidualInit:
    """How the layers of every residual branch are initialized and wrapped.

    Attributes:
      name: the registry name.
      zero_last: the last layer of each branch starts at zero (its norm's scale, else its kernel).
      fixup: Fixup rescaling, scalar biases and multiplier (implies zero_last).
      skip_gain: the branch output goes through a `SkipInit` gain α = 0.
      norm_free: the method's paper uses no normalization layer (Fixup, SkipInit); a model may
        honour it by building its branches with the "none" norm.

    Layers are indexed j = 0..m−1 within a branch of m = layers_per_branch layers.

        res = RESIDUAL_INITS.build("zero_init_last")
        kernel_init = res.kernel_init(base, j, num_branches=L, layers_per_branch=m)
    """

    name: str
    zero_last: bool = False
    fixup: bool = False
    skip_gain: bool = False
    norm_free: bool = False

    def kernel_init(self, base: Initializer, layer: int, *, num_branches: int,
                    layers_per_branch: int, norm_scale_after: bool = False) -> Initializer:
        """Init of the kernel of branch layer `layer`, given the standard init `base`.

        fixup: zeros for the last layer, base·L^(−1/(2m−2)) for the others. zero_init_last:
        zeros for the last layer unless `norm_scale_after` (a norm with a learnable scale follows
        it, and `norm_scale_init` zeroes that scale instead: zeroing a kernel that feeds a norm
        would make the norm divide ~0 by sqrt(ε)). Otherwise `base`.
        """
        if not 0 <= layer < layers_per_branch:
            raise ValueError(f"ResidualInit.kernel_init: need 0 <= layer < layers_per_branch="
                             f"{layers_per_branch}, got layer={layer}")
        last = layer == layers_per_branch - 1
        if self.fixup:
            factor = fixup_scale(num_branches, layers_per_branch)
            return nn.initializers.zeros if last else scaled(base, factor)
        if self.zero_last and last and not norm_scale_after:
            return nn.initializers.zeros
        return base

    def norm_scale_init(self, layer: int, *, layers_per_branch: int) -> Initializer:
        """Init of the scale γ of the norm after branch layer `layer`: zeros for the last layer
        under zero_init_last, ones otherwise."""
        if not 0 <= layer < layers_per_branch:
            raise ValueError(f"ResidualInit.norm_scale_init: need 0 <= layer < "
                             f"layers_per_branch={layers_per_branch}, got layer={layer}")
        if self.zero_last and not self.fixup and layer == layers_per_branch - 1:
            return nn.initializers.zeros
        return nn.initializers.ones

    def bias(self, x: jax.Array) -> jax.Array:
        """Fixup's scalar bias (a `ScalarBias`) before a layer or activation; identity otherwise.

        Call inside the block's compact method."""
        return ScalarBias()(x) if self.fixup else x

    def branch_output(self, y: jax.Array) -> jax.Array:
        """The branch output F(x) to add to x: s·y + b for Fixup (`ScalarMultiplier` then
        `ScalarBias`), α·y for SkipInit, y otherwise. Call inside the block's compact method."""
        if self.fixup:
            return ScalarBias()(ScalarMultiplier()(y))
        if self.skip_gain:
            return SkipInit()(y)
        return y


@RESIDUAL_INITS.register("standard")
def standard() -> ResidualInit:
    """Every branch layer keeps its standard init: Var(x_l) grows with depth l."""
    return ResidualInit("standard")


@RESIDUAL_INITS.register("zero_init_last")
def zero_init_last() -> ResidualInit:
    """The last layer of every branch (its norm's γ, else its kernel) is 0: x + F(x) = x at init."""
    return ResidualInit("zero_init_last", zero_last=True)


@RESIDUAL_INITS.register("fixup")
def fixup() -> ResidualInit:
    """Fixup: branch layers scaled by L^(−1/(2m−2)), last layer 0, scalar biases and multiplier."""
    return ResidualInit("fixup", zero_last=True, fixup=True, norm_free=True)


@RESIDUAL_INITS.register("skipinit")
def skipinit() -> ResidualInit:
    """SkipInit: the branch output is multiplied by a learnable scalar α initialized to 0."""
    return ResidualInit("skipinit", skip_gain=True, norm_free=True)
