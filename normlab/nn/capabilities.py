"""What a normalization layer is, said by its class: the `Norm` base of every registered norm.

Code that must treat norms differently (NormAct, the ResNet block, the BN-scope planner, the
config helpers, the benchmarks) reads these class attributes instead of keeping tables of names,
so adding a norm is one class in one file (and its test, tests/test_norm_capabilities.py checks
every attribute against the layer's behaviour):

    cls = NORMS.get("frn")
    cls.self_activated, cls.linear_kwargs          # True, {"use_tlu": False}
    NORMS.get("group").takes_groups                # True: give num_groups or group_size
    NORMS.get("batch").has_learnable_scale({"use_scale": False})   # False
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn


class Norm(nn.Module):
    """Base class of every registered norm; the class attributes below default to "no".

    batch_dependent: in train mode an example's output depends on the other examples of the
      batch (batch statistics). Such a norm has the fields `axis_name` and `axis_index_groups`
      that give its statistics a cross-device scope (`normlab.parallel.bn_scope`).
    has_running_stats: keeps running statistics (collection `batch_stats`) that eval uses.
    self_activated: carries its own nonlinearity (FRN's TLU, EvoNorm's), so it replaces a norm
      *and* the activation after it: `NormAct` applies no activation after it.
    proxy: applies the given activation inside the norm (Proxy Norm's PN-activation): it takes
      `activation=` (an `ACTIVATIONS` name), and `NormAct` passes its activation to it.
    takes_groups: normalizes groups of channels; give `num_groups` or `group_size`.
    linear_kwargs: keywords that make the output affine in x given the statistics, for a norm
      that must be linear (a ResNet v1 branch's last norm, before the addition): {} when it is
      already, {"use_tlu": False} for FRN, None when it has no linear form (EvoNorm: used as is).
    learnable_scale: has a per-channel scale γ whose init the field `scale_init` sets (unless
      `use_scale=False`, for a norm with that field); see `has_learnable_scale`.
    """

    batch_dependent: ClassVar[bool] = False
    has_running_stats: ClassVar[bool] = False
    self_activated: ClassVar[bool] = False
    proxy: ClassVar[bool] = False
    takes_groups: ClassVar[bool] = False
    linear_kwargs: ClassVar[Mapping[str, Any] | None] = {}
    learnable_scale: ClassVar[bool] = False

    @classmethod
    def has_learnable_scale(cls, norm_kwargs: Mapping[str, Any]) -> bool:
        """Whether the norm built with `norm_kwargs` has a scale γ that `scale_init` sets.

            NORMS.get("batch").has_learnable_scale({})                    # True
            NORMS.get("batch").has_learnable_scale({"use_scale": False})  # False
        """
        return cls.learnable_scale and bool(
            norm_kwargs.get("use_scale", getattr(cls, "use_scale", True))
        )
