"""Orbax checkpoints of the train state, the fitted preprocessing and the data position.

A checkpoint is written to a temporary directory and renamed when complete (orbax's atomic
commit), so a run killed mid-save leaves the previous checkpoints intact. Every saved array has
a checksum in the checkpoint's metadata (`normlab.train.checksum`), checked after restoring, so
a checkpoint whose bytes changed on disk is caught, not trained on. Checkpoints written before
checksums existed restore without that check.

Restoring walks the checkpoints from newest to oldest and falls back, with a warning, past any
it cannot read (corrupt files, a checksum mismatch): those are moved to
`workdir/unreadable_checkpoints/<step>_<unix time>` for inspection, of which the newest
`KEEP_UNREADABLE` are kept. If none can be restored, nothing is moved and the error says
whether they do not fit the config (other leaves, shapes or dtypes) or are corrupt.
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
from normlab.train import checksum

log = logging.getLogger(__name__)

KEEP_UNREADABLE = 3  # moved-aside checkpoints kept for inspection; older ones are deleted


class CheckpointMismatchError(ValueError):
    """The checkpoint is intact but does not fit this config (other leaves, shapes or dtypes)."""


class CheckpointCorruptError(ValueError):
    """The checkpoint's files cannot be read, or an array's checksum does not match."""


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
        """Writes one checkpoint (asynchronously; `wait()` blocks until it is on disk).

        The checksums are taken here, from the values handed to orbax, before the write starts.
        """
        preprocess = preprocess or {"empty": np.zeros(())}
        sums = {
            "state": checksum.tree_digests(state),
            "preprocess": checksum.host_digests(preprocess),
        }
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                preprocess=ocp.args.StandardSave(preprocess),
                meta=ocp.args.JsonSave({**meta, "step": int(step), "checksums": sums}),
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
        failed: dict[int, ValueError] = {}
        for step in reversed(self.steps()):
            try:
                restored = self.restore(step, make_abstract_state)
            except Exception as err:  # noqa: BLE001 - any unreadable checkpoint: try an older one
                failed[step] = _classify(err)
                log.warning(
                    "checkpoint at step %d is unreadable (%s); trying an older one",
                    step,
                    _line(failed[step]),
                )
                continue
            for bad in failed:  # out of the way of this run's own saves at those steps
                log.warning("moved the unreadable checkpoint %d to %s", bad, self.move_aside(bad))
            return restored
        if failed:
            # Nothing is moved: with no checkpoint left to fall back on, the user decides.
            raise NormlabError(_none_restorable(self.directory, failed))
        return None

    def restore(
        self, step: int, make_abstract_state: Callable[[dict[str, np.ndarray], dict], Any]
    ) -> tuple[Any, dict[str, np.ndarray], dict]:
        """The checkpoint at `step` as (state, preprocess arrays, meta) (see `restore_latest`):
        orbax's error if it is missing; `CheckpointMismatchError` if it does not fit the target,
        `CheckpointCorruptError` if an array's checksum does not match."""
        head = self._manager.restore(
            step,
            args=ocp.args.Composite(
                preprocess=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()
            ),
        )
        meta = dict(head["meta"])
        sums = meta.pop("checksums", None)  # None: saved before checksums existed
        raw_preprocess = {k: np.asarray(v) for k, v in head["preprocess"].items()}
        if sums is not None:
            _verify(step, "preprocess", sums["preprocess"], checksum.host_digests(raw_preprocess))
        preprocess = {k: v for k, v in raw_preprocess.items() if k != "empty"}
        target = make_abstract_state(preprocess, meta)
        if sums is not None:
            why = checksum.layout_mismatch(sums["state"], checksum.tree_layout(target))
            if why is not None:
                raise CheckpointMismatchError(f"checkpoint {step} does not fit this config: {why}")
        try:
            body = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
            )
        except Exception as err:
            if sums is None:
                raise  # no saved layout to tell a changed config from corruption: `_classify`
            raise CheckpointCorruptError(
                f"checkpoint {step} has the right layout but its files cannot be read "
                f"({type(err).__name__}: {err})"
            ) from err
        if sums is not None:
            _verify(step, "state", sums["state"], checksum.tree_digests(body["state"]))
        return body["state"], preprocess, meta

    def move_aside(self, step: int, folder_name: str = "unreadable_checkpoints") -> Path:
        """Moves a checkpoint that must not be resumed from (unreadable, or diverged) out of the
        way, kept for inspection in `workdir/<folder_name>`, so the run can write its own
        checkpoint at that step; keeps the newest `KEEP_UNREADABLE` there."""
        folder = self.directory.parent / folder_name
        aside = folder / f"{step}_{int(time.time())}"
        if jax.process_index() == 0:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.move(self.directory / str(step), aside)
            # mtime is the move's time (the rename touches the parent, not the moved folder)
            # so order by the name's timestamp, then the step; ties keep the later step.
            kept = sorted(folder.iterdir(), key=_aside_order)
            for old in kept[:-KEEP_UNREADABLE]:
                shutil.rmtree(old, ignore_errors=True)
        self._manager.reload()
        return aside

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _aside_order(path: Path) -> tuple[int, int]:
    step, _, moved = path.name.partition("_")
    return (int(moved), int(step)) if step.isdigit() and moved.isdigit() else (-1, -1)


def _verify(step: int, item: str, saved: dict[str, dict], restored: dict[str, dict]) -> None:
    bad = checksum.mismatched(saved, restored)
    if bad:
        raise CheckpointCorruptError(
            f"checkpoint {step} fails its checksum: {item} {', '.join(bad[:3])}"
            + (f" and {len(bad) - 3} more arrays" if len(bad) > 3 else "")
            + " changed on disk since it was saved"
        )


# orbax's words when a checkpoint written before checksums existed does not fit the target
_MISMATCH_WORDS = ("Structure mismatch", "not compatible with the stored shape", "tree structure")


def _classify(err: Exception) -> ValueError:
    """`err` as a CheckpointMismatchError or a CheckpointCorruptError."""
    if isinstance(err, CheckpointMismatchError | CheckpointCorruptError):
        return err
    text = f"{type(err).__name__}: {err}"
    if any(words in text for words in _MISMATCH_WORDS):
        return CheckpointMismatchError(text)
    return CheckpointCorruptError(text)


def _line(err: Exception, limit: int = 300) -> str:
    """`err` on one line (orbax's messages span several), cut to `limit` characters."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _none_restorable(directory: Path, failed: dict[int, ValueError]) -> str:
    """The one-line error when no checkpoint can be restored, saying why from what was seen."""
    mismatch = sorted(s for s, e in failed.items() if isinstance(e, CheckpointMismatchError))
    corrupt = sorted(s for s, e in failed.items() if isinstance(e, CheckpointCorruptError))
    parts = []
    if mismatch:
        parts.append(
            f"{mismatch} do not fit this config, so a different model or optimizer wrote them "
            f"(its config is in {directory.parent / 'config.json'}; {_line(failed[mismatch[-1]])})"
        )
    if corrupt:
        parts.append(f"{corrupt} are corrupt or unreadable ({_line(failed[corrupt[-1]])})")
    advice = (
        "rerun with the config that wrote them, or use a new --workdir"
        if not corrupt
        else f"move {directory} away (or use a new --workdir) to start over"
    )
    return (
        f"none of the checkpoints {sorted(failed)} in {directory} can be restored: "
        f"{'; '.join(parts)}. To go on, {advice}; nothing was overwritten or moved."
    )


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding stand-ins of `tree`, for restoring into the same layout."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )
