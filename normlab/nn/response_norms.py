"""Norms fused with their activation: Filter Response Norm + TLU, EvoNorm-B0 and EvoNorm-S0.

They replace a norm *and* the activation after it (use them with the activation "identity").

    from normlab.registry import NORMS
    frn = NORMS.build("frn")
    variables = frn.init(jax.random.key(0), x_NHWC)
    y = frn.apply(variables, x_NHWC, train=True)
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from normlab.nn.norms import (
    RUNNING_STATS_DTYPE,
    Initializer,
    NormFields,
    affine_params,
    check_epsilon,
    check_input,
    check_momentum,
    resolve_groups,
)
from normlab.nn.stats import (
    group_moments,
    mean_square,
    moments,
    normalize,
    running_average,
    stats_dtype,
)
from normlab.registry import NORMS

Array = jnp.ndarray
DEFAULT_GROUPS = 32  # EvoNorm-S0's groups when none are given (Liu et al. 2020), at most


@NORMS.register("frn")
class FilterResponseNorm(NormFields):
    """Filter Response Normalization with a Thresholded Linear Unit (Singh & Krishnan 2019).

    ν² = mean(x²) per example and channel over the spatial axes (for an (N, C) input there are
    none and ν² = x²), x̂ = x·rsqrt(ν² + |ε|), y = max(γ·x̂ + β, τ) with a learnable threshold τ
    per channel (param "threshold", init 0; `use_tlu=False` gives y = γ·x̂ + β). Batch
    independent: train and eval are the same. `learnable_epsilon` makes ε a learned scalar
    (param "epsilon", init `epsilon`), as the paper does for 1×1 activation maps. ε defaults to
    the paper's 1e-6.

        frn = FilterResponseNorm()
        y = frn.apply(frn.init(jax.random.key(0), x_NHWC), x_NHWC)
    """

    self_activated = True
    linear_kwargs = {"use_tlu": False}

    epsilon: float = 1e-6
    use_tlu: bool = True
    learnable_epsilon: bool = False
    threshold_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_input("FilterResponseNorm", x)
        check_epsilon("FilterResponseNorm", self.epsilon)
        channels = x.shape[-1]
        scale, bias = affine_params(self, channels)
        epsilon = self.epsilon
        if self.learnable_epsilon:
            epsilon = jnp.abs(
                self.param("epsilon", nn.initializers.constant(self.epsilon), (), self.param_dtype)
            )
        nu2 = mean_square(x, tuple(range(1, x.ndim - 1)))
        y = normalize(x, None, nu2, scale, bias, epsilon, nu2.dtype)
        if self.use_tlu:
            tau = self.param("threshold", self.threshold_init, (channels,), self.param_dtype)
            y = jnp.maximum(y, tau)
        return y.astype(self.dtype or x.dtype)


@NORMS.register("evonorm_b0")
class EvoNormB0(NormFields):
    """EvoNorm-B0 (Liu et al. 2020), batch-dependent.

    y = x / max(sqrt(σ²_batch + ε), v·x + sqrt(σ²_instance + ε))·γ + β, with σ²_batch the
    biased variance per channel over (N, H, W) in train mode (over the mapped batch with
    `axis_name`, per group with `axis_index_groups`) and the running variance in eval mode,
    σ²_instance the variance per example and channel over (H, W), and v a learnable per-channel
    param "v" (init 1). The running variance "var" (collection `batch_stats`, init 1, float32)
    follows BatchNorm's convention new = m·old + (1 − m)·batch (m = `momentum`), not updated
    while initializing. The input needs spatial axes: ValueError for (N, C).

        norm = EvoNormB0()
        variables = norm.init(jax.random.key(0), x_NHWC)
        y, updates = norm.apply(variables, x_NHWC, train=True, mutable=["batch_stats"])
    """

    batch_dependent = True
    has_running_stats = True
    self_activated = True
    linear_kwargs = None

    momentum: float = 0.99
    axis_name: str | None = None
    axis_index_groups: Sequence[Sequence[int]] | None = None

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_input("EvoNormB0", x, spatial=True)
        check_epsilon("EvoNormB0", self.epsilon)
        check_momentum("EvoNormB0", self.momentum)
        channels = x.shape[-1]
        ra_var = self.variable(
            "batch_stats", "var", lambda: jnp.ones((channels,), RUNNING_STATS_DTYPE)
        )
        scale, bias = affine_params(self, channels)
        v = self.param("v", nn.initializers.ones, (channels,), self.param_dtype)
        if train:
            axis_name = None if self.is_initializing() else self.axis_name
            _, var_batch = moments(
                x,
                tuple(range(x.ndim - 1)),
                axis_name=axis_name,
                axis_index_groups=self.axis_index_groups,
            )
            if not self.is_initializing():
                ra_var.value = running_average(
                    ra_var.value, var_batch.reshape(channels), self.momentum
                )
        else:
            var_batch = ra_var.value
        _, var_instance = moments(x, tuple(range(1, x.ndim - 1)))
        x32 = x.astype(stats_dtype(x.dtype))
        denominator = jnp.maximum(
            jnp.sqrt(var_batch + self.epsilon), v * x32 + jnp.sqrt(var_instance + self.epsilon)
        )
        y = x32 / denominator
        if scale is not None:
            y = y * scale
        if bias is not None:
            y = y + bias
        return y.astype(self.dtype or x.dtype)


@NORMS.register("evonorm_s0")
class EvoNormS0(NormFields):
    """EvoNorm-S0 (Liu et al. 2020), batch-independent.

    y = x·sigmoid(v·x) / sqrt(σ²_group + ε)·γ + β, with σ²_group the biased variance per
    example over (H, W, C/G) (GroupNorm's groups of consecutive channels) and v a learnable
    per-channel param "v" (init 1). Give at most one of `num_groups` and `group_size`. With
    neither, the number of groups is the largest divisor of C that is at most 32 (the paper's
    32 groups where C allows: 32 for C = 64, 24 for C = 48, C itself for C ≤ 32). An explicit
    `num_groups` gives min(num_groups, C) groups (so a layer with fewer channels gets one channel
    per group), which must divide C (ValueError otherwise). Train and eval are the same.

        norm = EvoNormS0(num_groups=8)
        y = norm.apply(norm.init(jax.random.key(0), x_NHWC), x_NHWC)
    """

    self_activated = True
    takes_groups = True
    linear_kwargs = None

    num_groups: int | None = None
    group_size: int | None = None

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_input("EvoNormS0", x)
        check_epsilon("EvoNormS0", self.epsilon)
        channels = x.shape[-1]
        if self.group_size is not None:
            groups = resolve_groups("EvoNormS0", channels, self.num_groups, self.group_size)
        elif self.num_groups is None:
            groups = max(g for g in range(1, DEFAULT_GROUPS + 1) if channels % g == 0)
        else:
            groups = resolve_groups("EvoNormS0", channels, min(self.num_groups, channels), None)
        scale, bias = affine_params(self, channels)
        v = self.param("v", nn.initializers.ones, (channels,), self.param_dtype)
        _, var_group = group_moments(x, groups)
        x32 = x.astype(var_group.dtype)
        swished = x32 * jax.nn.sigmoid(v * x32)
        return normalize(swished, None, var_group, scale, bias, self.epsilon, self.dtype or x.dtype)
