"""The periodic work of a training loop, as small named hooks (levanter's / big_vision's style).

After every chunk of steps the loop makes a `Tick` and calls each hook in order; a hook decides
from the tick whether it is due (`tick.due(every)`: a multiple of `every`, or the run's last
step). Hooks that measure add to `tick.record`, which `WriteMetrics` then writes as one line of
metrics.jsonl, so a step's train, eval and diagnostic metrics stay together.

With `num_seeds` = K > 1 (`normlab.train.seeds`) a chunk's metrics are (K, steps) arrays and a
record's values are (K,) arrays, seed i's at index i, or scalars shared by every seed (the
program's `steps_per_s`); `WriteMetrics` writes seed i's record to workdir/seeds/<i>/. A seed
that diverges stops where its own run would (`normlab.train.seeds.mark_diverged`: no more
records, a diverged.json marker) while the others go on; the run stops when all have diverged.

    hooks = default_hooks(run, workdir, progress=True, is_main=True)
    tick = Tick(step, final=step == run.total_steps, stopping=False, metrics=chunk_metrics)
    for hook in hooks:
        hook(run, tick)
"""

from __future__ import annotations

import abc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from normlab.errors import NonFiniteLossError
from normlab.train.checkpoint import Checkpointer
from normlab.train.metrics import MetricWriter, Progress
from normlab.train.run import SNAPSHOTS, Run
from normlab.train.seeds import SEEDS, mark_diverged

log = logging.getLogger(__name__)


@dataclass
class Tick:
    """Where the loop stands after a chunk: its last step and that chunk's per-step metrics."""

    step: int
    final: bool  # the run's last step
    stopping: bool  # SIGINT / SIGTERM arrived: save and leave
    metrics: dict[str, np.ndarray]  # this chunk's metrics, one value per step (and seed)
    record: dict[str, float] = field(default_factory=dict)  # this step's metrics.jsonl line

    def due(self, every: int) -> bool:
        """A multiple of `every` (0 = never), or the run's last step."""
        return self.final or (every > 0 and self.step % every == 0)


class Hook(abc.ABC):
    """Base of the hooks: called after every chunk; `close()` when the loop ends (any way)."""

    @abc.abstractmethod
    def __call__(self, run: Run, tick: Tick) -> None:
        """Does the hook's work if `tick` says it is due."""

    def close(self) -> None:  # noqa: B027 - optional: most hooks hold nothing
        """Flushes what the hook holds (files, asynchronous saves)."""


class LogTrainMetrics(Hook):
    """Means of the step metrics since the last log line, the lr, and the throughput; with a
    streamed input also `input_wait_s`, the seconds the loop waited for it since the last line
    (a warning when that is over half the time: the input is the bottleneck). With several
    seeds, each seed's means and lr; `examples_per_s` counts every seed's examples.

    `grad_norm`, `update_norm` and `param_norm` are computed on the last step of each chunk
    only (`normlab.train.step._scan_steps`: they cost ~19% of a small model's step), so their
    logged means are means over the chunks' last steps."""

    def __init__(self, every: int, batch_size: int):
        self.every, self.batch_size = every, batch_size
        self._pending: list[dict[str, np.ndarray]] = []
        self._since = time.perf_counter()
        self._waited = 0.0

    def __call__(self, run: Run, tick: Tick) -> None:
        self._pending.append(tick.metrics)
        if not tick.due(self.every):
            return
        merged = {
            name: np.concatenate([np.atleast_1d(m[name]) for m in self._pending], axis=-1)
            for name in self._pending[0]
        }
        tick.record.update({name: _value(np.mean(v, axis=-1)) for name, v in merged.items()})
        tick.record["lr"] = _value(merged["lr"][..., -1])
        now = time.perf_counter()
        tick.record["steps_per_s"] = merged["lr"].shape[-1] / max(now - self._since, 1e-9)
        tick.record["examples_per_s"] = tick.record["steps_per_s"] * self.batch_size
        waited = getattr(run.data, "wait_seconds", None)
        if waited is not None:
            tick.record["input_wait_s"] = waited - self._waited
            if tick.record["input_wait_s"] > 0.5 * (now - self._since):
                log.warning("the input pipeline is the bottleneck: %.1f of the last %.1f s were "
                            "spent waiting for data (raise data.threads?)",
                            tick.record["input_wait_s"], now - self._since)
            self._waited = waited
        self._since = now
        self._pending.clear()


def _value(x: np.ndarray) -> float | np.ndarray:
    """A record value: a float (one seed) or the (K,) per-seed array."""
    return float(x) if np.ndim(x) == 0 else x


class Evaluate(Hook):
    """`<prefix>_loss` / `<prefix>_accuracy` on every eval split of the config."""

    def __init__(self, every: int):
        self.every = every

    def __call__(self, run: Run, tick: Tick) -> None:
        if tick.due(self.every):
            tick.record.update(run.evaluate())


class Diagnose(Hook):
    """Per-layer pre-activation statistics every `every` steps (not forced at the end)."""

    def __init__(self, every: int):
        self.every = every

    def __call__(self, run: Run, tick: Tick) -> None:
        if self.every and tick.step % self.every == 0:
            tick.record.update(run.diagnostics())


class WriteMetrics(Hook):
    """Writes the tick's record (if any) to metrics.jsonl and TensorBoard: to the one writer,
    or seed i's values to the i-th writer of a K-seed run."""

    def __init__(self, writers: list[MetricWriter]):
        self.writers = writers

    def __call__(self, run: Run, tick: Tick) -> None:
        if not tick.record:
            return
        if len(self.writers) == 1:
            self.writers[0].write(tick.step, tick.record)
            return
        for i, writer in enumerate(self.writers):
            if i in run.diverged:  # its own run stopped before this record
                continue
            writer.write(tick.step, {
                name: value[i] if np.ndim(value) else value for name, value in tick.record.items()
            })

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def _finite(params, batch_stats) -> jax.Array:
    leaves = jax.tree.leaves((params, batch_stats))
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


_all_finite = jax.jit(_finite)
_each_seed_finite = jax.jit(jax.vmap(_finite))  # (K,) of a stacked state


def _going_on(run: Run, why: dict[int, str], last_good_step: int) -> bool:
    """With several seeds of which only some (`why`'s, not yet diverged) went non-finite: marks
    them diverged and says the run goes on; False when none would be left to go on."""
    alive = [i for i in range(run.num_seeds) if i not in run.diverged]
    if len(why) == len(alive):
        return False
    for i, message in why.items():
        mark_diverged(run, i, last_good_step, message)
    return True


def check_saveable(run: Run, step: int, checkpointer: Checkpointer) -> None:
    """NonFiniteLossError unless the state about to be saved is finite: the loss of a step is
    that of the parameters *before* its update, so an update can diverge while every loss
    the loop saw was finite; a checkpoint called "last good" must really be good."""
    state = run.canonical()
    why = f"the parameters or statistics became non-finite by step {step} (the losses were " \
          "still finite)"
    if run.num_seeds == 1:
        if not bool(_all_finite(state.params, state.batch_stats)):
            raise NonFiniteLossError(f"{why}; stopped without saving. {_last_good(checkpointer)}")
        return
    finite = np.asarray(_each_seed_finite(state.params, state.batch_stats))
    bad = [i for i in np.flatnonzero(~finite).tolist() if i not in run.diverged]
    if bad and not _going_on(run, dict.fromkeys(bad, why), step):
        raise NonFiniteLossError(f"{why} in seed(s) {bad} of {run.num_seeds}, the last ones "
                                 f"training; stopped without saving. {_last_good(checkpointer)}")


def _last_good(checkpointer: Checkpointer) -> str:
    checkpointer.wait()
    steps = checkpointer.steps()
    if not steps:
        return "No good checkpoint was saved."
    return f"The last good checkpoint (step {steps[-1]}) is kept in {checkpointer.directory}."


def raise_if_diverged(run: Run, first_step: int, metrics: dict[str, np.ndarray]) -> None:
    """NonFiniteLossError naming the first step of the chunk whose loss is not finite. With
    several seeds, those that diverge while others train on are marked diverged
    (`seeds.mark_diverged`) and the run goes on; the error names the last ones to diverge.

    The loss of step s + 1 is that of the state after step s: a non-finite loss in the chunk's
    first step condemns the state saved at its start, if it was saved. That checkpoint is moved
    to `workdir/diverged_checkpoints/` so that the one the message names, and a rerun resumes
    from, is the newest state whose loss was seen finite.
    """
    loss_SK = np.atleast_2d(metrics["train_loss"])  # (seeds, steps)
    finite_SK = np.isfinite(loss_SK)
    alive = [i for i in range(len(loss_SK)) if i not in run.diverged]
    newly = [i for i in alive if not finite_SK[i].all()]
    if not newly:
        return
    first_bad = {i: int(np.argmin(finite_SK[i])) for i in newly}
    why = {i: f"non-finite training loss ({loss_SK[i, b]}) at step {first_step + b + 1}"
           for i, b in first_bad.items()}
    if _going_on(run, why, first_step):
        return
    bad = min(first_bad.values())
    diverged = [i for i in newly if first_bad[i] == bad]
    loss = loss_SK[diverged[0], bad]
    which = f" in seed(s) {diverged} of {run.num_seeds}" if run.num_seeds > 1 else ""
    where = ""
    if run.checkpointer is not None:
        run.checkpointer.wait()
        if bad == 0 and first_step in run.checkpointer.steps():
            moved = run.checkpointer.move_aside(first_step, "diverged_checkpoints")
            where = f"The checkpoint at step {first_step} diverges: moved to {moved}. "
        where += _last_good(run.checkpointer)
    raise NonFiniteLossError(
        f"non-finite training loss ({loss}) at step {first_step + bad + 1}{which}; stopped. "
        f"{where}"
    )


class SaveSnapshots(Hook):
    """With the snapshot schedule: each cycle's final state under workdir/snapshots/<step>."""

    def __init__(self, workdir: Path):
        self.snapshots = Checkpointer(workdir, max_to_keep=None, folder=SNAPSHOTS)

    def __call__(self, run: Run, tick: Tick) -> None:
        if tick.step in run.snapshots_at and tick.step not in self.snapshots.steps():
            check_saveable(run, tick.step, self.snapshots)
            run.save(tick.step, self.snapshots)

    def close(self) -> None:
        self.snapshots.close()


class SaveCheckpoints(Hook):
    """Every `every` steps, at the end, and when stopping (unless this step is saved)."""

    def __init__(self, every: int, checkpointer: Checkpointer):
        self.every, self.checkpointer = every, checkpointer
        steps = checkpointer.steps()
        self.last_saved = steps[-1] if steps else None

    def __call__(self, run: Run, tick: Tick) -> None:
        if tick.due(self.every) or (tick.stopping and self.last_saved != tick.step):
            check_saveable(run, tick.step, self.checkpointer)
            run.save(tick.step, self.checkpointer)
            self.last_saved = tick.step

    def close(self) -> None:
        self.checkpointer.close()


class ShowProgress(Hook):
    """The progress line on stderr: step, throughput, ETA and the last loss."""

    def __init__(self, run: Run, enabled: bool):
        self.bar = Progress(run.total_steps, run.start_step, run.config.batch_size, enabled)

    def __call__(self, run: Run, tick: Tick) -> None:
        last = tick.metrics["train_loss"][..., -1]
        finite = last[np.isfinite(last)]  # several seeds: the mean of those still training
        loss = float(np.mean(finite)) if finite.size else float("nan")
        self.bar.update(tick.step, f"loss {loss:.4f}")

    def close(self) -> None:
        self.bar.close()


def default_hooks(run: Run, workdir: Path, *, progress: bool, is_main: bool) -> list[Hook]:
    """The hooks of `normlab train`, in the order they run after each chunk: measure (train
    metrics, eval, diagnostics), write the record, then save (snapshot, checkpoint)."""
    config = run.config
    folders = [workdir] if run.num_seeds == 1 else seed_folders(workdir, run.num_seeds)
    hooks: list[Hook] = [
        LogTrainMetrics(config.log_every_steps, config.batch_size * run.num_seeds),
        Evaluate(config.eval_every_steps),
        Diagnose(config.diag_every_steps),
        WriteMetrics([
            MetricWriter(folder, enabled=is_main, resume_step=run.start_step + 1)
            for folder in folders
        ]),
    ]
    if run.snapshots_at:
        hooks.append(SaveSnapshots(workdir))
    hooks.append(SaveCheckpoints(config.checkpoint_every_steps, run.checkpointer))
    hooks.append(ShowProgress(run, progress and is_main))
    return hooks


def seed_folders(workdir: Path, num_seeds: int) -> list[Path]:
    """workdir/seeds/<i> for every seed of a K-seed run (created)."""
    folders = [workdir / SEEDS / str(i) for i in range(num_seeds)]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return folders
