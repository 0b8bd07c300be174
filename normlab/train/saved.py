"""A saved model of a run: its config, model, state and fitted preprocessing, read back.

A saved model is named by a path: a workdir (its newest readable checkpoint), or one saved
state in it, `<workdir>/checkpoints/<step>` or `<workdir>/snapshots/<step>` (a member of a
snapshot ensemble, see `normlab.train.optim.snapshot`). It is restored by `build_run` on one
device, whatever mesh it was trained on. Seed i of a K-seed run (`num_seeds`) is
`<workdir>/seeds/<i>`: its slice of the newest checkpoint, as the single-seed run it equals
(the workdir itself holds K models and is refused, naming that path).

    saved = load_saved("runs/bn")                                # newest checkpoint
    members = [load_saved(p) for p in snapshot_paths("runs/snapshot")]
    x = inputs.transform(saved.preprocessor, inputs.to_float(images, saved.config.pad_to))
    logits_NC = saved.model.apply(saved.state.variables(), x, train=False)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from normlab.data.preprocess import Preprocessor
from normlab.train import inputs
from normlab.train.defaults import base_config
from normlab.train.run import Run, build_run
from normlab.train.seeds import SEEDS, seed_config, seed_state
from normlab.train.state import TrainState

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
    run: Run  # the run it was restored by (on one device): evaluation, data, preprocessing


def _locate(path: Path) -> tuple[Path, str, int | None, int | None]:
    """(workdir, folder, step or None for the newest, seed index or None) of a saved-model
    path."""
    parent = path.parent
    if path.name.isdigit() and parent.name == SEEDS and (parent.parent / "config.json").is_file():
        return parent.parent, "checkpoints", None, int(path.name)
    if (path / "config.json").is_file():
        return path, "checkpoints", None, None
    if path.name.isdigit() and parent.name in FOLDERS and (parent.parent / "config.json").is_file():
        return parent.parent, parent.name, int(path.name), None
    if not path.exists():
        raise ValueError(f"no such run: {str(path)!r} does not exist")
    raise ValueError(
        f"{str(path)!r} is neither a normlab workdir (with config.json) nor a saved state "
        f"<workdir>/checkpoints/<step> or <workdir>/snapshots/<step>"
    )


def saved_config(workdir: Path) -> ml_collections.ConfigDict:
    """The config a run was trained with (its config.json), on top of today's defaults so that
    a run saved before a field existed reads it at its default."""
    path = workdir / "config.json"
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    config = base_config()
    for key, value in saved.items():
        config[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
    return config


def _on_one_device(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` on a 1-device mesh: reading a saved model needs none of its training layout
    (checkpoints hold the canonical layout, which restores on any mesh)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.mesh = {"data": 1, "model": 1, "stage": 1}
    config.parallel_mode = "jit"
    config.pipeline.microbatches = 1
    config.bn_scope, config.ghost_batch_size, config.bn_groups = "global", 0, 0
    return config


def load_saved(path: str | Path) -> SavedModel:
    """Restores the saved model at `path` (a workdir or `<workdir>/<checkpoints|snapshots>/<step>`).

    Raises ValueError when the path is not a run, holds no readable checkpoint, or names a step
    that was not saved.

        saved = load_saved("runs/snapshot/snapshots/2000")
    """
    path = Path(path)
    workdir, folder, step, seed = _locate(path)
    config = saved_config(workdir)
    _check_seed(workdir, config, seed)
    if not (workdir / folder).is_dir():
        raise ValueError(f"{workdir} has no {folder} (no folder {workdir / folder})")
    run = build_run(
        _on_one_device(config), jax.devices()[:1], workdir, folder=folder, step=step,
        must_restore=True,
    )
    run.checkpointer.close()
    if seed is not None:  # the single-seed run seed i equals, on its slice of the state
        config = seed_config(config, seed)
        run = dataclasses.replace(
            run, config=_on_one_device(config), state=seed_state(run.state, seed),
            chunk=None, seed_batches=None, _canonical=None,
        )
    return SavedModel(
        path=path,
        workdir=workdir,
        step=run.start_step,
        config=config,
        model=run.model,
        state=run.canonical(),
        preprocessor=run.preprocessor,
        preprocess_arrays=inputs.split_state(run.preprocessor)[0],
        meta=run.restored_meta,
        run=run,
    )


def _check_seed(workdir: Path, config: ml_collections.ConfigDict, seed: int | None) -> None:
    """ValueError unless `seed` names one of the run's seeds (or the run has one seed)."""
    k = config.num_seeds
    if seed is None and k > 1:
        raise ValueError(
            f"{workdir} holds {k} seeds (num_seeds={k}, seeds {config.seed}..{config.seed + k - 1}"
            f") in one checkpoint: name one as {workdir}/{SEEDS}/<i> (i = 0..{k - 1}), e.g. "
            f"normlab eval --workdir {workdir}/{SEEDS}/0"
        )
    if seed is not None and not seed < k:
        raise ValueError(f"{workdir} has seeds 0..{k - 1} (num_seeds={k}), not seed {seed}")


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
