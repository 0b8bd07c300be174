"""Transfer learning in the training loop: start a run from another run's backbone (SPEC §1.9).

With `config.init_from.workdir` set, a run that has no checkpoint of its own starts from

    params      = source params      with the entry `head` replaced by this run's fresh head
    batch_stats = source batch_stats with the entry `head` (if any) replaced by this run's
    opt_state   = tx.init(params)    (a fresh optimizer: momentum and Adam moments start at 0)

where "source" is the newest readable checkpoint of the source workdir and `head` is
`config.init_from.head` (every normlab model calls its classifier "head"). The head's shape may
differ (another number of classes); everything else must have the source's structure and
shapes. The preprocessing is this run's own, fitted on its own training data.

    source = load_source(config.init_from)            # checked before anything compiles
    fresh = init_state(model, tx, rng, example_x)
    state = transfer_state(fresh, source, config.init_from.head, tx)
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import numpy as np
import optax
from ml_collections import ConfigDict

from normlab.models.transfer import split_backbone_head
from normlab.train.saved import SavedModel, load_saved
from normlab.train.state import TrainState

log = logging.getLogger(__name__)


def _check_head(params: Any, head: str, where: str) -> None:
    if head not in params:
        raise ValueError(
            f"init_from.head={head!r} is not a top-level params entry of the {where}; "
            f"its top-level params entries: {', '.join(sorted(params)) or '(none)'}"
        )


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(path): np.shape(x) for path, x in leaves}


def _check_same_shapes(what: str, source: Any, target: Any, workdir: str) -> None:
    """ValueError naming the first entry whose structure or shape differs."""
    src, new = _shapes(source), _shapes(target)
    if src.keys() != new.keys():
        only_src = sorted(src.keys() - new.keys())[:3]
        only_new = sorted(new.keys() - src.keys())[:3]
        raise ValueError(
            f"init_from.workdir={workdir!r}: the source's backbone {what} do not match this "
            f"model's (a different architecture?): only in the source {only_src}, only in this "
            f"model {only_new}"
        )
    for key, shape in src.items():
        if new[key] != shape:
            raise ValueError(
                f"init_from.workdir={workdir!r}: backbone {what}{key} has shape {shape} in the "
                f"source and {new[key]} in this model (a different input size or width?)"
            )


def load_source(spec: ConfigDict) -> SavedModel:
    """The newest checkpoint of the run `spec.workdir` (`config.init_from`), checked to have the
    head `spec.head`.

    Raises ValueError if the source has no readable checkpoint or if `spec.head` is not a
    top-level params entry of it (the message lists them).
    """
    source = load_saved(spec.workdir)
    _check_head(source.state.params, spec.head, f"source run {spec.workdir!r}")
    return source


def transfer_state(
    state: TrainState, source: SavedModel, head: str, tx: optax.GradientTransformation
) -> TrainState:
    """`state` (a freshly initialized canonical state) with the backbone of `source`: every
    params and batch_stats entry but `head` (see the module docstring); the optimizer state is
    `tx.init` of the new params.

    Raises ValueError if `head` is not a params entry of the new model or if the backbones'
    structures or shapes differ (the message names the first differing entry).
    """
    workdir = str(source.workdir)
    _check_head(state.params, head, "new model")
    backbone, _ = split_backbone_head(source.state.params, head)
    fresh_backbone, fresh_head = split_backbone_head(state.params, head)
    _check_same_shapes("params", backbone, fresh_backbone, workdir)
    stats = {k: v for k, v in source.state.batch_stats.items() if k != head}
    fresh_stats = {k: v for k, v in state.batch_stats.items() if k != head}
    _check_same_shapes("batch_stats", stats, fresh_stats, workdir)
    params = {**backbone, head: fresh_head}
    if head in state.batch_stats:
        stats[head] = state.batch_stats[head]
    # the source's arrays live on its restore mesh: bring them to the host, the caller places
    params, stats = jax.device_get((params, stats))
    log.info(
        "initialized from %s (step %d): backbone entries %s, new %r",
        source.path,
        source.step,
        ", ".join(sorted(backbone)),
        head,
    )
    opt_state = jax.jit(tx.init)(params)
    return state.replace(params=params, batch_stats=stats, opt_state=opt_state)
