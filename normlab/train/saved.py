"""A saved model of a run: its config, model, state and fitted preprocessing, read back.

A saved model is named by a path: a workdir (its newest readable checkpoint), or one saved
state in it, `<workdir>/checkpoints/<step>` or `<workdir>/snapshots/<step>` (a member of a
snapshot ensemble, see `normlab.train.optim.snapshot`). The state is restored replicated on this
machine's devices, whatever mesh it was trained on.

    saved = load_saved("runs/bn")                                # newest checkpoint
    members = [load_saved(p) for p in snapshot_paths("runs/snapshot")]
    x = inputs.transform(saved.preprocessor, inputs.to_float(images, saved.config.pad_to))
    logits_NC = saved.model.apply(saved.state.variables(), x, train=False)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from normlab.data.preprocess import Preprocessor
from normlab.parallel.mesh import build_mesh, replicated
from normlab.train import inputs
from normlab.train.build import build_model, build_tx
from normlab.train.checkpoint import Checkpointer
from normlab.train.state import TrainState, init_state

FOLDERS = ("checkpoints", "snapshots")


@dataclass
class SavedModel:
    """One restored state of a run (see the module docstring)."""

    path: Path  # what was asked for: a workdir or <workdir>/<folder>/<step>
    workdir: Path
    step: int
    config: ml_collections.ConfigDict
    model: nn.Module
    state: TrainState
    preprocessor: Preprocessor
    preprocess_arrays: dict[str, np.ndarray]
    meta: dict[str, Any]


def _locate(path: Path) -> tuple[Path, str, int | None]:
    """(workdir, folder, step or None for the newest) of a saved-model path."""
    if (path / "config.json").is_file():
        return path, "checkpoints", None
    parent = path.parent
    if path.name.isdigit() and parent.name in FOLDERS and (parent.parent / "config.json").is_file():
        return parent.parent, parent.name, int(path.name)
    if not path.exists():
        raise ValueError(f"no such run: {str(path)!r} does not exist")
    raise ValueError(
        f"{str(path)!r} is neither a normlab workdir (with config.json) nor a saved state "
        f"<workdir>/checkpoints/<step> or <workdir>/snapshots/<step>"
    )


def load_saved(path: str | Path) -> SavedModel:
    """Restores the saved model at `path` (a workdir or `<workdir>/<checkpoints|snapshots>/<step>`).

    Raises ValueError when the path is not a run, holds no readable checkpoint, or names a step
    that was not saved.

        saved = load_saved("runs/snapshot/snapshots/2000")
    """
    path = Path(path)
    workdir, folder, step = _locate(path)
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    if not (workdir / folder).is_dir():
        raise ValueError(f"{workdir} has no {folder} (no folder {workdir / folder})")
    model = build_model(config, inputs.num_classes(config))
    # The optimizer only shapes the restored tree; the run length does not matter here.
    tx, _ = build_tx(config, total_steps=10**9)
    mesh = build_mesh({"data": -1})
    found: dict[str, Any] = {}

    def target(pre_arrays: dict[str, np.ndarray], meta: dict) -> Any:
        found["preprocessor"] = inputs.join_state(pre_arrays, meta["preprocess"])
        shape = (1, *meta["input_shape"])
        shapes = jax.eval_shape(
            lambda: init_state(model, tx, jax.random.PRNGKey(0), np.zeros(shape, np.float32))
        )
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated(mesh)), shapes
        )

    checkpointer = Checkpointer(workdir, max_to_keep=None, folder=folder)
    try:
        if step is None:
            restored = checkpointer.restore_latest(target)
            if restored is None:
                raise ValueError(f"{workdir} has no readable checkpoint in {workdir / folder}")
        else:
            if step not in checkpointer.steps():
                raise ValueError(
                    f"{workdir / folder} holds no complete state at step {step}; "
                    f"saved steps: {checkpointer.steps()}"
                )
            restored = checkpointer.restore(step, target)
    finally:
        checkpointer.close()
    state, pre_arrays, meta = restored
    return SavedModel(
        path=path,
        workdir=workdir,
        step=int(meta["step"]),
        config=config,
        model=model,
        state=state,
        preprocessor=found["preprocessor"],
        preprocess_arrays=pre_arrays,
        meta=meta,
    )


def snapshot_paths(workdir: str | Path) -> list[Path]:
    """The snapshot-ensemble members of a run, `<workdir>/snapshots/<step>`, oldest first.

        members = snapshot_paths("runs/snapshot")     # [.../snapshots/1000, .../2000, ...]
    """
    folder = Path(workdir) / "snapshots"
    steps = []
    if folder.is_dir():
        steps = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    if not steps:
        raise ValueError(
            f"{workdir} has no snapshots (a run saves them with schedule.name='snapshot')"
        )
    return [folder / str(s) for s in steps]
