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

The names and the annotation contexts are declared below the models, in `normlab.nn.logical`
(`partitioned`, `channel_params`, `constrain`, `annotating`, `activation_sharding`); this module
parses the rules and turns a boxed parameter tree into mesh PartitionSpecs.

    with annotating():
        boxed = jax.eval_shape(lambda: model.init(key, x, train=False))
    specs = param_specs(boxed["params"], parse_rules(config.sharding_rules))
    # specs["layer_00"]["dense"]["kernel"] == PartitionSpec(None, "model")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec

from normlab.nn.logical import Rules, logical_to_mesh
from normlab.parallel.mesh import AXES

DEFAULT_RULES: Rules = (("batch", "data"), ("embed", None), ("mlp", "model"), ("classes", None))


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


