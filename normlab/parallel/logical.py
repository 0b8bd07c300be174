"""Logical axis names for parameters and activations, and the rules that map them to mesh axes.

Models name the axes of their parameters with *logical* names, Megatron-style: a column-parallel
dense kernel is ("embed", "mlp") and the row-parallel one after it ("mlp", "embed"), so a pair
of layers needs one all-reduce; conv kernels are (None, None, in, out); norm scales, biases and
every other per-channel parameter run along the channels of the tensor they normalize. They
constrain their activations the same way, ("batch", "mlp"). `config.sharding_rules` maps each
logical name to one mesh axis or to None (replicated):

    (("batch", "data"), ("embed", None), ("mlp", "model"), ("classes", None))

A logical name without a rule, a name given two different mesh axes, or an array whose logical
axes land twice on the same mesh axis is a ValueError: never a silent choice.

Annotations cost nothing in ordinary use. `partitioned` (kernel and bias initializers) and
`channel_params` (norm and activation modules) box parameters with their names only inside
`annotating()`, where the trainer evaluates the model's init abstractly to read the names back
(`nn.get_partition_spec`); `constrain` is the identity unless `activation_sharding(mesh, rules)`
is active, which the trainer enters while tracing its jitted step.

    with annotating():
        boxed = jax.eval_shape(lambda: model.init(key, x, train=False))
    specs = param_specs(boxed["params"], parse_rules(config.sharding_rules))
    # specs["layer_00"]["dense"]["kernel"] == PartitionSpec(None, "model")
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from normlab.parallel.mesh import AXES

Rules = tuple[tuple[str, str | None], ...]
LogicalNames = tuple[str | None, ...]

DEFAULT_RULES: Rules = (("batch", "data"), ("embed", None), ("mlp", "model"), ("classes", None))


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


def parse_rules(pairs: Sequence[Sequence[Any]], mesh_axes: Sequence[str] = AXES) -> Rules:
    """`config.sharding_rules` as a tuple of (logical name, mesh axis or None) pairs, checked.

    ValueError for a malformed pair, an unknown mesh axis, or one logical name mapped to two
    different mesh axes (repeating the same pair is fine).

        parse_rules([("batch", "data"), ("mlp", "model")])
    """
    rules: dict[str, str | None] = {}
    for pair in pairs:
        if isinstance(pair, str) or len(pair) != 2 or not isinstance(pair[0], str):
            raise ValueError(
                f"sharding_rules: each rule must be a (logical name, mesh axis or None) pair, "
                f"got {pair!r}"
            )
        name, axis = pair[0], pair[1]
        if axis is not None and axis not in mesh_axes:
            raise ValueError(
                f"sharding_rules: rule {tuple(pair)!r} names mesh axis {axis!r}; valid mesh "
                f"axes: {', '.join(mesh_axes)} (or None)"
            )
        if name in rules and rules[name] != axis:
            raise ValueError(
                f"sharding_rules: conflicting rules for logical axis {name!r}: "
                f"{rules[name]!r} and {axis!r}"
            )
        rules[name] = axis
    return tuple(rules.items())


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


def _path_str(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def param_specs(boxed: Any, rules: Rules) -> Any:
    """Mesh PartitionSpecs of a (possibly boxed) parameter tree, in the unboxed tree's shape.

    Unannotated leaves are replicated (PartitionSpec()).
    """
    logical = nn.get_partition_spec(boxed)

    def to_mesh(path, spec):
        return logical_to_mesh(tuple(spec), rules, f"params/{_path_str(path)}")

    return jax.tree_util.tree_map_with_path(
        to_mesh, logical, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )


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
