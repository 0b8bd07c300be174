"""The device mesh, from `config.mesh` = {data, model, stage}.

One size may be −1 ("the remaining devices"). The mesh uses Auto axis types: Linen's
logical-axis workflow and compiler-inserted collectives expect them (`jax.make_mesh` would
default to Explicit axes in this JAX version).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ("data", "model", "stage")


def resolve_axis_sizes(sizes: dict[str, int], num_devices: int) -> dict[str, int]:
    """Replaces one −1 by the remaining devices and checks the product equals `num_devices`."""
    unknown = [name for name in AXES if sizes.get(name, 1) == -1]
    if len(unknown) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {unknown}")
    for name in AXES:
        size = sizes.get(name, 1)
        if size == 0 or size < -1:
            raise ValueError(f"mesh: axis {name!r} must be positive or -1, got {size}")
    known = math.prod(sizes.get(name, 1) for name in AXES if name not in unknown)
    resolved = {name: sizes.get(name, 1) for name in AXES}
    if unknown:
        if num_devices % known:
            raise ValueError(
                f"mesh: {num_devices} devices cannot be split with the fixed axes {resolved}"
            )
        resolved[unknown[0]] = num_devices // known
    if math.prod(resolved.values()) != num_devices:
        raise ValueError(
            f"mesh: data×model×stage = {resolved} uses {math.prod(resolved.values())} devices, "
            f"but {num_devices} are available"
        )
    return resolved


def build_mesh(sizes: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, model, stage) mesh over `devices` (all devices by default)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_axis_sizes(sizes, len(devices))
    grid = np.asarray(devices).reshape([shape[name] for name in AXES])
    return Mesh(grid, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
    """Sharding of a batch over `data`, after `leading_axes` unsharded axes (e.g. K steps)."""
    return NamedSharding(mesh, PartitionSpec(*([None] * leading_axes), "data"))
