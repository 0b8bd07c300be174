"""BatchNorm statistics scopes (SPEC §1.1): which examples one set of batch statistics covers.

`config.bn_scope` is one of
  * "global" (default): the whole global batch B, across every device of the `data` axis;
  * "per_device": the B/D examples of each device (D = mesh.data), as if each device ran alone;
  * "ghost": ghost batches of `config.ghost_batch_size` G consecutive examples, whatever D is;
  * "groups": `config.bn_groups` groups of D/bn_groups consecutive devices, each normalized with
    the statistics of its B/bn_groups examples.

Each scope is a set of keyword arguments of the norm, different in the two ways a step can run:
  * under `jax.jit` on a batch sharded over `data` the compiler sees the global batch, so the
    global scope needs nothing, and the others become ghost batches of consecutive examples
    (the examples of a device, or of a group of devices, are consecutive rows of the batch);
  * under `pmap` or `shard_map` (the pipeline) each device sees only its rows, so the global
    scope needs `axis_name="data"` (a cross-device mean), groups need `axis_index_groups`, and
    per-device statistics are the norm's default.
Running statistics are averaged over the devices after each step in the mapped modes (the
trainer does it), which equals the jit modes' average over the ghost batches.

    kwargs = bn_scope_kwargs("groups", mapped=False, global_batch=256, data_size=8, groups=2)
    # {"ghost_batch_size": 128}
"""

from __future__ import annotations

import dataclasses
from typing import Any

from normlab.registry import NORMS

SCOPES = ("global", "per_device", "ghost", "groups")
SCOPE_FIELDS = ("axis_name", "axis_index_groups", "ghost_batch_size")


def check_scope(scope: str) -> None:
    """ValueError unless `scope` is one of SCOPES."""
    if scope not in SCOPES:
        raise ValueError(f"unknown bn_scope {scope!r}; valid: {', '.join(SCOPES)}")


def bn_scope_kwargs(
    scope: str,
    *,
    mapped: bool,
    global_batch: int,
    data_size: int,
    ghost_batch_size: int = 0,
    groups: int = 0,
    microbatches: int = 1,
    axis_name: str = "data",
) -> dict[str, Any]:
    """The norm keyword arguments that give statistics scope `scope` (see the module docstring).

    `mapped`: the step runs under pmap/shard_map (each device sees B/D examples, and inside a
    pipeline each microbatch B/(D·M)). ValueError where the batch does not split as the scope
    needs.

        bn_scope_kwargs("global", mapped=True, global_batch=64, data_size=8)
        # {"axis_name": "data"}
    """
    check_scope(scope)
    local = global_batch // data_size // microbatches  # examples a mapped norm sees at once
    if scope == "ghost":
        g = ghost_batch_size
        if g < 1 or (mapped and local % g) or global_batch % g:
            seen = f"the {local} examples each device sees at once" if mapped else (
                f"the global batch {global_batch}"
            )
            raise ValueError(
                f"bn_scope='ghost' needs ghost_batch_size >= 1 dividing {seen}, "
                f"got ghost_batch_size={g}"
            )
        return {"ghost_batch_size": g, "axis_name": axis_name} if mapped else {
            "ghost_batch_size": g
        }
    if scope == "groups":
        if groups < 1 or data_size % groups:
            raise ValueError(
                f"bn_scope='groups' needs bn_groups >= 1 dividing the {data_size} devices of the "
                f"data axis, got bn_groups={groups}"
            )
        if not mapped:
            return {} if groups == 1 else {"ghost_batch_size": global_batch // groups}
        size = data_size // groups
        index_groups = [list(range(g * size, (g + 1) * size)) for g in range(groups)]
        return {"axis_name": axis_name, "axis_index_groups": index_groups}
    if scope == "per_device":
        if mapped or data_size == 1:
            return {}
        return {"ghost_batch_size": global_batch // data_size}
    return {"axis_name": axis_name} if mapped else {}


def batch_dependent(norm: str) -> bool:
    """Whether the registered norm `norm` has batch statistics (its class's `batch_dependent`;
    such a norm has the `axis_name` and `axis_index_groups` fields a scope sets)."""
    return NORMS.get(norm).batch_dependent


def scoped_norm_kwargs(
    norm: str, norm_kwargs: dict[str, Any] | None, scope: str, scope_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """`norm_kwargs` of a model's norm with the scope's arguments (`bn_scope_kwargs`) added.

    A norm without batch statistics takes the global scope as it is (nothing to add).

    ValueError if the norm cannot take them (a batch-independent norm with a non-global scope,
    or ghost batches for a norm without `ghost_batch_size`), or if `norm_kwargs` already sets
    one of them (the scope is chosen by `config.bn_scope`, in one place).
    """
    kwargs = dict(norm_kwargs or {})
    clash = sorted(set(kwargs) & set(SCOPE_FIELDS))
    if clash:
        raise ValueError(
            f"model.norm_kwargs sets {clash}: choose BatchNorm's statistics with config.bn_scope "
            f"({', '.join(SCOPES)}), ghost_batch_size and bn_groups instead"
        )
    if not batch_dependent(norm):
        if scope == "global":
            return kwargs
        raise ValueError(
            f"bn_scope={scope!r} needs a norm with batch statistics, but norm={norm!r} has "
            "none; use bn_scope='global' (the default)"
        )
    fields = {f.name for f in dataclasses.fields(NORMS.get(norm))}
    missing = sorted(set(scope_kwargs) - fields)
    if missing:
        raise ValueError(
            f"norm={norm!r} has no {missing} field, which this bn_scope needs here; "
            "use norm='batch'"
        )
    return {**kwargs, **scope_kwargs}
