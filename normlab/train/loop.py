"""`train(config, workdir)`: the whole training run, top to bottom.

The order matters and is the order of the sections below: validate (so a typo never costs a
compile), load data, restore or fit the preprocessing (its fitted shapes decide the model's input
shape), build the model and optimizer, restore or initialize the state (a run without
checkpoints of its own and with `init_from.workdir` set starts from that run's backbone:
`normlab.train.init_from`), then loop. The loop runs chunks of `steps_per_call` steps per jitted
call on device-resident data, and between chunks logs, evaluates, writes diagnostics and
checkpoints, and, with the "snapshot" schedule, saves each cycle's final state under
workdir/snapshots/<step> (never deleted: the members of a snapshot ensemble).

Faults: a non-finite loss raises `NonFiniteLossError` without saving (the last good checkpoint
stays); SIGINT (Ctrl-C) finishes the current chunk, saves and returns; a killed run restarts from
its newest readable checkpoint and, because batches and randomness are functions of the step,
ends with the same parameters as an uninterrupted run.

Devices (`normlab.parallel.plan`): the config's mesh and parallel mode decide how the step runs
(data, tensor or pipeline parallelism under jit, or legacy pmap); checkpoints, evaluation and
diagnostics always see the canonical state layout, so a checkpoint restores on any mesh. With
several processes (`normlab.parallel.distributed`) every process runs this same function: each
reads only its own rows of every batch, all of them write and restore checkpoints together,
and process 0 alone writes metrics, progress and the summary.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from normlab.data.loader import EpochSampler
from normlab.errors import NonFiniteLossError
from normlab.parallel.mesh import replicated
from normlab.parallel.plan import ParallelPlan
from normlab.train import inputs
from normlab.train.build import build_model, build_tx, frozen_backbone
from normlab.train.checkpoint import Checkpointer
from normlab.train.diagnostics import collect_preacts, layer_diagnostics
from normlab.train.init_from import load_source, transfer_state
from normlab.train.metrics import MetricWriter, Progress
from normlab.train.optim import snapshot_steps
from normlab.train.run_info import run_info
from normlab.train.state import TrainState, init_state
from normlab.train.step import StepConfig, eval_step
from normlab.train.validate import resolve_total_steps, validate

log = logging.getLogger(__name__)


def make_evaluator(model):
    """`evaluate(state, x, y, batch_size) -> {"loss", "accuracy"}` over a whole split.

    One jitted scan over padded batches (the padding is masked out of the sums).
    """

    @jax.jit
    def scan(state, x, y, mask):
        def body(total, batch):
            out = eval_step(model, state, *batch)
            return jax.tree.map(jnp.add, total, out), None

        zeros = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
        return jax.lax.scan(body, jax.tree.map(jnp.float32, zeros), (x, y, mask))[0]

    def evaluate(state: TrainState, x: jax.Array, y: jax.Array, batch_size: int) -> dict:
        n = x.shape[0]
        batches = -(-n // batch_size)
        pad = batches * batch_size - n
        mask = jnp.concatenate([jnp.ones(n), jnp.zeros(pad)]).reshape(batches, batch_size)
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
        x = x.reshape(batches, batch_size, *x.shape[1:])
        y = jnp.pad(y, (0, pad)).reshape(batches, batch_size)
        sums = scan(state, x, y, mask)
        count = float(sums["count"])
        return {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct"]) / count}

    return evaluate


def make_diagnostics(model, activation: str):
    """`diagnostics(state, x) -> {"diag/<layer>/<metric>": value}` on a fixed batch, eval mode."""

    @jax.jit
    def diagnostics(state: TrainState, x: jax.Array) -> dict:
        _, variables = model.apply(state.variables(), x, train=False, mutable=["intermediates"])
        preacts = collect_preacts(variables["intermediates"])
        return layer_diagnostics(preacts, activation=activation)

    return diagnostics


class _StopRequest:
    """Turns the first SIGINT into a flag the loop checks between chunks (a second one kills)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        def handler(signum, frame):
            self.requested = True
            signal.signal(signal.SIGINT, self._previous)

        try:
            self._previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: leave SIGINT alone
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


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
    # ---------------------------------------------------------------- setup and validation
    validate(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    plan = ParallelPlan.from_config(config, devices)  # bad mesh or batch shapes fail here
    mesh = plan.mesh
    t_start = time.time()

    # ---------------------------------------------------------------- data
    train_split, eval_splits = inputs.load_splits(config)
    num_classes = inputs.num_classes(config)
    train_x = inputs.to_float(train_split.images, config.pad_to)
    total_steps = resolve_total_steps(config, len(train_x))
    snapshots_at = _snapshot_steps(config, total_steps)
    sampler = EpochSampler(len(train_x), config.batch_size, config.seed)

    # ---------------------------------------------------------------- model and optimizer
    # `model`: the canonical model (init, eval, diagnostics); `run_model`: what the step runs
    model, run_model = plan.adapt_model(build_model(config, num_classes))
    tx, lr_fn = build_tx(config, total_steps)
    rng = jax.random.PRNGKey(config.seed)

    # ---------------------------------------------------------------- state: restore or init
    checkpointer = Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
    snapshotter = (
        Checkpointer(workdir, max_to_keep=None, folder="snapshots") if snapshots_at else None
    )
    preprocessor = None

    def restore_target(pre_arrays, meta):
        nonlocal preprocessor
        preprocessor = inputs.join_state(pre_arrays, meta["preprocess"])
        return plan.abstract_state(model, tx, rng, np.asarray(preprocessor(train_x[:1])))

    restored = checkpointer.restore_latest(restore_target)
    if restored is not None:
        canonical, _, meta = restored
        start_step = int(meta["step"])
        state = plan.to_run(canonical, run_model)
        log.info("resumed from the checkpoint at step %d", start_step)
    else:
        preprocessor = inputs.fit_preprocessor(config, train_x)
        example = np.asarray(preprocessor(train_x[:1]))
        if config.init_from.workdir:
            source = load_source(config.init_from)
            fresh = jax.jit(lambda: init_state(model, tx, rng, example))()
            fresh = transfer_state(fresh, source, config.init_from.head, tx)
            state = plan.place(fresh, model, run_model, example)
        else:
            state = plan.init_state(model, run_model, tx, rng, example)
        start_step = 0
    pre_arrays, pre_rest = inputs.split_state(preprocessor)

    # One process: the data set on the devices; each step gathers its batch there and shards
    # it over `data`. Several processes: each sends only its own rows of every batch.
    per_process = jax.process_count() > 1
    put = functools.partial(jax.device_put, device=replicated(mesh))
    train_xh = inputs.transform(preprocessor, train_x)
    train_yh = train_split.labels.astype(np.int32)
    if not per_process:
        train_xd, train_yd = plan.put_train(train_xh), plan.put_train(train_yh)
    evals = {
        prefix: (
            put(inputs.transform(preprocessor, inputs.to_float(s.images, config.pad_to))),
            put(s.labels.astype(np.int32)),
        )
        for prefix, s in eval_splits.items()
    }
    diag_x = put(train_xh[: config.diag_batch_size])

    step_cfg = StepConfig(
        model=model,
        tx=tx,
        lr_fn=lr_fn,
        num_classes=num_classes,
        label_smoothing=config.label_smoothing,
        l2=config.weight_decay.l2,
        l1=config.weight_decay.l1,
        proxy_decay=config.weight_decay.proxy,
        augment={name: dict(kw) for name, kw in config.augment.items()},
        train_mode=not frozen_backbone(config),
    )
    chunk_fn = plan.chunk_fn(step_cfg, run_model, state, from_batches=per_process)

    evaluate = make_evaluator(model)
    diagnostics = make_diagnostics(model, config.model.activation)

    # ---------------------------------------------------------------- loop
    writer = MetricWriter(workdir, enabled=is_main, resume_step=start_step + 1)
    bar = Progress(total_steps, start_step, config.batch_size, enabled=progress and is_main)
    pending: list[dict[str, np.ndarray]] = []
    history: list[dict[str, float]] = []
    last_saved = checkpointer.steps()[-1] if checkpointer.steps() else None
    step = start_step
    t_log = time.perf_counter()

    def due(every: int) -> bool:
        return bool(every) and step % every == 0

    def meta() -> dict[str, Any]:
        return {
            "preprocess": pre_rest,
            "data_position": step,
            "input_shape": list(train_xh.shape[1:]),
            "config": config.to_dict(),
        }

    def save(canonical: TrainState) -> None:
        nonlocal last_saved
        checkpointer.save(step, canonical, pre_arrays, meta())
        last_saved = step

    with _StopRequest() as stop:
        while step < total_steps:
            k = min(config.steps_per_call, total_steps - step)
            idx = np.stack([sampler.batch_indices(s) for s in range(step, step + k)])
            if per_process:
                batches = (plan.host_batches(train_xh, idx), plan.host_batches(train_yh, idx))
                state, metrics = chunk_fn(state, *batches)
            else:
                state, metrics = chunk_fn(state, train_xd, train_yd, jnp.asarray(idx, jnp.int32))
            metrics = jax.device_get(metrics)
            losses = metrics["train_loss"]
            if not np.all(np.isfinite(losses)):
                bad = step + int(np.argmin(np.isfinite(losses))) + 1
                checkpointer.wait()
                if snapshotter is not None:
                    snapshotter.wait()
                raise NonFiniteLossError(
                    f"non-finite training loss ({losses[np.argmin(np.isfinite(losses))]}) at step "
                    f"{bad}; stopped. The last good checkpoint "
                    + (
                        f"(step {last_saved}) is kept in {checkpointer.directory}"
                        if last_saved is not None
                        else "does not exist (none was saved yet)"
                    )
                )
            pending.append(metrics)
            step += k
            stopping = stop.requested  # read once: SIGINT may arrive at any moment
            wanted = (config.eval_every_steps, config.diag_every_steps,
                      config.checkpoint_every_steps)
            snapshot = step in snapshots_at
            if step == total_steps or stopping or snapshot or any(due(e) for e in wanted):
                canonical = plan.to_canonical(state, run_model)  # the model's own layout
            bar.update(step, f"loss {float(losses[-1]):.4f}")

            record: dict[str, float] = {}
            if due(config.log_every_steps) or step == total_steps:
                merged = {
                    n: np.concatenate([np.atleast_1d(m[n]) for m in pending]) for n in pending[0]
                }
                record.update({n: float(np.mean(v)) for n, v in merged.items()})
                record["lr"] = float(merged["lr"][-1])
                now = time.perf_counter()
                record["steps_per_s"] = len(merged["lr"]) / max(now - t_log, 1e-9)
                record["examples_per_s"] = record["steps_per_s"] * config.batch_size
                t_log = now
                pending.clear()
            if due(config.eval_every_steps) or step == total_steps:
                for prefix, (x, y) in evals.items():
                    for name, value in evaluate(canonical, x, y, config.eval_batch_size).items():
                        record[f"{prefix}_{name}"] = value
            if due(config.diag_every_steps):
                diag = jax.device_get(diagnostics(canonical, diag_x))
                record.update({k: float(v) for k, v in diag.items()})
            if record:
                writer.write(step, record)
                history.append({"step": step, **record})
            if snapshot and step not in snapshotter.steps():  # a resumed run may have it
                snapshotter.save(step, canonical, pre_arrays, meta())
            if due(config.checkpoint_every_steps) or step == total_steps:
                save(canonical)
            if stopping:
                if last_saved != step:  # a periodic save may have just written this step
                    save(canonical)
                log.warning("interrupted: saved a checkpoint at step %d; rerun to resume", step)
                break

    bar.close()
    checkpointer.close()
    if snapshotter is not None:
        snapshotter.close()
    writer.close()
    summary = _summary(history, config, total_steps, step, time.time() - t_start)
    if is_main:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _snapshot_steps(config: ConfigDict, total_steps: int) -> set[int]:
    """Steps to save snapshot-ensemble members at; each must end a chunk of steps."""
    steps = snapshot_steps(config.schedule.to_dict(), total_steps)
    misaligned = [s for s in steps if s % config.steps_per_call and s != total_steps]
    if misaligned:
        raise ValueError(
            f"schedule.num_snapshots={len(steps)} puts snapshots at steps {steps}, but "
            f"{misaligned} are not multiples of steps_per_call={config.steps_per_call}; choose "
            "total_steps, num_snapshots and steps_per_call so that every cycle ends a chunk"
        )
    return set(steps)


def _summary(history, config, total_steps, step, seconds) -> dict[str, Any]:
    """Final and best values of every eval metric, with the run's provenance."""
    final: dict[str, float] = {}
    best: dict[str, float] = {}
    for record in history:
        for name, value in record.items():
            if name == "step" or value is None:
                continue
            final[name] = value
            if name.endswith("accuracy"):
                best[name] = max(best.get(name, -np.inf), value)
    return {
        "finished": step >= total_steps,
        "step": step,
        "total_steps": total_steps,
        "final": final,
        "best": best,
        "wall_seconds_this_session": seconds,
        **run_info(),
    }
