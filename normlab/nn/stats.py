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
autodiff a pass over x. GroupNorm, LayerNorm, InstanceNorm and Proxy Norm's activation are one
op with a hand-written backward whose every pass over x is a plain sum or multiply-add
(`group_norm_act`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jnp.ndarray
Axes = tuple[int, ...]
IndexGroups = Sequence[Sequence[int]] | None


def check_real_floating(dtype: jnp.dtype) -> None:
    """ValueError unless `dtype` is a real floating dtype (bfloat16, float16, float32, float64).

    The one input check of every norm: complex inputs would lose their imaginary part in the
    float32 statistics, and integer or bool inputs would get a normalized output rounded back
    to their dtype, both silently wrong.
    """
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"normalization: input dtype {jnp.dtype(dtype).name} is not supported; accepted: "
            "real floating dtypes (bfloat16, float16, float32, float64); cast integer data "
            "first, e.g. x.astype(jnp.float32)"
        )


def stats_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """The dtype statistics are computed in: float32, or float64 for float64 inputs.

    ValueError for an input dtype that is not real floating (`check_real_floating`).
    """
    check_real_floating(dtype)
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
    # The barrier keeps this x − μ apart from the normalization's own x − μ: merged (CSE), XLA
    # writes x − μ to memory for both to read, a pass over x more than the CPU backend's fused
    # Σ(x − μ)² reduction and the output's multiply-add (measured: BN forward 1.2-2x flax's).
    var = _mean(jnp.square(x - lax.optimization_barrier(mean)), axes, axis_name,
                axis_index_groups)
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


def _group_mean(v_NC: Array, num_groups: int) -> Array:
    """Mean over each group of C/G consecutive channels, (N, C) → (N, G)."""
    n, channels = v_NC.shape
    return jnp.mean(v_NC.reshape(n, num_groups, channels // num_groups), axis=-1)


def _to_channels(v_NG: Array, channels: int) -> Array:
    """Each group's value repeated over its C/G channels, (N, G) → (N, C)."""
    n, num_groups = v_NG.shape
    group_size = channels // num_groups
    return jnp.broadcast_to(v_NG[:, :, None], (n, num_groups, group_size)).reshape(n, channels)


def _grouped_moments(x_NSC: Array, num_groups: int) -> tuple[Array, Array]:
    """Two-pass group mean and biased variance over positions and the group's channels, from
    per-channel sums, broadcast to channels, (N, C), in the statistics' dtype.

    μ_g is the mean of the group's per-channel means; σ²_g the mean of the per-channel
    Σ(x − μ_g)². Centering each channel on μ_g, not on its own mean μ_c as the law of total
    variance would, keeps σ²_g exact when μ_c carries rounding (the total-variance identity
    holds only for exact μ_c: for mean 1e4 and sd 1e-2 in float32 it was 2% off in σ²); it costs
    the same two passes. Differentiable (plain autodiff).
    """
    channels = x_NSC.shape[-1]
    x_NSC = x_NSC.astype(stats_dtype(x_NSC.dtype))
    mean_NC = _to_channels(_group_mean(jnp.mean(x_NSC, axis=1), num_groups), channels)
    # the barrier keeps this x − μ_g apart from a normalization's own (as in `_moments`)
    centered = x_NSC - lax.optimization_barrier(mean_NC)[:, None]
    var_NC = _group_mean(jnp.mean(jnp.square(centered), axis=1), num_groups)
    return mean_NC, _to_channels(var_NC, channels)


def group_moments(x: Array, num_groups: int) -> tuple[Array, Array]:
    """Per-example mean and biased variance of each group of C/G consecutive channels.

    The statistics cover the spatial axes and the group's channels, for x of shape (N, ..., C)
    (or (N, C): then only the group's channels). They are two-pass and come from per-channel
    sums over the spatial axes grouped at the (N, C) size (`_grouped_moments`), never from a
    reshape or transpose of x. The group statistics come back broadcast to channels, shape
    (N, 1, ..., 1, C).

        mean, var = group_moments(x_NHWC, num_groups=8)
    """
    n, channels = x.shape[0], x.shape[-1]
    stats_shape = (n,) + (1,) * (x.ndim - 2) + (channels,)
    mean_NC, var_NC = _grouped_moments(x.reshape(n, -1, channels), num_groups)
    return mean_NC.reshape(stats_shape), var_NC.reshape(stats_shape)


Activation = Callable[[Array], Array] | None


def _group_stats(x_NSC: Array, num_groups: int, epsilon: float) -> tuple[Array, Array]:
    """(μ_g, rsqrt(σ²_g + ε)) per example, broadcast to channels, (N, C), two-pass: for one
    group (LayerNorm) the moments of each example's S·C values, a free reshape whose long rows
    XLA:CPU reduces faster than per-channel sums (measured 1.3-2x at C ≥ 64); otherwise
    `_grouped_moments`."""
    n, positions, channels = x_NSC.shape
    if num_groups == 1:
        mean_N1, var_N1 = moments(x_NSC.reshape(n, positions * channels), (1,))
        mean_NC = jnp.broadcast_to(mean_N1, (n, channels))
        return mean_NC, jnp.broadcast_to(lax.rsqrt(var_N1 + epsilon), (n, channels))
    mean_NC, var_NC = _grouped_moments(x_NSC, num_groups)
    return mean_NC, lax.rsqrt(var_NC + epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9, 10))
def _group_norm_act(x, scale_C, bias_C, pmean_C, prsqrt_C, num_groups, epsilon, act, proxy,
                    homogeneous, dtype):
    return _group_norm_act_fwd(
        x, scale_C, bias_C, pmean_C, prsqrt_C, num_groups, epsilon, act, proxy, homogeneous, dtype
    )[0]


def _positions(x: Array) -> Array:
    """x of shape (N, ..., C) as (N, S, C), S the product of the positions (a free reshape)."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _group_norm_act_fwd(x, scale_C, bias_C, pmean_C, prsqrt_C, num_groups, epsilon, act, proxy,
                        homogeneous, dtype):
    x_NSC = _positions(x)
    mean_NC, rsqrt_NC = _group_stats(x_NSC, num_groups, epsilon)
    xc = x_NSC.astype(mean_NC.dtype) - mean_NC[:, None]
    z = xc * (rsqrt_NC * scale_C)[:, None] + bias_C
    if act is not None:
        z = act(z)
    if proxy:
        z = (z - pmean_C) * prsqrt_C
    z = z.astype(dtype).reshape(x.shape)
    # The proxy's gradient needs Σ dz·z, unless φ is positively homogeneous (see the backward).
    saved_z = z if proxy and not homogeneous else None
    return z, (x, mean_NC, rsqrt_NC, scale_C, bias_C, pmean_C, prsqrt_C, saved_z)


def _group_norm_act_bwd(num_groups, epsilon, act, proxy, homogeneous, dtype, residuals, dz):
    # With ŷ = (x − μ_g)·r, r = rsqrt(σ²_g + ε), u = γ·ŷ + β, a = φ(u), z = (a − μ̃)·r̃ and
    # g = ∂L/∂u, the gradients need per-(example, channel) sums over positions P = Σ g and
    # Q = Σ g·(x − μ_g) = Σ g·x − μ_g·P, and for the proxy R = Σ dz and Σ dz·(a − μ̃) =
    # Σ dz·z / r̃ per channel. Then dγ = Σ_n r·Q, dβ = Σ_n P, dμ̃ = −r̃·R, dr̃ = Σ dz·z / r̃ and,
    # with means over the group's M = S·C/G values, dx = r·(γ·g − mean_g(γ·g) − ŷ·mean_g(γ·g·ŷ)).
    # For a positively homogeneous φ (φ(u) = u·φ'(u): ReLU, leaky ReLU, identity),
    # Σ dz·a = Σ g·u / r̃ = Σ_n (r·γ·Q + β·P) / r̃ comes free, sparing the pass over z.
    # Every sum is Σa or Σa·b of arrays in memory: XLA's CPU backend runs those in a fast
    # library kernel, while a sum of a longer expression (x − μ_g, or several sums in one
    # variadic reduction) runs in a generic loop several times slower; and sums over one
    # leading axis, (N·S, C) or (N, S, C), run faster than over several. Uncentered, Q costs a
    # rounding error of ~ulp(1)·|μ_g|/σ_g relative on dx and dγ (1e-4 for x = 1000 + N(0, 1)
    # and instance groups): centering it, Σ g·(x − μ_g), measured 3-25% slower fwd+bwd on CPU,
    # so the backward keeps it uncentered while the forward is centered (exact).
    x, mean_NC, rsqrt_NC, scale_C, bias_C, pmean_C, prsqrt_C, z = residuals
    dpmean_C, dprsqrt_C = jnp.zeros_like(pmean_C), jnp.zeros_like(prsqrt_C)
    if proxy:
        dz2 = dz.reshape(-1, x.shape[-1]).astype(prsqrt_C.dtype)
        sum_dz_C = jnp.sum(dz2, axis=0)
        dpmean_C = -prsqrt_C * sum_dz_C
        if not homogeneous:
            z2 = z.reshape(dz2.shape).astype(dz2.dtype)
            dprsqrt_C = jnp.sum(dz2 * z2, axis=0) / prsqrt_C
    x_NSC = _positions(x)
    positions, channels = x_NSC.shape[1], x_NSC.shape[2]
    dz = _positions(dz).astype(mean_NC.dtype)
    xf = x_NSC.astype(mean_NC.dtype)
    multiplier_NC = rsqrt_NC * scale_C
    g = dz * prsqrt_C if proxy else dz
    if act is not None:
        _, act_vjp = jax.vjp(act, (xf - mean_NC[:, None]) * multiplier_NC[:, None] + bias_C)
        (g,) = act_vjp(g)
    p_NC = jnp.sum(g, axis=1)
    q_NC = jnp.sum(g * xf, axis=1) - mean_NC * p_NC
    # One reduction over the batch for all: XLA would turn Σ_n P alone into a second full
    # pass over g (a sum of sums becomes one sum over all of g).
    per_example = [rsqrt_NC * q_NC, p_NC]
    if proxy and homogeneous:
        per_example.append(multiplier_NC * q_NC + bias_C * p_NC)
    dscale_C, dbias_C, *sum_gu_C = jnp.sum(jnp.stack(per_example), axis=1)
    if proxy and homogeneous:
        dprsqrt_C = sum_gu_C[0] / prsqrt_C - pmean_C * sum_dz_C
    gp_NC = _to_channels(_group_mean(scale_C * p_NC, num_groups), channels) / positions
    gq_NC = _to_channels(_group_mean(scale_C * q_NC, num_groups), channels) / positions
    dx = (g * multiplier_NC[:, None] - (xf - mean_NC[:, None]) * (rsqrt_NC**3 * gq_NC)[:, None]
          - (rsqrt_NC * gp_NC)[:, None])
    return dx.astype(x.dtype).reshape(x.shape), dscale_C, dbias_C, dpmean_C, dprsqrt_C


_group_norm_act.defvjp(_group_norm_act_fwd, _group_norm_act_bwd)


def group_norm_act(
    x: Array,
    num_groups: int,
    epsilon: float,
    scale: Array | None = None,
    bias: Array | None = None,
    *,
    activation: Activation = None,
    homogeneous: bool = False,
    proxy: tuple[Array, Array] | None = None,
    dtype: jnp.dtype | None = None,
) -> Array:
    """z = φ(γ·(x − μ_g)·rsqrt(σ²_g + ε) + β), and z = (that − μ̃)·r̃ with `proxy=(μ̃, r̃)`.

    μ_g, σ²_g: per example, mean and biased variance of each group g of C/G consecutive channels
    over the positions and the group's channels (GroupNorm; G = 1 is LayerNorm, G = C
    InstanceNorm), for x of shape (N, ..., C) or (N, C). γ, β (default 1, 0), μ̃ and r̃ are
    per channel; φ (an elementwise function, default identity) and the proxy standardization are
    the PN-activation of Proxy Norm. `homogeneous=True` declares φ(u) = u·φ'(u) (ReLU, leaky
    ReLU, identity), which spares the proxy's backward a pass over z. Everything is computed in
    float32 whatever x's dtype; the output has `dtype` (default x's).

    Fast by construction, forward and backward (a custom VJP: reverse mode at any order, no
    forward mode): two-pass group moments from per-channel sums grouped at the (N, C) size
    (LayerNorm: from each example's values as one row), one pass for the output; the backward
    takes its sums straight from x and dz (and z, for a proxy with a φ that is not
    homogeneous) and one pass for dx. No transpose, no reshape of x beyond merging axes. With a
    bfloat16 output and such a φ, dr̃ carries z's rounding (2⁻⁹ relative).

        y = group_norm_act(x_NHWC, 8, 1e-5, scale_C, bias_C)                       # GroupNorm
        z = group_norm_act(x_NHWC, 1, 1e-5, gamma_C, beta_C, activation=jax.nn.relu,
                           homogeneous=True,
                           proxy=(proxy_mean_C, jax.lax.rsqrt(proxy_var_C + 0.03)))  # LN + PN
    """
    channels = x.shape[-1]
    f32 = stats_dtype(x.dtype)
    ones, zeros = jnp.ones((channels,), f32), jnp.zeros((channels,), f32)
    scale = ones if scale is None else scale.astype(f32)
    bias = zeros if bias is None else bias.astype(f32)
    pmean, prsqrt = (zeros, ones) if proxy is None else (p.astype(f32) for p in proxy)
    return _group_norm_act(x, scale, bias, pmean, prsqrt, num_groups, epsilon, activation,
                           proxy is not None, homogeneous or activation is None,
                           dtype or x.dtype)


def normalize(
    x: Array,
    mean: Array | None,
    var: Array,
    scale: Array | None,
    bias: Array | None,
    epsilon: float | Array,
    dtype: jnp.dtype,
) -> Array:
    """y = (x − μ)·rsqrt(σ² + ε)·γ + β, computed as y = (x − μ)·a + β, in `dtype`.

    a = rsqrt(σ² + ε)·γ is formed at the (small) shape of the statistics, so that each element
    costs a subtract and a multiply-add (fused by XLA into the one pass over x). The centering
    stays explicit rather than folded into one multiply-add x·a + (β − μ·a), as PyTorch's and
    cuDNN's kernels do: the fold cancels μ·a against x·a, a rounding error of ulp(1)·|μ|/σ on y,
    which is β ± 3e-5 for a batch of one example in train mode (σ² = 0, a = γ/√ε) and 6e-5
    relative for x = 1000 + N(0, 1); centered, both are exact to float32 rounding.
    `mean=None` skips centering (RMS-type norms); `scale=None` / `bias=None` mean γ = 1 / β = 0.
    The arithmetic runs in float32 (the statistics' dtype) whatever x's dtype.

        y = normalize(x_NHWC, mean, var, scale_C, bias_C, 1e-5, x_NHWC.dtype)
    """
    check_real_floating(x.dtype)
    multiplier = lax.rsqrt(var + epsilon)
    if scale is not None:
        multiplier = multiplier * scale
    shift = jnp.zeros((), multiplier.dtype) if bias is None else bias.astype(multiplier.dtype)
    operands = [multiplier, shift] + ([] if mean is None else [mean.astype(multiplier.dtype)])
    operands = [jnp.reshape(v, (1,) * (x.ndim - v.ndim) + v.shape) for v in operands]
    groups = _merged_axes(x.shape, [v.shape for v in operands])
    multiplier, shift, *center = (v.reshape(_merge(v.shape, groups)) for v in operands)
    y = x.reshape(_merge(x.shape, groups)).astype(multiplier.dtype)
    y = _center_scale_shift(y, center[0], multiplier, shift) if center else y * multiplier + shift
    return y.astype(dtype).reshape(x.shape)


@jax.custom_jvp
def _center_scale_shift(x: Array, center: Array, multiplier: Array, shift: Array) -> Array:
    """(x − c)·m + s, with c, m, s broadcasting against x."""
    return (x - center) * multiplier + shift


@_center_scale_shift.defjvp
def _center_scale_shift_jvp(primals, tangents):
    # The tangent written as dx·m + x·dm − (dc·m + c·dm − ds), the bracket at the statistics'
    # shape: its transpose (the backward) then reduces only Σ g and Σ g·x, plain sums, as the
    # folded x·a + b did, where autodiff of (x − c)·m would reduce Σ g·(x − c), measured
    # 10-30% slower on CPU. The price is the fold's rounding in dm, ~ulp(1)·|c|/σ relative.
    x, center, multiplier, shift = primals
    dx, dcenter, dmultiplier, dshift = tangents
    y = _center_scale_shift(x, center, multiplier, shift)
    small = dcenter * multiplier + center * dmultiplier - dshift
    return y, dx * multiplier + x * dmultiplier - small


def running_average(old: Array, new: Array, momentum: float) -> Array:
    """The running-statistics convention of normlab: old·m + (1 − m)·new, in old's dtype.

        ra_mean.value = running_average(ra_mean.value, batch_mean_C, 0.99)
    """
    return (momentum * old + (1.0 - momentum) * new).astype(old.dtype)
