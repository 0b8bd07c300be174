"""Convolutions with standardized weights, chosen by name from the `CONVOLUTIONS` registry.

Each is a `flax.linen.Conv` (same fields, same call, same "kernel"/"bias" params); the weight
variants standardize the kernel each time it is read, so the stored param stays the raw W.

    from normlab.registry import CONVOLUTIONS
    conv = CONVOLUTIONS.build("weight_std", features=64, kernel_size=(3, 3))
    variables = conv.init(jax.random.key(0), x_NHWC)
    y = conv.apply(variables, x_NHWC)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from normlab.nn.stats import moments
from normlab.registry import CONVOLUTIONS

Array = jnp.ndarray


@CONVOLUTIONS.register("standard")
class Conv(nn.Conv):
    """The plain convolution y = x ⋆ W + b (`flax.linen.Conv`, unchanged).

        conv = Conv(features=64, kernel_size=(3, 3))
        y = conv.apply(conv.init(jax.random.key(0), x_NHWC), x_NHWC)
    """


def fan_in_moments(kernel: Array) -> tuple[Array, Array]:
    """Mean and biased variance of a conv kernel (..., C_in, C_out) over its fan-in axes.

    The fan-in axes are every axis but the last (k_h, k_w, C_in); shapes (1, ..., 1, C_out).

        mean, var = fan_in_moments(kernel_HWIO)
    """
    return moments(kernel, tuple(range(kernel.ndim - 1)))


class _StandardizedConv(nn.Conv):
    """A Conv whose "kernel" param is passed through `standardize` wherever the Conv reads it."""

    def standardize(self, kernel: Array) -> Array:
        """The kernel the convolution uses, computed from the stored "kernel" param."""
        raise NotImplementedError

    def param(self, name: str, init_fn: Any, *init_args: Any, **init_kwargs: Any) -> Any:
        """`nn.Module.param`, with the "kernel" param standardized on the way out."""
        value = super().param(name, init_fn, *init_args, **init_kwargs)
        return self.standardize(value) if name == "kernel" else value


@CONVOLUTIONS.register("weight_std")
class WSConv(_StandardizedConv):
    """Weight Standardization (Qiao et al. 2019): y = x ⋆ Ŵ + b, Ŵ = (W − μ)/sqrt(σ² + ε).

    μ, σ²: mean and biased variance of W over the fan-in axes (k_h, k_w, C_in) of each output
    channel. Use it followed by a norm (GN or BN), as in the paper.

        conv = WSConv(features=64, kernel_size=(3, 3))
        y = conv.apply(conv.init(jax.random.key(0), x_NHWC), x_NHWC)
    """

    epsilon: float = 1e-5

    def standardize(self, kernel: Array) -> Array:
        """Ŵ = (W − μ)/sqrt(σ² + ε) per output channel, in float32."""
        if self.epsilon < 0:
            raise ValueError(f"WSConv: epsilon must be >= 0, got epsilon={self.epsilon}")
        mean, var = fan_in_moments(kernel)
        return ((kernel - mean) * lax.rsqrt(var + self.epsilon)).astype(kernel.dtype)


@CONVOLUTIONS.register("scaled_ws")
class ScaledWSConv(_StandardizedConv):
    """Scaled WS (NF-nets, Brock et al. 2021): y = x ⋆ Ŵ + b, Ŵ = g·γ_act·(W − μ)/sqrt(N·σ² + ε).

    μ, σ²: mean and biased variance of W over the fan-in axes (k_h, k_w, C_in) of each output
    channel; N = k_h·k_w·C_in the fan-in; g a learnable gain per output channel (param "gain",
    init 1); γ_act = `act_gain` the activation's gain (e.g. 1.7139 for ReLU, so that activations
    keep unit variance without a norm). ε defaults to NF-nets' 1e-4.

        conv = ScaledWSConv(features=64, kernel_size=(3, 3), act_gain=1.7139)
        y = conv.apply(conv.init(jax.random.key(0), x_NHWC), x_NHWC)
    """

    epsilon: float = 1e-4
    act_gain: float = 1.0

    def standardize(self, kernel: Array) -> Array:
        """Ŵ = g·γ_act·(W − μ)/sqrt(N·σ² + ε) per output channel, in float32."""
        if self.epsilon < 0:
            raise ValueError(f"ScaledWSConv: epsilon must be >= 0, got epsilon={self.epsilon}")
        gain = super().param(
            "gain", nn.initializers.ones, (kernel.shape[-1],), self.param_dtype
        )
        mean, var = fan_in_moments(kernel)
        fan_in = kernel.size // kernel.shape[-1]
        multiplier = gain * self.act_gain * lax.rsqrt(fan_in * var + self.epsilon)
        return ((kernel - mean) * multiplier).astype(kernel.dtype)
