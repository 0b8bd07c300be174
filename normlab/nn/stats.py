"""The statistics core shared by every normalization layer of normlab.

All statistics are computed in float32 (float64 for float64 inputs) whatever the input dtype, with
keepdims so that they broadcast against the input. Variances are *biased* and two-pass: the mean
first, then the mean of squared deviations about it, so no cancellation E[x²] − E[x]² can occur.

    x_NHWC = jnp.ones((8, 4, 4, 16), jnp.bfloat16)
    mean, var = moments(x_NHWC, (0, 1, 2))                  # BatchNorm statistics, (1, 1, 1, 16)
    y = normalize(x_NHWC, mean, var, scale, bias, 1e-5, jnp.bfloat16)
    mean, var = group_moments(x_NHWC, num_groups=4)         # GroupNorm statistics, (8, 1, 1, 16)

Speed (why the code looks the way it does): reductions and the normalizing multiply-add run on
x reshaped so that neighbouring axes the statistics broadcast alike are merged, (N, H, W, C) →
(N, HW, C), a free reshape that XLA reduces several times faster on CPU than a multi-axis
reduction, forward and in the autodiff backward; the variance has a custom JVP that spares
autodiff a pass over x; small groups' statistics move between channels and groups by one-hot
matrix products (see `group_moments`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jnp.ndarray
Axes = tuple[int, ...]
IndexGroups = Sequence[Sequence[int]] | None


def stats_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """The dtype statistics are computed in: float32, or float64 for float64 inputs."""
    return jnp.promote_types(dtype, jnp.float32)


def _check_index_groups(axis_index_groups: Sequence[Sequence[int]], axis_size: int) -> None:
    members = sorted(i for group in axis_index_groups for i in group)
    sizes = {len(group) for group in axis_index_groups}
    if members != list(range(axis_size)) or len(sizes) != 1:
        raise ValueError(
            "axis_index_groups must split the devices 0..n-1 of the axis into groups of equal "
            f"size, each device once; got axis_index_groups={axis_index_groups} for an axis of "
            f"size {axis_size}"
        )


def cross_device_mean(value: Array, axis_name: str, axis_index_groups: IndexGroups = None) -> Array:
    """Mean of `value` over the devices of the mapped axis `axis_name` (or over each group).

    Without groups this is `lax.pmean`. With `axis_index_groups` (a partition of the axis into
    groups of equal size) each device gets the mean over its own group. `lax.pmean` refuses
    groups under `shard_map`, so the groups are done here with an `all_gather` of the (small)
    statistics and a masked sum, which works under both `shard_map` and `pmap`.

        mean_C = cross_device_mean(mean_C, "data", [[0, 1, 2, 3], [4, 5, 6, 7]])
    """
    if axis_index_groups is None:
        return lax.pmean(value, axis_name)
    axis_size = lax.axis_size(axis_name)
    _check_index_groups(axis_index_groups, axis_size)
    group_of = np.empty(axis_size, np.int32)
    group_of[np.concatenate([np.asarray(g) for g in axis_index_groups])] = np.repeat(
        np.arange(len(axis_index_groups)), len(axis_index_groups[0])
    )
    group_of = jnp.asarray(group_of)
    same_group = group_of == group_of[lax.axis_index(axis_name)]
    gathered = lax.all_gather(value, axis_name)
    # A masked elementwise sum, not a dot product: a dot may run at reduced precision on GPU/TPU.
    mask = same_group.reshape((axis_size,) + (1,) * value.ndim)
    return jnp.sum(jnp.where(mask, gathered, 0), axis=0) / len(axis_index_groups[0])


def _merged_axes(shape: tuple[int, ...], operand_shapes: list[tuple[int, ...]]) -> list[list[int]]:
    """Groups of neighbouring axes of `shape` that every (keepdims) operand broadcasts alike."""
    groups: list[list[int]] = []
    previous = None
    for axis, size in enumerate(shape):
        key = tuple(op[axis] == 1 for op in operand_shapes)
        if groups and (size == 1 or key == previous):
            groups[-1].append(axis)
            continue
        groups.append([axis])
        previous = key if size != 1 else None
    return groups


def _merge(shape: tuple[int, ...], groups: list[list[int]]) -> tuple[int, ...]:
    return tuple(math.prod(shape[a] for a in group) for group in groups)


def _merged_reduction(
    shape: tuple[int, ...], reduction_axes: Axes
) -> tuple[tuple[int, ...], Axes, tuple[int, ...]]:
    """(merged shape of x, merged reduction axes, keepdims shape of the statistics)."""
    reduction_axes = tuple(sorted({a % len(shape) for a in reduction_axes}))
    kept_shape = tuple(1 if a in reduction_axes else n for a, n in enumerate(shape))
    groups = _merged_axes(shape, [kept_shape])
    axes = tuple(i for i, group in enumerate(groups) if group[0] in reduction_axes)
    return _merge(shape, groups), axes, kept_shape


def _mean(x: Array, axes: Axes, axis_name: str | None, axis_index_groups: IndexGroups) -> Array:
    mean = jnp.mean(x, axes, keepdims=True)
    if axis_name is not None:
        mean = cross_device_mean(mean, axis_name, axis_index_groups)
    return mean


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _moments(
    x: Array, axes: Axes, axis_name: str | None, axis_index_groups: IndexGroups
) -> tuple[Array, Array]:
    mean = _mean(x, axes, axis_name, axis_index_groups)
    var = _mean(jnp.square(x - mean), axes, axis_name, axis_index_groups)
    return mean, var


@_moments.defjvp
def _moments_jvp(axes, axis_name, axis_index_groups, primals, tangents):
    # dσ² = 2·E[(x − μ)·dx] − 2·dμ·E[x − μ], and E[x − μ] = 0 identically: dropping that term
    # keeps the rule exact at every order while sparing autodiff a full pass over x (and the
    # x − μ buffer it would keep) in the backward pass.
    (x,), (dx,) = primals, tangents
    mean, var = _moments(x, axes, axis_name, axis_index_groups)
    dmean = _mean(dx, axes, axis_name, axis_index_groups)
    dvar = 2 * _mean((x - mean) * dx, axes, axis_name, axis_index_groups)
    return (mean, var), (dmean, dvar)


def moments(
    x: Array,
    reduction_axes: Axes,
    *,
    axis_name: str | None = None,
    axis_index_groups: IndexGroups = None,
) -> tuple[Array, Array]:
    """Mean μ = E[x] and biased variance σ² = E[(x − μ)²] over `reduction_axes`, keepdims.

    Two-pass and exact. With `axis_name` (inside `shard_map`/`pmap`) the statistics cover the
    whole mapped batch: first the cross-device mean of the local means, then the cross-device
    mean of the local mean squared deviations about that global mean. This equals the
    statistics of the concatenated batch because every device holds the same number of values.
    Differentiable at every order, forward and reverse mode (custom JVP rule).

        mean, var = moments(x_NHWC, (0, 1, 2), axis_name="data")   # shapes (1, 1, 1, C)
    """
    merged_shape, axes, kept_shape = _merged_reduction(x.shape, reduction_axes)
    x = x.astype(stats_dtype(x.dtype)).reshape(merged_shape)
    groups = None if axis_index_groups is None else tuple(map(tuple, axis_index_groups))
    mean, var = _moments(x, axes, axis_name, groups)
    return mean.reshape(kept_shape), var.reshape(kept_shape)


def mean_square(x: Array, reduction_axes: Axes) -> Array:
    """ν² = E[x²] over `reduction_axes` (no centering), keepdims, in float32.

        nu2 = mean_square(x_NHWC, (1, 2))        # FilterResponseNorm, shape (N, 1, 1, C)
    """
    merged_shape, axes, kept_shape = _merged_reduction(x.shape, reduction_axes)
    x = x.astype(stats_dtype(x.dtype)).reshape(merged_shape)
    return jnp.mean(jnp.square(x), axes, keepdims=True).reshape(kept_shape)


# Groups of at least this many channels broadcast cheaply inside XLA's loops (measured on CPU).
_GATHER_FREE_GROUP_SIZE = 16


def group_moments(x: Array, num_groups: int) -> tuple[Array, Array]:
    """Per-example mean and biased variance of each group of C/G consecutive channels.

    The statistics cover the spatial axes and the group's channels, for x of shape (N, ..., C)
    (or (N, C): then only the group's channels). They are built from per-channel moments over
    the spatial axes (N, C) combined with the law of total variance,
    σ²_g = mean over the group's channels of [σ²_c + (μ_c − μ_g)²], which is exact (every
    channel holds the same number of values) and never reshapes or transposes x. The group
    statistics come back broadcast to channels, shape (N, 1, ..., 1, C).

        mean, var = group_moments(x_NHWC, num_groups=8)
    """
    n, channels = x.shape[0], x.shape[-1]
    stats_shape = (n,) + (1,) * (x.ndim - 2) + (channels,)
    mean_N1C, var_N1C = moments(x, tuple(range(1, x.ndim - 1)))
    if num_groups == channels:
        return mean_N1C, var_N1C
    group_size = channels // num_groups
    mean_NC, var_NC = mean_N1C.reshape(n, channels), var_N1C.reshape(n, channels)
    if group_size >= _GATHER_FREE_GROUP_SIZE:
        mean_NGc = mean_NC.reshape(n, num_groups, group_size)
        mean_NG1 = jnp.mean(mean_NGc, axis=-1, keepdims=True)
        var_NGc = var_NC.reshape(n, num_groups, group_size)
        var_NG1 = jnp.mean(var_NGc + jnp.square(mean_NGc - mean_NG1), axis=-1, keepdims=True)
        mean_gNC = jnp.broadcast_to(mean_NG1, mean_NGc.shape)
        var_gNC = jnp.broadcast_to(var_NG1, var_NGc.shape)
        return mean_gNC.reshape(stats_shape), var_gNC.reshape(stats_shape)
    # Small groups move between channels and groups through a one-hot (G, C) matrix product:
    # XLA fuses reshapes and broadcasts into the full-size loops over x, where a small group
    # makes every element pay for a gather (forward and backward: up to 3× slower), while a
    # matrix product is materialized once, at a cost of N·C·G.
    one_hot_GC = jnp.asarray(np.repeat(np.eye(num_groups), group_size, axis=1), mean_NC.dtype)

    def to_groups(v_NC: Array) -> Array:
        return jnp.dot(v_NC, one_hot_GC.T, precision=lax.Precision.HIGHEST) / group_size

    def to_channels(v_NG: Array) -> Array:
        return jnp.dot(v_NG, one_hot_GC, precision=lax.Precision.HIGHEST)

    mean_gNC = to_channels(to_groups(mean_NC))
    var_gNC = to_channels(to_groups(var_NC + jnp.square(mean_NC - mean_gNC)))
    return mean_gNC.reshape(stats_shape), var_gNC.reshape(stats_shape)


def normalize(
    x: Array,
    mean: Array | None,
    var: Array,
    scale: Array | None,
    bias: Array | None,
    epsilon: float | Array,
    dtype: jnp.dtype,
) -> Array:
    """y = (x − μ)·rsqrt(σ² + ε)·γ + β, computed as one multiply-add y = x·a + b, in `dtype`.

    a = rsqrt(σ² + ε)·γ and b = β − μ·a are formed at the (small) shape of the statistics, as
    PyTorch's and cuDNN's batch norm kernels do: per element one multiply-add, and a backward
    pass with two reductions instead of three. The fold adds a rounding error of about
    ulp(1)·|μ|/σ to y, negligible unless |μ| ≫ σ. `mean=None` skips centering (RMS-type norms);
    `scale=None` / `bias=None` mean γ = 1 / β = 0. The arithmetic runs in float32 (the
    statistics' dtype) whatever x's dtype.

        y = normalize(x_NHWC, mean, var, scale_C, bias_C, 1e-5, x_NHWC.dtype)
    """
    multiplier = lax.rsqrt(var + epsilon)
    if scale is not None:
        multiplier = multiplier * scale
    shift = jnp.zeros((), multiplier.dtype) if mean is None else -mean * multiplier
    if bias is not None:
        shift = shift + bias
    multiplier, shift = (
        jnp.reshape(v, (1,) * (x.ndim - v.ndim) + v.shape) for v in (multiplier, shift)
    )
    groups = _merged_axes(x.shape, [multiplier.shape, shift.shape])
    multiplier, shift = (v.reshape(_merge(v.shape, groups)) for v in (multiplier, shift))
    y = x.reshape(_merge(x.shape, groups)).astype(multiplier.dtype) * multiplier + shift
    return y.astype(dtype).reshape(x.shape)


def running_average(old: Array, new: Array, momentum: float) -> Array:
    """The running-statistics convention of normlab: old·m + (1 − m)·new, in old's dtype.

        ra_mean.value = running_average(ra_mean.value, batch_mean_C, 0.99)
    """
    return (momentum * old + (1.0 - momentum) * new).astype(old.dtype)
