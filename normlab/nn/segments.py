"""Pipeline segments: how a model lists its layers so that they can be pipelined.

A model that can be pipelined returns its layers in order from `pipeline_segments()`: `Layer`s,
which run on the whole batch, and `Repeated` runs of identical layers (same module, same
parameter shapes), which `normlab.parallel.pipeline` stacks and shards over the mesh's `stage`
axis. A model only declares its segments (as it declares logical axis names,
`normlab.nn.logical`); where they run is the device plan's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flax.linen as nn


@dataclass(frozen=True)
class Layer:
    """A layer outside the pipelined runs: `module.apply(variables[name], h, train=train)`.

    `name` None: a module without variables (dropout) or a plain function h ↦ h (flatten,
    pooling). `train_arg`: whether the module's `__call__` takes `train`.
    """

    name: str | None
    module: Any
    train_arg: bool = True


@dataclass(frozen=True)
class Repeated:
    """L identical layers `names` (same `module`), run as one pipelined, stage-sharded stack."""

    names: tuple[str, ...]
    module: nn.Module

    @property
    def key(self) -> str:
        return f"{self.names[0]}..{self.names[-1]}"


Segment = Layer | Repeated
