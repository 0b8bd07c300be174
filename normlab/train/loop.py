"""`train(config, workdir)`: one training run, top to bottom.

    lock the workdir → build_run (validate, data, model, restore or init: `normlab.train.run`)
    → write config.json → loop over chunks of `steps_per_call` steps:
          run the chunk → stop on a non-finite loss → hooks (log, eval, diagnostics,
          metrics.jsonl, snapshot, checkpoint, progress: `normlab.train.hooks`)
    → summary.json, built from the whole metrics history (`normlab.train.summary`)

With `num_seeds` = K > 1 the same loop steps K seeds at once (`normlab.train.seeds`): seed i's
config.json (its single-seed equivalent), metrics.jsonl and summary.json go to
workdir/seeds/<i>/, and workdir/summary.json summarizes them across seeds.

Nothing is lost: a non-finite loss or state raises `NonFiniteLossError` without saving (the last
good checkpoint stays, and the message names it); SIGINT or SIGTERM finishes the chunk, saves
and returns (`normlab.train.signals`); a killed run restarts from its newest readable checkpoint
and, because batches and randomness are functions of the step, ends with the same parameters as
an uninterrupted run; a second run on the same workdir fails at once (`WorkdirLock`); a run
whose config does not fit the checkpoints in its workdir is refused before it writes anything.

With several processes (`normlab.parallel.distributed`) every process runs this function: each
reads only its own rows of every batch, all of them write and restore checkpoints together, and
process 0 alone locks the workdir and writes config.json, metrics, progress and the summary.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
from ml_collections import ConfigDict

from normlab.train.hooks import Tick, default_hooks, raise_if_diverged, seed_folders
from normlab.train.run import build_run
from normlab.train.seeds import clear_stale_markers, seed_config, seed_values
from normlab.train.signals import StopSignals
from normlab.train.summary import across_seeds, summarize
from normlab.train.validate import validate
from normlab.train.workdir import WorkdirLock, prepare_workdir

log = logging.getLogger(__name__)


def train(
    config: ConfigDict,
    workdir: str | Path,
    *,
    progress: bool = True,
    devices: Sequence[jax.Device] | None = None,
) -> dict[str, Any]:
    """Trains `config` in `workdir` (resuming if it holds checkpoints); returns the summary.

    `devices`: the devices of the mesh (default: every visible device).
    """
    t_start = time.time()
    validate(config)  # before the workdir is created: a typo leaves nothing behind
    workdir = prepare_workdir(workdir)
    is_main = jax.process_index() == 0
    with WorkdirLock(workdir, enabled=is_main), StopSignals() as stop:
        run = build_run(config, devices, workdir)  # refuses a config its checkpoints don't fit
        if is_main:
            (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
            _prepare_seed_folders(config, workdir, run.diverged)
        if run.restored_meta is not None:
            log.info("resumed from the checkpoint at step %d", run.start_step)
        hooks = default_hooks(run, workdir, progress=progress, is_main=is_main)
        step = run.start_step
        try:
            while step < run.total_steps:
                k = min(config.steps_per_call, run.total_steps - step)
                metrics = run.train_chunk(step, k)
                raise_if_diverged(run, step, metrics)
                step += k
                tick = Tick(step, step == run.total_steps, stop.requested, metrics)
                for hook in hooks:
                    hook(run, tick)
                if tick.stopping:
                    log.warning("interrupted (%s): saved a checkpoint at step %d; rerun to "
                                "resume", stop.received, step)
                    break
        finally:
            for hook in hooks:
                hook.close()
            run.close()
        summary = _summarize(config, workdir, step, run.total_steps, time.time() - t_start,
                             is_main, run.diverged)
    return summary


def _summarize(config: ConfigDict, workdir: Path, step: int, total_steps: int, seconds: float,
               is_main: bool, diverged: dict[int, dict]) -> dict[str, Any]:
    """Writes summary.json (and each seed's of a K-seed run) and returns the run's."""
    kwargs = {"step": step, "total_steps": total_steps, "seconds": seconds}
    if config.num_seeds == 1:
        summary = summarize(workdir, **kwargs)
    else:
        folders = seed_folders(workdir, config.num_seeds)
        per_seed = [summarize(folder, **kwargs) for folder in folders]
        for i, seed_summary in enumerate(per_seed):
            if i in diverged:  # it stopped at its divergence, as its own run would have
                seed_summary.update(finished=False, step=diverged[i]["last_good_step"],
                                    diverged=diverged[i]["message"])
        if is_main:
            for folder, seed_summary in zip(folders, per_seed, strict=True):
                (folder / "summary.json").write_text(json.dumps(seed_summary, indent=2))
        summary = across_seeds(per_seed, seed_values(config))
    if is_main:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _prepare_seed_folders(config: ConfigDict, workdir: Path, diverged: dict[int, dict]) -> None:
    """seeds/<i>/config.json of a K-seed run (the single-seed config seed i equals); no
    diverged marker of a seed that has not diverged from where this session starts."""
    if config.num_seeds > 1:
        for i, folder in enumerate(seed_folders(workdir, config.num_seeds)):
            (folder / "config.json").write_text(json.dumps(seed_config(config, i).to_dict(),
                                                           indent=2))
        clear_stale_markers(workdir, config.num_seeds, diverged)
