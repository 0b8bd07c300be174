"""Orbax checkpoints of the train state, the fitted preprocessing and the data position.

A checkpoint is written to a temporary directory and renamed when complete (orbax's atomic
commit), so a run killed mid-save leaves the previous checkpoints intact. Restoring walks the
checkpoints from newest to oldest and falls back, with a warning, past any it cannot read.
The data position is the step itself: the samplers are pure functions of the step.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from normlab.errors import NormlabError

log = logging.getLogger(__name__)


class Checkpointer:
    """Saves and restores `(state, preprocessing arrays, metadata)` under `workdir/<folder>`.

    `folder="checkpoints"` holds the resumable checkpoints (the newest `max_to_keep`);
    `folder="snapshots"` with `max_to_keep=None` holds a snapshot ensemble's members (all kept).
    """

    def __init__(
        self, workdir: str | Path, *, max_to_keep: int | None = 3, folder: str = "checkpoints"
    ):
        self.directory = Path(workdir).resolve() / folder
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, oldest first."""
        self._manager.reload()  # another process (a killed run) may have written some
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, preprocess: dict[str, np.ndarray], meta: dict) -> None:
        """Writes one checkpoint (asynchronously; `wait()` blocks until it is on disk)."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                preprocess=ocp.args.StandardSave(preprocess or {"empty": np.zeros(())}),
                meta=ocp.args.JsonSave({**meta, "step": int(step)}),
            ),
            force=True,
        )

    def restore_latest(
        self, make_abstract_state: Callable[[dict[str, np.ndarray], dict], Any]
    ) -> tuple[Any, dict[str, np.ndarray], dict] | None:
        """The newest readable checkpoint as (state, preprocess arrays, meta); None if none exist.

        Restores in two phases because the state's shapes depend on the fitted preprocessing
        (PCA flattens images): first the preprocessing and metadata, then the state into
        `make_abstract_state(preprocess, meta)` (shapes, dtypes and shardings to restore into).
        """
        unreadable: list[int] = []
        for step in reversed(self.steps()):
            try:
                restored = self.restore(step, make_abstract_state)
            except Exception as err:  # noqa: BLE001 - any unreadable checkpoint: try an older one
                log.warning(
                    "checkpoint at step %d is unreadable (%s); trying an older one",
                    step,
                    f"{type(err).__name__}: {err}"[:300],
                )
                unreadable.append(step)
                continue
            for bad in unreadable:
                log.warning("moved the unreadable checkpoint %d to %s", bad, self._move_aside(bad))
            return restored
        if unreadable:
            # None fits: more likely a changed config than corruption, so touch nothing.
            raise NormlabError(
                f"none of the checkpoints {sorted(unreadable)} in {self.directory} can be restored "
                "into this config (a different model or optimizer?). Use a new --workdir, or "
                "move the old checkpoints away: nothing was overwritten."
            )
        return None

    def restore(
        self, step: int, make_abstract_state: Callable[[dict[str, np.ndarray], dict], Any]
    ) -> tuple[Any, dict[str, np.ndarray], dict]:
        """The checkpoint at `step` as (state, preprocess arrays, meta) (see `restore_latest`);
        orbax's error if it is missing or does not fit."""
        head = self._manager.restore(
            step,
            args=ocp.args.Composite(
                preprocess=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()
            ),
        )
        preprocess = {k: np.asarray(v) for k, v in head["preprocess"].items() if k != "empty"}
        meta = dict(head["meta"])
        body = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(make_abstract_state(preprocess, meta))
            ),
        )
        return body["state"], preprocess, meta

    def _move_aside(self, step: int) -> Path:
        """Moves an unreadable checkpoint out of the way (kept for inspection, never deleted),
        so the resumed run can write its own checkpoint at that step."""
        aside = self.directory.parent / "unreadable_checkpoints" / f"{step}_{int(time.time())}"
        if jax.process_index() == 0:
            aside.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(self.directory / str(step), aside)
        self._manager.reload()
        return aside

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding stand-ins of `tree`, for restoring into the same layout."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )
