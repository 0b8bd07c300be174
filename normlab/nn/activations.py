"""Activation functions, chosen by name from `ACTIVATIONS`.

Every registry entry is a *factory*: called with its keyword options it returns the activation,
a callable `x -> y` applied elementwise (the output has the input's dtype). `prelu` is the one
activation with a parameter; its factory returns a Linen module, so it must be built inside a
parent module's compact method (or used on its own with init/apply).

    from normlab.nn.activations import make_activation
    act = make_activation("leaky_relu", alpha=0.1)
    y = act(jnp.array([-1.0, 2.0]))                   # [-0.1, 2.0]
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from normlab.registry import ACTIVATIONS

Activation = Callable[[jax.Array], jax.Array]

SELU_SCALE = 1.0507009873554805  # λ of Klambauer et al. 2017
SELU_ALPHA = 1.6732632423543772  # α of Klambauer et al. 2017


def make_activation(name: str, **kwargs: object) -> Activation:
    """The activation registered as `name`, built with `kwargs`.

    Unknown names or keywords raise `ValueError` listing the valid ones.

        gelu = make_activation("gelu")                # exact erf form
        y = gelu(jnp.linspace(-3.0, 3.0, 7))
    """
    return ACTIVATIONS.build(name, **kwargs)


@ACTIVATIONS.register("sigmoid")
def sigmoid() -> Activation:
    """σ(x) = 1 / (1 + exp(−x)).  Usage: `make_activation("sigmoid")(x)`."""
    return jax.nn.sigmoid


@ACTIVATIONS.register("tanh")
def tanh() -> Activation:
    """tanh(x) = (eˣ − e⁻ˣ) / (eˣ + e⁻ˣ).  Usage: `make_activation("tanh")(x)`."""
    return jnp.tanh


@ACTIVATIONS.register("relu")
def relu() -> Activation:
    """relu(x) = max(x, 0).  Usage: `make_activation("relu")(x)`."""
    return jax.nn.relu


@ACTIVATIONS.register("leaky_relu")
def leaky_relu(alpha: float = 0.01) -> Activation:
    """leaky_relu(x) = x if x ≥ 0 else α·x, with a fixed slope α ≥ 0 (default 0.01).

    Usage: `make_activation("leaky_relu", alpha=0.1)(x)`.
    """
    if not alpha >= 0:
        raise ValueError(f"leaky_relu: alpha must be >= 0, got alpha={alpha}")
    return lambda x: jax.nn.leaky_relu(x, negative_slope=alpha)


class PReLU(nn.Module):
    """Parametric ReLU (He et al. 2015): y = x if x ≥ 0 else a·x, with a learnable slope a.

    Attributes:
      per_channel: one slope per channel (the last axis; param "slope" of shape (C,)) if True,
        otherwise a single slope shared by every unit (param "slope" of shape ()).
      init_slope: the initial value of a (0.25 in the paper).
      param_dtype: dtype of the slope parameter.

        act = PReLU()
        variables = act.init(jax.random.key(0), x_NC)
        y_NC = act.apply(variables, x_NC)
    """

    per_channel: bool = True
    init_slope: float = 0.25
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (x.shape[-1],) if self.per_channel else ()
        slope = self.param("slope", nn.initializers.constant(self.init_slope), shape,
                           self.param_dtype)
        return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


@ACTIVATIONS.register("prelu")
def prelu(per_channel: bool = True, init_slope: float = 0.25) -> PReLU:
    """A `PReLU` module: y = x if x ≥ 0 else a·x, learnable a (per channel or shared).

    Build it inside a parent's compact method: `make_activation("prelu")(x)`.
    """
    return PReLU(per_channel=per_channel, init_slope=init_slope)


@ACTIVATIONS.register("elu")
def elu(alpha: float = 1.0) -> Activation:
    """elu(x) = x if x > 0 else α·(exp(x) − 1), with α > 0 (default 1).

    Usage: `make_activation("elu", alpha=0.5)(x)`.
    """
    if not alpha > 0:
        raise ValueError(f"elu: alpha must be > 0, got alpha={alpha}")
    return lambda x: jax.nn.elu(x, alpha=alpha)


@ACTIVATIONS.register("selu")
def selu() -> Activation:
    """selu(x) = λ·(x if x > 0 else α·(exp(x) − 1)), λ = 1.0507009873554805, α = 1.6732632423543772.

    The constants make N(0, 1) a fixed point of the layer map (Klambauer et al. 2017).
    Usage: `make_activation("selu")(x)`.
    """
    return lambda x: SELU_SCALE * jax.nn.elu(x, alpha=SELU_ALPHA)


@ACTIVATIONS.register("gelu")
def gelu() -> Activation:
    """Exact GELU: gelu(x) = x·Φ(x) = x·(1 + erf(x/√2))/2.

    (jax.nn.gelu defaults to the tanh approximation; that one is `gelu_tanh`.)
    Usage: `make_activation("gelu")(x)`.
    """
    return lambda x: jax.nn.gelu(x, approximate=False)


@ACTIVATIONS.register("gelu_tanh")
def gelu_tanh() -> Activation:
    """Tanh approximation of GELU: x/2·(1 + tanh(√(2/π)·(x + 0.044715·x³))).

    Usage: `make_activation("gelu_tanh")(x)`.
    """
    return lambda x: jax.nn.gelu(x, approximate=True)


@ACTIVATIONS.register("silu", "swish")
def silu() -> Activation:
    """silu(x) = swish(x) = x·σ(x) = x / (1 + exp(−x)).  Usage: `make_activation("silu")(x)`."""
    return jax.nn.silu


@ACTIVATIONS.register("mish")
def mish() -> Activation:
    """mish(x) = x·tanh(softplus(x)) = x·tanh(log(1 + exp(x))).

    Usage: `make_activation("mish")(x)`.
    """
    return lambda x: x * jnp.tanh(jax.nn.softplus(x))


@ACTIVATIONS.register("identity")
def identity() -> Activation:
    """identity(x) = x (a linear network).  Usage: `make_activation("identity")(x)`."""
    return lambda x: x
