"""Logical axis names of parameters and activations: what a model declares about sharding.

Models name the axes of their parameters with *logical* names, Megatron-style: a column-parallel
dense kernel is ("embed", "mlp") and the row-parallel one after it ("mlp", "embed"), so a pair
of layers needs one all-reduce; conv kernels are (None, None, in, out); norm scales, biases and
every other per-channel parameter run along the channels of the tensor they normalize. They
constrain their activations the same way, ("batch", "mlp"). The rules that map logical names to
mesh axes (`config.sharding_rules`) and the devices are `normlab.parallel`'s business: a model
only declares names (the flax convention) and knows nothing of devices.

Annotations cost nothing in ordinary use. `partitioned` (kernel and bias initializers) and
`channel_params` (norm and activation modules) box parameters with their names only inside
`annotating()`, where the device plan evaluates the model's init abstractly to read the names
back (`nn.get_partition_spec`); `constrain` is the identity unless `activation_sharding(mesh,
rules)` is active, which the plan enters while tracing its jitted step.

    nn.Dense(100, kernel_init=partitioned(lecun_normal(), ("embed", "mlp")))
    h = constrain(h, ("batch", "mlp"))
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = tuple[tuple[str, str | None], ...]
LogicalNames = tuple[str | None, ...]


@dataclass(frozen=True)
class _Context:
    annotate: bool = False
    mesh: Mesh | None = None
    rules: Rules | None = None


_OFF = _Context()  # frozen: safe to share as the default
_CONTEXT: contextvars.ContextVar[_Context] = contextvars.ContextVar(
    "normlab_logical_axes", default=_OFF
)


@contextlib.contextmanager
def annotating() -> Iterator[None]:
    """Within: `partitioned` and `channel_params` box parameters with their logical names."""
    token = _CONTEXT.set(_Context(True, _CONTEXT.get().mesh, _CONTEXT.get().rules))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Within: `constrain(x, names)` pins activations to the mesh axes the rules give."""
    token = _CONTEXT.set(_Context(_CONTEXT.get().annotate, mesh, rules))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def logical_to_mesh(names: LogicalNames, rules: Rules, what: str = "an array") -> PartitionSpec:
    """The mesh PartitionSpec of an array whose axes have the logical `names` (None: unsharded).

    ValueError for a name without a rule, or two axes of the array on the same mesh axis.

        logical_to_mesh(("embed", "mlp"), DEFAULT_RULES)     # PartitionSpec(None, "model")
    """
    table = dict(rules)
    mesh_axes: list[str | None] = []
    owner: dict[str, str] = {}
    for name in names:
        if name is None:
            mesh_axes.append(None)
            continue
        if name not in table:
            raise ValueError(
                f"sharding_rules: no rule for logical axis {name!r} of {what}; add "
                f"({name!r}, <mesh axis or None>) to config.sharding_rules"
            )
        axis = table[name]
        if axis is not None and axis in owner:
            raise ValueError(
                f"sharding_rules: rule conflict in {what}: logical axes {owner[axis]!r} and "
                f"{name!r} both map to mesh axis {axis!r}"
            )
        if axis is not None:
            owner[axis] = name
        mesh_axes.append(axis)
    return PartitionSpec(*mesh_axes)


def partitioned(init: Callable, names: LogicalNames) -> Callable:
    """`init`, boxed with logical axis `names` while `annotating()`; `init` itself otherwise.

        nn.Dense(100, kernel_init=partitioned(lecun_normal(), ("embed", "mlp")))
    """
    if not _CONTEXT.get().annotate:
        return init
    return nn.with_logical_partitioning(init, names)


def _box_channels(axis: str | None, tree: Any) -> Any:
    def box(value):
        if isinstance(value, nn.meta.AxisMetadata):
            return value
        names = (axis,) if value.ndim == 1 else (None,) * value.ndim
        return nn.LogicallyPartitioned(value, names)

    return jax.tree.map(box, tree, is_leaf=lambda v: isinstance(v, nn.meta.AxisMetadata))


@functools.cache
def _channel_class(module_cls: type[nn.Module], axis: str | None) -> type[nn.Module]:
    return nn.map_variables(
        module_cls,
        "params",
        trans_in_fn=nn.meta.unbox,
        trans_out_fn=functools.partial(_box_channels, axis),
        init=True,
        mutable=True,
    )


def channel_params(module_cls: type[nn.Module], axis: str | None) -> type[nn.Module]:
    """`module_cls`, whose 1-D params (per-channel γ, β, proxy and activation params) get the
    logical axis `axis` while `annotating()`; `module_cls` itself otherwise. Same param paths.

        NormAct_ = channel_params(NormAct, "mlp")
        y = NormAct_(norm="batch", activation="relu", name="norm_act")(x, train=train)
    """
    if not _CONTEXT.get().annotate:
        return module_cls
    return _channel_class(module_cls, axis)


def constrain(x: jax.Array, names: LogicalNames) -> jax.Array:
    """`x` pinned to the mesh axes of its logical `names` inside `activation_sharding`, else x.

        h = constrain(h, ("batch", "mlp"))
    """
    context = _CONTEXT.get()
    if context.mesh is None:
        return x
    spec = logical_to_mesh(names, context.rules, f"an activation of shape {x.shape}")
    return jax.lax.with_sharding_constraint(x, NamedSharding(context.mesh, spec))
