"""`build_run(config, devices=None, workdir=None) -> Run`: every piece of one run, built once.

`train()`, `normlab eval`, `normlab ensemble`, transfer (`init_from`), experiment E11 and the
parallel tests all get their model, devices, data, state and compiled step from here. The order
of assembly is the order of the sections of `build_run`, and it matters:

  1. validate the config (a typo never costs a load or a compile), then the devices (a bad mesh
     or a batch that does not split fails next, still before any data is read);
  2. load the data; restore the fitted preprocessing from the newest checkpoint or fit it on
     the training split (its fitted shapes decide the model's input shape);
  3. build the model (canonical, and the one the step runs: e.g. pipelined) and the optimizer;
  4. restore the state from `workdir`'s newest readable checkpoint, or initialize it (from
     another run's backbone when `init_from.workdir` is set), directly into its shardings;
  5. compile nothing yet: the chunk, evaluator and diagnostics are jitted functions that
     compile on first use, so `normlab eval` never pays for a train step.

`build_run` only reads the workdir (and moves unreadable checkpoints aside): writing metrics,
checkpoints and the summary is the loop's job (`normlab.train.loop`).

    run = build_run(config, workdir="runs/bn")
    metrics = run.train_chunk(run.start_step, 10)     # 10 steps; run.state advances
    run.evaluate()                                     # {"eval_loss": ..., "eval_accuracy": ...}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from ml_collections import ConfigDict

from normlab.data.preprocess import Preprocessor, make_preprocessor
from normlab.errors import NormlabError
from normlab.parallel.plan import ParallelPlan
from normlab.train import inputs, seeds
from normlab.train.build import build_model, build_tx, frozen_backbone
from normlab.train.checkpoint import Checkpointer
from normlab.train.evaluator import make_batch_evaluator, make_diagnostics, make_evaluator
from normlab.train.inputs import DeviceData
from normlab.train.optim import Schedule, snapshot_steps
from normlab.train.state import TrainState, init_state
from normlab.train.step import StepConfig, chunk_body
from normlab.train.stream_input import StreamData, choose_pipeline
from normlab.train.validate import resolve_total_steps, validate

log = logging.getLogger(__name__)

CHECKPOINTS, SNAPSHOTS = "checkpoints", "snapshots"


@dataclass
class Run:
    """One assembled run: what a loop steps, evaluates and saves (see the module docstring)."""

    config: ConfigDict
    plan: ParallelPlan
    model: nn.Module  # the canonical model: init, evaluation, diagnostics, checkpoints
    run_model: Any  # what the step runs (the canonical model, or its pipelined form)
    tx: optax.GradientTransformation
    lr_fn: Schedule
    num_classes: int
    data: DeviceData | StreamData
    preprocessor: Preprocessor
    state: TrainState  # in the run layout (`plan.to_run`)
    start_step: int
    total_steps: int
    chunk: Any  # jitted `(state, *data.chunk_args(step, k)) -> (state, metrics per step)`
    snapshots_at: frozenset[int]
    checkpointer: Checkpointer | None = None
    restored_meta: dict[str, Any] | None = None  # the checkpoint's metadata, when restored
    seed_batches: seeds.SeedBatches | None = None  # num_seeds > 1: each seed's batches
    workdir: Path | None = None
    # num_seeds > 1: seed index -> why it diverged (`seeds.mark_diverged`); the others go on
    diverged: dict[int, dict] = field(default_factory=dict)
    _evaluate: Any = None
    _evaluate_batches: Any = None
    _diagnostics: Any = None
    _canonical: tuple[int, TrainState] | None = field(default=None, repr=False)

    @property
    def num_seeds(self) -> int:
        """K: with K > 1 the state has a leading seed axis and every metric and measurement is
        a (K, ...) array, seed i's at index i (`normlab.train.seeds`)."""
        return self.config.num_seeds

    # ------------------------------------------------------------------ stepping
    def train_chunk(self, step: int, k: int) -> dict[str, np.ndarray]:
        """Runs steps [step, step + k) (one jitted call); returns each step's metrics (host):
        (k,) arrays, or (num_seeds, k)."""
        batches = self.seed_batches or self.data
        self.state, metrics = self.chunk(self.state, *batches.chunk_args(step, k))
        return jax.device_get(metrics)

    def canonical(self) -> TrainState:
        """The current state in the model's own layout (computed once per state)."""
        if self._canonical is None or self._canonical[0] != id(self.state):
            self._canonical = (id(self.state), self.plan.to_canonical(self.state, self.run_model))
        return self._canonical[1]

    # ------------------------------------------------------------------ measuring
    def evaluate(self, splits: dict[str, str] | None = None) -> dict[str, float]:
        """`{"<prefix>_loss", "<prefix>_accuracy", ...}` of the current state on `splits`
        (metric prefix → split string; default: the config's `evals`)."""
        splits = dict(self.config.evals) if splits is None else splits
        record: dict[str, float] = {}
        for prefix, split in splits.items():
            if isinstance(self.data, StreamData):
                metrics = self._evaluate_batches(self.canonical(), self.data.eval_batches(split))
            else:
                (x, y), = self.data.eval_arrays({prefix: split}).values()
                batch_size = self.config.eval_batch_size
                metrics = self._measure(partial(self._evaluate, x=x, y=y, batch_size=batch_size))
            record.update({f"{prefix}_{name}": value for name, value in metrics.items()})
        return record

    def diagnostics(self) -> dict[str, float]:
        """Per-layer statistics of pre-activations on a fixed training batch (eval mode)."""

        def measure(state: TrainState) -> dict[str, float]:
            diag = jax.device_get(self._diagnostics(state, self.data.diag_batch()))
            return {name: float(value) for name, value in diag.items()}

        return self._measure(measure)

    def _measure(self, measure: Any) -> dict[str, Any]:
        """`measure(state) -> {name: float}` of the current state, or of each seed's (K,)."""
        if self.num_seeds == 1:
            return measure(self.canonical())
        return seeds.each_seed(measure, self.canonical(), self.num_seeds)

    def close(self) -> None:
        """Stops the input's reader threads (a streamed run); idempotent."""
        self.data.close()

    # ------------------------------------------------------------------ saving
    def meta(self, step: int) -> dict[str, Any]:
        """What a checkpoint stores besides the state (the data position is the step)."""
        return {
            "preprocess": inputs.split_state(self.preprocessor)[1],
            "data_position": step,
            "input_shape": list(self.data.input_shape),
            "config": self.config.to_dict(),
        }

    def save(self, step: int, checkpointer: Checkpointer | None = None) -> None:
        """Writes the canonical state at `step` (asynchronously) to `checkpointer` (default:
        the run's own checkpoints)."""
        target = checkpointer or self.checkpointer
        if target is None:
            raise NormlabError("this run was built without a workdir: there is nowhere to save")
        target.save(step, self.canonical(), inputs.split_state(self.preprocessor)[0],
                    self.meta(step))


def build_run(
    config: ConfigDict,
    devices: Sequence[jax.Device] | None = None,
    workdir: str | Path | None = None,
    *,
    folder: str = CHECKPOINTS,
    step: int | None = None,
    must_restore: bool = False,
    initial: TrainState | None = None,
) -> Run:
    """Assembles `config` on `devices` (default: every visible device), restoring the newest
    readable checkpoint of `workdir/<folder>` (or the one at `step`) if there is one.

    `must_restore`: a run that is only read (eval, ensembles, a transfer source) raises
    ValueError when there is nothing to restore instead of initializing a fresh state.
    `initial`: a canonical state (e.g. host arrays) to start from instead of a fresh init —
    one initial state placed on several meshes (the parallel tests, E11).
    """
    # ---------------------------------------------------------------- config and devices
    validate(config)
    plan = ParallelPlan.from_config(config, devices)

    # ---------------------------------------------------------------- data
    # The device path holds the training images (uint8); a streamed run reads them per step and
    # loads them whole only to fit a preprocessing that needs fitting (fixed-size images only).
    num_classes = inputs.num_classes(config)
    reader = inputs.open_config_split(config, config.train_split)
    pipeline = choose_pipeline(config, reader.image_shape, len(reader))
    _check_stream_preprocessing(config, pipeline, reader)
    seeds.check_assembly(config, pipeline)
    total_steps = resolve_total_steps(config, len(reader))
    snapshots_at = _snapshot_steps(config, total_steps)
    train_images = train_labels = None
    if pipeline == "device" or config.preprocess.name != "none":
        train_split = inputs.load_split(config, config.train_split, "train")
        train_images, train_labels = train_split.images, train_split.labels

    def make_data(preprocessor: Preprocessor) -> DeviceData | StreamData:
        if pipeline == "device":
            return DeviceData(config, plan, preprocessor, train_images, train_labels)
        return StreamData(config, plan, preprocessor)

    # ---------------------------------------------------------------- model and optimizer
    model, run_model = plan.adapt_model(build_model(config, num_classes))
    tx, lr_fn = build_tx(config, total_steps)
    rng = jax.random.PRNGKey(config.seed)

    def init_fn_for(example_x: np.ndarray):
        if config.num_seeds > 1:
            return seeds.stacked_init(model, tx, seeds.seed_values(config), example_x)
        return lambda: init_state(model, tx, rng, example_x)

    def abstract_for(example_x: np.ndarray) -> Any:
        if config.num_seeds > 1:  # the seed axis replicated (validate: jit over mesh.data only)
            return seeds.replicated_abstract(init_fn_for(example_x), plan.mesh)
        return plan.abstract(init_fn_for(example_x), model, example_x)

    # ---------------------------------------------------------------- state: restore or init
    checkpointer = None
    restored = None
    found: dict[str, Preprocessor] = {}
    if workdir is not None:
        checkpointer = Checkpointer(workdir, max_to_keep=_keep(config, folder), folder=folder)

        def target(pre_arrays: dict[str, np.ndarray], meta: dict) -> Any:
            found["preprocessor"] = inputs.join_state(pre_arrays, meta["preprocess"])
            example = _example(meta, found["preprocessor"], train_images, config.pad_to)
            return abstract_for(example)

        if step is None:
            restored = checkpointer.restore_latest(target)
        elif step in checkpointer.steps():
            restored = checkpointer.restore(step, target)
        else:
            raise ValueError(
                f"{checkpointer.directory} holds no complete state at step {step}; saved steps: "
                f"{checkpointer.steps()}"
            )
    if restored is not None:
        canonical, _, meta = restored
        preprocessor = found["preprocessor"]
        data = make_data(preprocessor)
        start_step = int(meta["step"])
        state = plan.to_run(canonical, run_model)
        log.debug("restored %s at step %d", checkpointer.directory, start_step)
    elif must_restore:
        raise ValueError(f"{workdir} has no readable checkpoint in {Path(workdir) / folder}")
    else:
        meta = None
        preprocessor = _fit_preprocessor(config, train_images, reader)
        data = make_data(preprocessor)
        example = data.example()
        start_step = 0
        if initial is not None:
            state = plan.place(initial, model, run_model, example)
        elif config.init_from.workdir:
            from normlab.train.init_from import load_source, transfer_state

            source = load_source(config.init_from)
            fresh = jax.jit(init_fn_for(example))()
            fresh = transfer_state(fresh, source, config.init_from.head, tx)
            state = plan.place(fresh, model, run_model, example)
        elif config.num_seeds > 1:
            shardings = jax.tree.map(lambda s: s.sharding, abstract_for(example))
            state = jax.jit(init_fn_for(example), out_shardings=shardings)()
        else:
            state = plan.init(init_fn_for(example), model, run_model, example)

    # ---------------------------------------------------------------- step, eval, diagnostics
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
        prepare=data.prepare,
    )
    if config.num_seeds > 1:
        chunk = plan.jit_chunk(seeds.seeds_chunk_body(step_cfg), run_model, state)
    else:
        chunk = plan.jit_chunk(chunk_body(step_cfg, from_batches=data.per_process), run_model,
                               state)
    return Run(
        config=config,
        plan=plan,
        model=model,
        run_model=run_model,
        tx=tx,
        lr_fn=lr_fn,
        num_classes=num_classes,
        data=data,
        preprocessor=preprocessor,
        state=state,
        start_step=start_step,
        total_steps=total_steps,
        chunk=chunk,
        snapshots_at=snapshots_at,
        checkpointer=checkpointer,
        restored_meta=meta,
        seed_batches=seeds.SeedBatches(data, seeds.seed_values(config))
        if config.num_seeds > 1 else None,
        workdir=None if workdir is None else Path(workdir),
        diverged=seeds.read_diverged(workdir, config.num_seeds, start_step)
        if restored is not None and config.num_seeds > 1 else {},
        _evaluate=make_evaluator(model, data.prepare),
        _evaluate_batches=make_batch_evaluator(model, data.prepare),
        _diagnostics=make_diagnostics(
            model, config.model.activation, data.prepare,
            unit_layers=[name for name in config.diag_unit_layers.split(",") if name],
        ),
    )


def _keep(config: ConfigDict, folder: str) -> int | None:
    """How many checkpoints a folder keeps: the config's `keep_checkpoints`; every snapshot."""
    return config.keep_checkpoints if folder == CHECKPOINTS else None


def _example(
    meta: dict, preprocessor: Preprocessor, train_images: np.ndarray | None, pad_to: int
) -> np.ndarray:
    """One input example of the saved model's shape (from its metadata; checkpoints written
    before it was recorded: from the uint8 training images)."""
    if "input_shape" in meta:
        return np.zeros((1, *meta["input_shape"]), np.float32)
    if train_images is None:
        raise NormlabError("this checkpoint predates streamed training: resume it with "
                           "data.pipeline='device'")
    return np.asarray(inputs.make_prepare(preprocessor, pad_to)(train_images[:1]))


def _check_stream_preprocessing(config: ConfigDict, pipeline: str, reader: Any) -> None:
    """A fitted preprocessing needs fixed-size images (it is fitted on the whole split)."""
    if pipeline == "stream" and reader.encoded and config.preprocess.name != "none":
        raise ValueError(
            f"preprocess.name={config.preprocess.name!r} is fitted on the whole training split, "
            f"which needs images of one fixed size; {config.dataset!r} holds encoded images of "
            "varying size (decoded and cropped per step, scaled to [0, 1] on the device): use "
            "preprocess.name='none'"
        )


def _fit_preprocessor(
    config: ConfigDict, train_images: np.ndarray | None, reader: Any
) -> Preprocessor:
    """The config's preprocessing fitted on the (float, padded) training images ("none" needs
    none of them: it is fitted on one image of their shape). The float copy lives only here."""
    if train_images is not None:
        return inputs.fit_preprocessor(config, inputs.to_float(train_images, config.pad_to))
    if reader.encoded:  # decoded to (S, S, 3) per step
        first = np.zeros((1, config.data.image_size, config.data.image_size, 3), np.uint8)
    else:
        first = reader.read(np.arange(1))["image"]
    return make_preprocessor("none").fit(inputs.to_float(first, config.pad_to))


def _snapshot_steps(config: ConfigDict, total_steps: int) -> frozenset[int]:
    """Steps to save snapshot-ensemble members at; each must end a chunk of steps."""
    steps = snapshot_steps(config.schedule.to_dict(), total_steps)
    misaligned = [s for s in steps if s % config.steps_per_call and s != total_steps]
    if misaligned:
        raise ValueError(
            f"schedule.num_snapshots={len(steps)} puts snapshots at steps {steps}, but "
            f"{misaligned} are not multiples of steps_per_call={config.steps_per_call}; choose "
            "total_steps, num_snapshots and steps_per_call so that every cycle ends a chunk"
        )
    return frozenset(steps)
