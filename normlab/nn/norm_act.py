"""Normalization followed by an activation, chosen by name: the unit every model is built from.

Proxy Norm fuses the two (its activation sits *inside* the normalization), so models never call a
norm and an activation separately: they call `NormAct`, which picks the right composition.

    y = NormAct(norm="batch", activation="relu")(x_NHWC, train=True)      # relu(BN(x))
    y = NormAct(norm="group+proxy", activation="silu",
                norm_kwargs={"num_groups": 8})(x_NHWC, train=True)        # GN then PN-activation

FRN (+TLU) and EvoNorm carry their own nonlinearity and replace "BN + ReLU" as a whole
(Singh & Krishnan 2019; Liu et al. 2020), so `NormAct` applies no further activation after them.
Which norm is which is said by the norm classes (`self_activated`, `proxy`:
`normlab.nn.capabilities.Norm`).

The input to the nonlinearity is recorded with `sow("intermediates", "preact", ...)` so that
diagnostics (saturation, dead units, percentiles, power decomposition) can read it without
changing model code; for the fused Proxy Norm it is γ·y + β, the input of φ inside PN.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax

from normlab.nn.activations import make_activation
from normlab.registry import NORMS


def is_proxy(norm: str) -> bool:
    """True for the registered norms that apply the activation themselves (Proxy Norm's
    composites `layer+proxy`, `group+proxy`: their class's `proxy`)."""
    return NORMS.get(norm).proxy


class NormAct(nn.Module):
    """`act(norm(x))`, or the fused Proxy Norm `PN-act(norm(x))` for `*+proxy` norms.

    Attributes:
      norm: a `NORMS` registry name ("batch", "group", "layer+proxy", "none", ...).
      activation: an `ACTIVATIONS` registry name.
      norm_kwargs: keyword arguments of the norm (e.g. `{"num_groups": 8}`).
      act_kwargs: keyword arguments of the activation (e.g. `{"alpha": 0.1}`).
      dtype: the output (compute) dtype, e.g. bfloat16; None: x's. The norm gets it as its own
        `dtype` (unless `norm_kwargs` names one): it computes its statistics in float32 from
        x as given and returns `dtype`, and the activation keeps it.
    """

    norm: str = "batch"
    activation: str = "relu"
    norm_kwargs: Mapping[str, Any] | None = None
    act_kwargs: Mapping[str, Any] | None = None
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        norm_kwargs = dict(self.norm_kwargs or {})
        if self.dtype is not None:
            norm_kwargs.setdefault("dtype", self.dtype)
        act_kwargs = dict(self.act_kwargs or {})
        if is_proxy(self.norm):
            if act_kwargs:
                raise ValueError(
                    f"NormAct: norm {self.norm!r} takes the activation by name only; "
                    f"act_kwargs={act_kwargs} cannot be passed to it"
                )
            layer = NORMS.build(self.norm, activation=self.activation, **norm_kwargs, name="norm")
            return layer(x, train=train)
        y = NORMS.build(self.norm, **norm_kwargs, name="norm")(x, train=train)
        self.sow("intermediates", "preact", y)
        if NORMS.get(self.norm).self_activated:
            return y
        return make_activation(self.activation, **act_kwargs)(y)
