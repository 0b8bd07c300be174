"""Proxy Normalization (Labatie et al., NeurIPS 2021), exactly as SPEC §1.2.

A batch-independent norm (LN or GN, *without* its own affine) gives y; the PN-activation then
computes, per channel c (the last axis),

    z = (φ(γ_c·y + β_c) − μ̃_c) / sqrt(σ̃²_c + ε),

where μ̃_c, σ̃²_c are the mean and variance of φ(γ_c·Ỹ_c + β_c) for a Gaussian *proxy*
Ỹ_c ~ N(β̃_c, (1 + γ̃_c)²). The expectation is taken over n deterministic Gaussian quantiles
u_i = Φ⁻¹((i + ½)/n): Ỹ_ic = β̃_c + (1 + γ̃_c)·u_i, μ̃_c = mean_i φ(γ_c·Ỹ_ic + β_c) and
σ̃²_c = mean_i (φ(γ_c·Ỹ_ic + β_c) − μ̃_c)² (population variance, float32). The statistics depend
on the parameters only — never on the batch — cost O(n·C), and autodiff carries gradients through
them. No affine follows PN. The proxy parameters β̃ ("proxy_bias") and γ̃ ("proxy_scale") start at
0 and get their own weight decay (`proxy_weight_decay`, SPEC §1.2 step 5), which pulls the proxy
toward N(0, 1).

    from normlab.registry import NORMS
    pn = NORMS.build("group+proxy", num_groups=8, activation="silu")
    variables = pn.init(jax.random.key(0), x_NHWC)
    z_NHWC = pn.apply(variables, x_NHWC, train=True)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from normlab.nn.activations import make_activation
from normlab.nn.capabilities import Norm
from normlab.nn.norms import check_epsilon, check_input, resolve_groups
from normlab.nn.stats import check_real_floating, group_norm_act
from normlab.registry import NORMS

# Activations with φ(u) = u·φ'(u), for which the fused backward skips a pass (`group_norm_act`).
HOMOGENEOUS = frozenset({"relu", "leaky_relu", "identity"})

try:
    from scipy.special import ndtri as _inv_cdf
except ImportError:  # scipy is optional; NormalDist's inverse CDF is also exact to ~1e-16
    from statistics import NormalDist

    _inv_cdf = np.vectorize(NormalDist().inv_cdf)


@functools.lru_cache(maxsize=16)
def gaussian_quantiles(n: int) -> np.ndarray:
    """u_i = Φ⁻¹((i + ½)/n), i = 0..n−1, as a read-only float64 array of shape (n,).

        u = gaussian_quantiles(200)          # u.mean() == 0, u.var() ≈ 0.99
    """
    if n < 2:
        raise ValueError(f"gaussian_quantiles: need n >= 2, got n={n}")
    u = np.asarray(_inv_cdf((np.arange(n, dtype=np.float64) + 0.5) / n), np.float64)
    u.flags.writeable = False
    return u


def proxy_moments(
    act: Callable[[jax.Array], jax.Array],
    scale_C: jax.Array,
    bias_C: jax.Array,
    proxy_bias_C: jax.Array,
    proxy_scale_C: jax.Array,
    u_n: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """(μ̃_C, σ̃²_C): mean and population variance over i of φ(γ·(β̃ + (1+γ̃)·u_i) + β).

    φ's input is the affine function m + s·u_i of the quantiles, m = γ·β̃ + β, s = γ·(1+γ̃), so
    the gradients need only Σ_i w_i and Σ_i w_i·u_i of w = ∂L/∂(φ's input): a custom VJP takes
    them as one (2, n) × (n, C) matrix product, a few passes over the n×C values where autodiff
    takes some twenty (which cost as much as the norm itself at small batch × spatial sizes).
    An activation with parameters (a Linen module, e.g. PReLU) is differentiated by autodiff.

        mean_C, var_C = proxy_moments(jax.nn.relu, ones, zeros, zeros, zeros,
                                      jnp.asarray(gaussian_quantiles(200), jnp.float32))
        # mean_C ≈ 0.398451, var_C ≈ 0.338035
    """
    shift_C = scale_C * proxy_bias_C + bias_C
    spread_C = scale_C * (1.0 + proxy_scale_C)
    if isinstance(act, nn.Module):
        return _affine_act_moments_fwd(act, shift_C, spread_C, u_n)[0]
    return _affine_act_moments(act, shift_C, spread_C, u_n)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _affine_act_moments(act, shift_C, spread_C, u_n):
    return _affine_act_moments_fwd(act, shift_C, spread_C, u_n)[0]


def _affine_act_moments_fwd(act, shift_C, spread_C, u_n):
    a_nC = act(shift_C + spread_C * u_n[:, None])
    mean_C = jnp.mean(a_nC, axis=0)
    var_C = jnp.mean(jnp.square(a_nC - mean_C), axis=0)
    return (mean_C, var_C), (shift_C, spread_C, u_n, mean_C)


def _affine_act_moments_bwd(act, residuals, cotangents):
    # ∂μ̃/∂a_i = 1/n and ∂σ̃²/∂a_i = 2·(a_i − μ̃)/n (the Σ(a − μ̃) = 0 term vanishes).
    shift_C, spread_C, u_n, mean_C = residuals
    dmean_C, dvar_C = cotangents
    a_nC, act_vjp = jax.vjp(act, shift_C + spread_C * u_n[:, None])
    (w_nC,) = act_vjp((dmean_C + 2.0 * dvar_C * (a_nC - mean_C)) / u_n.shape[0])
    highest = jax.lax.Precision.HIGHEST
    dshift_C, dspread_C = jnp.dot(jnp.stack([jnp.ones_like(u_n), u_n]), w_nC, precision=highest)
    return dshift_C, dspread_C, jnp.dot(w_nC, spread_C, precision=highest)


_affine_act_moments.defvjp(_affine_act_moments_fwd, _affine_act_moments_bwd)


class ProxyActivation(nn.Module):
    """The PN-activation z = (φ(γ·y + β) − μ̃) / sqrt(σ̃² + ε) on an already-normalized y.

    Called with `norm_groups`, it takes the raw x and computes y = GroupNorm(x) (no affine)
    itself, in one fused op with the activation (`normlab.nn.stats.group_norm_act`); the
    composites `layer+proxy` and `group+proxy` call it so. While "intermediates" are recorded
    (diagnostics read "preact", γ·y + β) it takes the unfused path, which gives the same z.

    Per-channel params (last axis), float32: "scale" γ (init 1), "bias" β (init 0),
    "proxy_bias" β̃ (init 0), "proxy_scale" γ̃ (init 0). μ̃, σ̃² are computed from the proxy
    (module docstring) and sown as intermediates "proxy_mean", "proxy_var". A "prelu" activation
    is one module applied to both y and the proxy, so its slope is shared.

    Attributes:
      activation: `ACTIVATIONS` name of φ.
      num_quantiles: n, the number of Gaussian quantiles (≥ 2).
      epsilon: ε ≥ 0 added to σ̃² (0.03 in the paper, large enough to keep 1/sqrt(σ̃²+ε) bounded
        when φ(γ·Ỹ+β) is nearly constant).
      dtype: output dtype (default: y's); the computation is float32 whatever y's dtype.

        act = ProxyActivation(activation="relu")
        variables = act.init(jax.random.key(0), y_NC)
        z_NC, state = act.apply(variables, y_NC, mutable=["intermediates"])
    """

    # the params of the proxy, with their own weight decay (`proxy_weight_decay`)
    proxy_params: ClassVar[tuple[str, ...]] = ("proxy_bias", "proxy_scale")

    activation: str = "relu"
    num_quantiles: int = 200
    epsilon: float = 0.03
    scale_init: Callable = nn.initializers.ones
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, y: jax.Array, *, norm_groups: int | None = None, norm_epsilon: float = 1e-5
    ) -> jax.Array:
        """z from an already-normalized y; with `norm_groups` = G, y is the raw input x.

        With `norm_groups`, y is first normalized by GroupNorm with G groups (1: LayerNorm) and
        ε = `norm_epsilon`, no affine, fused with the PN-activation into one op
        (`normlab.nn.stats.group_norm_act`): two passes over x forward, two backward.
        """
        check_proxy_args("ProxyActivation", self.num_quantiles, self.epsilon)
        check_real_floating(y.dtype)
        act = make_activation(self.activation)
        channels = y.shape[-1]
        scale_C = self.param("scale", self.scale_init, (channels,), self.param_dtype)
        bias_C = self.param("bias", nn.initializers.zeros, (channels,), self.param_dtype)
        proxy_bias_C = self.param("proxy_bias", nn.initializers.zeros, (channels,),
                                  self.param_dtype)
        proxy_scale_C = self.param("proxy_scale", nn.initializers.zeros, (channels,),
                                   self.param_dtype)
        scale_C, bias_C, proxy_bias_C, proxy_scale_C = (
            p.astype(jnp.float32) for p in (scale_C, bias_C, proxy_bias_C, proxy_scale_C)
        )
        u_n = jnp.asarray(gaussian_quantiles(self.num_quantiles), jnp.float32)
        mean_C, var_C = proxy_moments(act, scale_C, bias_C, proxy_bias_C, proxy_scale_C, u_n)
        self.sow("intermediates", "proxy_mean", mean_C)
        self.sow("intermediates", "proxy_var", var_C)
        rsqrt_C = jax.lax.rsqrt(var_C + self.epsilon)
        dtype = self.dtype or y.dtype
        # An activation with parameters (a Linen module, e.g. PReLU) cannot enter the fused op.
        fused = norm_groups is not None and not isinstance(act, nn.Module)
        if fused and not self.is_mutable_collection("intermediates"):
            return group_norm_act(y, norm_groups, norm_epsilon, scale_C, bias_C, activation=act,
                                  homogeneous=self.activation in HOMOGENEOUS,
                                  proxy=(mean_C, rsqrt_C), dtype=dtype)
        if norm_groups is not None:
            y = group_norm_act(y, norm_groups, norm_epsilon, dtype=jnp.float32)
        preact = scale_C * y.astype(jnp.float32) + bias_C
        # diagnostics read the input of the nonlinearity as "preact" (see normlab.nn.norm_act)
        self.sow("intermediates", "preact", preact)
        z = (act(preact) - mean_C) * rsqrt_C
        return z.astype(dtype)


def check_proxy_args(layer: str, num_quantiles: int, epsilon: float) -> None:
    """ValueError unless num_quantiles ≥ 2 and epsilon ≥ 0."""
    if num_quantiles < 2:
        raise ValueError(f"{layer}: num_quantiles must be >= 2, got num_quantiles={num_quantiles}")
    if epsilon < 0:
        raise ValueError(f"{layer}: epsilon must be >= 0, got epsilon={epsilon}")


class _NormProxy(Norm):
    """Fields shared by the Proxy Norm composites (not registered)."""

    proxy = True
    learnable_scale = True

    activation: str = "relu"
    num_quantiles: int = 200
    epsilon: float = 0.03
    norm_epsilon: float = 1e-5
    scale_init: Callable = nn.initializers.ones
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def _proxy(self, x: jax.Array, num_groups: int) -> jax.Array:
        return ProxyActivation(
            activation=self.activation, num_quantiles=self.num_quantiles, epsilon=self.epsilon,
            scale_init=self.scale_init, dtype=self.dtype or x.dtype, param_dtype=self.param_dtype,
            name="proxy",
        )(x, norm_groups=num_groups, norm_epsilon=self.norm_epsilon)


@NORMS.register("layer+proxy")
class LayerNormProxy(_NormProxy):
    """LN + PN: z = PN-act(y), y = (x − μ)/sqrt(σ² + ε_norm) per example over (H, W, C).

    y is `LayerNorm(use_scale=False, use_bias=False, epsilon=norm_epsilon)` of x in float32;
    the affine, φ and the proxy normalization are `ProxyActivation` (params under "proxy"),
    which computes y itself, fused with them into one op.
    The activation is part of this layer: apply no other after it. `train` changes nothing.

        pn = LayerNormProxy(activation="relu")
        z = pn.apply(pn.init(jax.random.key(0), x_NHWC), x_NHWC)
    """

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        check_proxy_args("LayerNormProxy", self.num_quantiles, self.epsilon)
        check_input("LayerNorm", x)
        check_epsilon("LayerNorm", self.norm_epsilon)
        return self._proxy(x, 1)


@NORMS.register("group+proxy")
class GroupNormProxy(_NormProxy):
    """GN + PN: z = PN-act(y), y = (x − μ_g)/sqrt(σ²_g + ε_norm) per example and group.

    Give exactly one of `num_groups` and `group_size` (as for `GroupNorm`). y comes from
    `GroupNorm(use_scale=False, use_bias=False, epsilon=norm_epsilon)` of x in float32; the
    affine, φ and the proxy normalization are `ProxyActivation` (params under "proxy"), which
    computes y itself, fused with them into one op. The activation is part of this layer: apply
    no other after it. `train` changes nothing.

        pn = GroupNormProxy(num_groups=8, activation="silu")
        z = pn.apply(pn.init(jax.random.key(0), x_NHWC), x_NHWC)
    """

    takes_groups = True

    num_groups: int | None = None
    group_size: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        check_proxy_args("GroupNormProxy", self.num_quantiles, self.epsilon)
        check_input("GroupNorm", x)
        check_epsilon("GroupNorm", self.norm_epsilon)
        groups = resolve_groups("GroupNorm", x.shape[-1], self.num_groups, self.group_size)
        return self._proxy(x, groups)


def _is_proxy_leaf(path: tuple[Any, ...]) -> bool:
    last = path[-1] if path else None
    return getattr(last, "key", getattr(last, "name", None)) in ProxyActivation.proxy_params


def proxy_param_mask(params: Any) -> Any:
    """Pytree of bools like `params`: True on every "proxy_bias" / "proxy_scale" leaf.

        tx = optax.chain(optax.add_decayed_weights(1e-4, mask=proxy_param_mask), optax.sgd(0.1))
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: _is_proxy_leaf(path), params)


def proxy_weight_decay(params: Any) -> jax.Array:
    """Σ β̃² + Σ γ̃² over every "proxy_bias" / "proxy_scale" leaf of `params` (0 if none).

        loss = task_loss + 0.5 * wd * proxy_weight_decay(params)
    """
    leaves = jax.tree_util.tree_leaves_with_path(params)
    terms = [jnp.sum(jnp.square(leaf.astype(jnp.float32)))
             for path, leaf in leaves if _is_proxy_leaf(path)]
    return sum(terms, jnp.zeros((), jnp.float32))
