"""Normalization layers: batch, layer, instance, group, RMS and identity (SPEC §1.1).

Inputs are NHWC, (N, ..., C), or NC for dense features. Every layer takes `train` as an explicit
keyword of `__call__`, computes its statistics in float32 whatever the input dtype (through
`normlab.nn.stats`), returns the input's dtype unless `dtype` says otherwise, and has an optional
per-channel affine (params "scale" γ and "bias" β, `param_dtype` float32).

    from normlab.registry import NORMS
    norm = NORMS.build("group", num_groups=8)
    variables = norm.init(jax.random.key(0), x_NHWC)
    y = norm.apply(variables, x_NHWC, train=True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from normlab.nn.capabilities import Norm
from normlab.nn.stats import (
    check_real_floating,
    cross_device_mean,
    group_norm_act,
    mean_square,
    moments,
    normalize,
    running_average,
)
from normlab.registry import NORMS

Array = jnp.ndarray
Initializer = nn.initializers.Initializer


def check_input(layer: str, x: Array, *, spatial: bool = False) -> None:
    """ValueError unless x is (N, C) or (N, ..., C); with `spatial`, unless it has spatial axes."""
    min_ndim = 3 if spatial else 2
    if x.ndim < min_ndim:
        expected = "(N, ..., C) with spatial axes" if spatial else "(N, C) or (N, ..., C)"
        raise ValueError(f"{layer}: input x must be {expected}, got x.shape={x.shape}")


def check_epsilon(layer: str, epsilon: float) -> None:
    """ValueError unless epsilon ≥ 0."""
    if epsilon < 0:
        raise ValueError(f"{layer}: epsilon must be >= 0, got epsilon={epsilon}")


def check_momentum(layer: str, momentum: float) -> None:
    """ValueError unless 0 ≤ momentum ≤ 1."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{layer}: momentum must be in [0, 1], got momentum={momentum}")


def affine_params(module: nn.Module, channels: int) -> tuple[Array | None, Array | None]:
    """The per-channel params "scale" γ and "bias" β of `module` (None where not used).

    `module` must have the fields use_scale, use_bias, scale_init, bias_init and param_dtype.
    """
    scale = bias = None
    if module.use_scale:
        scale = module.param("scale", module.scale_init, (channels,), module.param_dtype)
    if module.use_bias:
        bias = module.param("bias", module.bias_init, (channels,), module.param_dtype)
    return scale, bias


def resolve_groups(
    layer: str, channels: int, num_groups: int | None, group_size: int | None
) -> int:
    """The number of groups G given exactly one of num_groups / group_size; ValueError otherwise."""
    if (num_groups is None) == (group_size is None):
        raise ValueError(
            f"{layer}: give exactly one of num_groups and group_size, got "
            f"num_groups={num_groups}, group_size={group_size}"
        )
    if num_groups is not None:
        if num_groups < 1 or channels % num_groups:
            raise ValueError(
                f"{layer}: num_groups must be >= 1 and divide the {channels} channels, "
                f"got num_groups={num_groups}"
            )
        return num_groups
    if group_size < 1 or channels % group_size:
        raise ValueError(
            f"{layer}: group_size must be >= 1 and divide the {channels} channels, "
            f"got group_size={group_size}"
        )
    return channels // group_size


# Running statistics have their own dtype, never `param_dtype`: in bfloat16 (8 significant bits)
# an EMA step (1 − m)·(batch − running) below half a step of the value (2⁻⁹–2⁻⁸ relative)
# rounds away, so at momentum 0.99 the statistics would freeze or drift whatever the batches say.
RUNNING_STATS_DTYPE = jnp.float32


def running_stats(module: nn.Module, channels: int) -> tuple[Any, Any]:
    """The `batch_stats` variables "mean" (init 0) and "var" (init 1) of `module`, per channel,
    in float32 (`RUNNING_STATS_DTYPE`) whatever the module's `param_dtype`."""
    shape, dtype = (channels,), RUNNING_STATS_DTYPE
    mean = module.variable("batch_stats", "mean", lambda: jnp.zeros(shape, dtype))
    var = module.variable("batch_stats", "var", lambda: jnp.ones(shape, dtype))
    return mean, var


class NormFields(Norm):
    """The fields every affine norm of normlab shares (a base class, not registered).

    epsilon (ε, added to the variance), use_scale / use_bias (learn γ / β per channel),
    scale_init / bias_init, dtype (of the output; None: the input's), param_dtype.
    """

    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    scale_init: Initializer = nn.initializers.ones
    bias_init: Initializer = nn.initializers.zeros
    dtype: Any = None
    param_dtype: Any = jnp.float32

    learnable_scale = True


@NORMS.register("batch")
class BatchNorm(NormFields):
    """Batch Normalization (Ioffe & Szegedy 2015): y = (x − μ_B)/sqrt(σ²_B + ε)·γ + β.

    μ_B, σ²_B: mean and biased variance per channel over every axis but the last, (N, H, W) for
    NHWC and (N) for NC. Statistics scope:
      * default: the batch the layer sees: the global batch under `jax.jit` with a sharded
        batch (XLA adds the collectives), the local batch inside `shard_map`/`pmap`;
      * `axis_name` (inside `shard_map`/`pmap`): the global batch over that mapped axis, or, with
        `axis_index_groups`, over each group of devices (collectives are skipped during `init`,
        so init can run outside the mapped function);
      * `ghost_batch_size` G: ghost (virtual) batches of G consecutive examples, each normalized
        with its own statistics (N must be divisible by G). Ghost batches are formed from the
        local batch; `axis_name` then only averages the running statistics across devices.
    Running statistics "mean" and "var" (collection `batch_stats`, init 0 and 1, float32)
    follow new = m·old + (1 − m)·batch with m = `momentum`; with ghost batches "batch" is the
    mean over ghost batches of their means and of their variances. `unbiased_running_var`
    multiplies the batch variance by n/(n − 1), n = values per channel behind it, before it
    enters the average.
    They are not updated while initializing. Eval (`train=False`) normalizes with them, i.e. the
    affine map y = x·a + b, a = γ/sqrt(var + ε), b = β − mean·a. Replicas with per-device or
    per-group statistics keep different running statistics: average them before evaluating.

        bn = BatchNorm(momentum=0.9)
        variables = bn.init(jax.random.key(0), x_NHWC)
        y, updates = bn.apply(variables, x_NHWC, train=True, mutable=["batch_stats"])
        y_eval = bn.apply({**variables, **updates}, x_NHWC)
    """

    batch_dependent = True
    has_running_stats = True

    momentum: float = 0.99
    axis_name: str | None = None
    axis_index_groups: Sequence[Sequence[int]] | None = None
    ghost_batch_size: int | None = None
    unbiased_running_var: bool = False

    def _check(self, x: Array, train: bool) -> None:
        check_input("BatchNorm", x)
        check_epsilon("BatchNorm", self.epsilon)
        check_momentum("BatchNorm", self.momentum)
        g = self.ghost_batch_size
        if g is not None and (g < 1 or (train and x.shape[0] % g)):
            raise ValueError(
                f"BatchNorm: ghost_batch_size must be >= 1 and divide the batch size "
                f"N={x.shape[0]}, got ghost_batch_size={g}"
            )

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        self._check(x, train)
        channels = x.shape[-1]
        dtype = self.dtype or x.dtype
        ra_mean, ra_var = running_stats(self, channels)
        scale, bias = affine_params(self, channels)
        if not train:
            return normalize(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon, dtype)

        # Collectives are skipped while initializing so that init can run outside shard_map.
        axis_name = None if self.is_initializing() else self.axis_name
        if self.ghost_batch_size is None:
            mean, var = moments(
                x,
                tuple(range(x.ndim - 1)),
                axis_name=axis_name,
                axis_index_groups=self.axis_index_groups,
            )
            y = normalize(x, mean, var, scale, bias, self.epsilon, dtype)
            batch_mean, batch_var = mean.reshape(channels), var.reshape(channels)
            count = math.prod(x.shape[:-1])
            if axis_name is not None:
                groups = self.axis_index_groups
                count *= len(groups[0]) if groups else lax.axis_size(axis_name)
        else:
            g = self.ghost_batch_size
            x_ghost = x.reshape((x.shape[0] // g, g) + x.shape[1:])
            mean, var = moments(x_ghost, tuple(range(1, x_ghost.ndim - 1)))
            y = normalize(x_ghost, mean, var, scale, bias, self.epsilon, dtype).reshape(x.shape)
            batch_mean = jnp.mean(mean.reshape(-1, channels), axis=0)
            batch_var = jnp.mean(var.reshape(-1, channels), axis=0)
            if axis_name is not None:
                batch_mean = cross_device_mean(batch_mean, axis_name, self.axis_index_groups)
                batch_var = cross_device_mean(batch_var, axis_name, self.axis_index_groups)
            count = g * math.prod(x.shape[1:-1])

        if not self.is_initializing():
            if self.unbiased_running_var:
                batch_var = batch_var * (count / max(count - 1, 1))
            ra_mean.value = running_average(ra_mean.value, batch_mean, self.momentum)
            ra_var.value = running_average(ra_var.value, batch_var, self.momentum)
        return y


@NORMS.register("layer")
class LayerNorm(NormFields):
    """Layer Normalization (Ba et al. 2016): y = (x − μ)/sqrt(σ² + ε)·γ + β.

    μ, σ²: per example over every non-batch axis, (H, W, C) for NHWC and (C) for NC. Equals
    GroupNorm with one group. `train` is accepted for a uniform interface and changes nothing.

        ln = LayerNorm()
        y = ln.apply(ln.init(jax.random.key(0), x_NHWC), x_NHWC)
    """

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_input("LayerNorm", x)
        check_epsilon("LayerNorm", self.epsilon)
        scale, bias = affine_params(self, x.shape[-1])
        return group_norm_act(x, 1, self.epsilon, scale, bias, dtype=self.dtype or x.dtype)


@NORMS.register("instance")
class InstanceNorm(NormFields):
    """Instance Normalization (Ulyanov et al. 2016): y = (x − μ)/sqrt(σ² + ε)·γ + β.

    μ, σ²: per example and channel over the spatial axes (H, W). An (N, C) input has no spatial
    axes and raises ValueError. Equals GroupNorm with group size 1.

        norm = InstanceNorm()
        y = norm.apply(norm.init(jax.random.key(0), x_NHWC), x_NHWC)
    """

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_input("InstanceNorm", x, spatial=True)
        check_epsilon("InstanceNorm", self.epsilon)
        scale, bias = affine_params(self, x.shape[-1])
        return group_norm_act(
            x, x.shape[-1], self.epsilon, scale, bias, dtype=self.dtype or x.dtype
        )


@NORMS.register("group")
class GroupNorm(NormFields):
    """Group Normalization (Wu & He 2018): y = (x − μ_g)/sqrt(σ²_g + ε)·γ + β.

    μ_g, σ²_g: per example and group of C/G consecutive channels over (H, W, C/G). Give exactly
    one of `num_groups` (G) and `group_size` (C/G); C must be divisible. GroupNorm(num_groups=1)
    is LayerNorm, GroupNorm(group_size=1) is InstanceNorm. The statistics come from per-channel
    sums combined exactly into groups, never from a reshape of x, and the whole layer is one
    fused op with a hand-written backward (`normlab.nn.stats.group_norm_act`).

        gn = GroupNorm(num_groups=8)
        y = gn.apply(gn.init(jax.random.key(0), x_NHWC), x_NHWC)
    """

    takes_groups = True

    num_groups: int | None = None
    group_size: int | None = None

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_input("GroupNorm", x)
        check_epsilon("GroupNorm", self.epsilon)
        groups = resolve_groups("GroupNorm", x.shape[-1], self.num_groups, self.group_size)
        scale, bias = affine_params(self, x.shape[-1])
        return group_norm_act(x, groups, self.epsilon, scale, bias, dtype=self.dtype or x.dtype)


@NORMS.register("rms")
class RMSNorm(NormFields):
    """RMS Normalization (Zhang & Sennrich 2019): y = x/sqrt(mean(x²) + ε)·γ (+ β).

    mean(x²): per example over every non-batch axis, no centering. No bias by default
    (`use_bias=False`), as in the paper: re-centering is what RMSNorm drops.

        norm = RMSNorm()
        y = norm.apply(norm.init(jax.random.key(0), x_NC), x_NC)
    """

    use_bias: bool = False

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_input("RMSNorm", x)
        check_epsilon("RMSNorm", self.epsilon)
        scale, bias = affine_params(self, x.shape[-1])
        nu2 = mean_square(x, tuple(range(1, x.ndim)))
        return normalize(x, None, nu2, scale, bias, self.epsilon, self.dtype or x.dtype)


@NORMS.register("none")
class Identity(Norm):
    """No normalization: y = x (no params, no state), cast to `dtype` if given (as every norm's
    output is).

        y = Identity().apply({}, x_NHWC, train=True)
    """

    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_real_floating(x.dtype)  # the same inputs as every other norm
        return x if self.dtype is None else x.astype(self.dtype)
