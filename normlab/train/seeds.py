"""Many seeds of one config in one program: `config.num_seeds = K`.

Seed i of a K-seed run is the run of the same config with `seed = config.seed + i`, computed
in the same jitted program as the others:

    state      every leaf of the TrainState stacked on a leading seed axis of size K, each seed
               initialized from PRNGKey(seed + i) (`stacked_init`): one checkpoint holds all K
    data       seed i's batches come from its own EpochSampler(N, B, seed + i) (`SeedBatches`);
               the images and labels sit on the devices once, shared by every seed
    step       `jax.vmap` of the single-seed chunk (`normlab.train.step`, unchanged) over the
               state and the per-seed batch indices (`seeds_chunk_body`); each seed's dropout and
               augmentation draw from its own state's rng, as in its own run
    measure    evaluation and diagnostics of every seed, one seed's slice at a time
               (`each_seed`): the same compiled evaluator as a single-seed run's

Under data parallelism (`jit` over mesh.data) the seed axis is replicated and each seed's batch
sharded over `data` (vmap keeps the step's batch sharding constraint on the batch axis).

A measurement of a K-seed run is `{name: (K,) array}`; a chunk's metrics are (K, steps). Only
one-process runs on the device-held data set, with jit over mesh.data, do this
(`normlab.train.validate` refuses the rest before anything loads).

    batches = SeedBatches(data, seed_values(config))
    state = jax.jit(stacked_init(model, tx, seed_values(config), example),
                    out_shardings=replicated(mesh))()
    chunk = plan.jit_chunk(seeds_chunk_body(step_cfg), run_model, state)
    state, metrics_SK = chunk(state, *batches.chunk_args(step, k))
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from ml_collections import ConfigDict

from normlab.data.loader import EpochSampler
from normlab.parallel.mesh import replicated
from normlab.train.state import TrainState, init_state
from normlab.train.step import StepConfig, chunk_body

log = logging.getLogger(__name__)

SEEDS = "seeds"  # workdir/seeds/<i>/: seed i's metrics.jsonl, summary.json, config.json


def seed_values(config: ConfigDict) -> list[int]:
    """The seeds of a run: config.seed, ..., config.seed + num_seeds - 1."""
    return [config.seed + i for i in range(config.num_seeds)]


def seed_config(config: ConfigDict, i: int) -> ConfigDict:
    """The single-seed config that seed i of `config` equals (seed + i, num_seeds 1)."""
    single = ConfigDict(config.to_dict())
    single.seed, single.num_seeds = config.seed + i, 1
    return single


def stacked_init(
    model: Any, tx: optax.GradientTransformation, seeds: Sequence[int], example_x: Any
) -> Callable[[], TrainState]:
    """`init()` → the K seeds' initial states stacked on a leading axis; seed i's slice is
    `init_state(model, tx, PRNGKey(seeds[i]), example_x)`, a single-seed run's start."""
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    return lambda: jax.vmap(lambda key: init_state(model, tx, key, example_x))(keys)


def replicated_abstract(init_fn: Callable[[], TrainState], mesh: Mesh) -> TrainState:
    """ShapeDtypeStructs of `init_fn()`, replicated over the mesh: what a K-seed checkpoint
    restores into (the seed axis is never sharded)."""
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated(mesh)),
        jax.eval_shape(init_fn),
    )


def seeds_chunk_body(cfg: StepConfig) -> Callable:
    """`chunk_body(cfg)` (device-held data) vmapped over the seed axis of the state and of the
    batch indices: `chunk(state_S, images, labels, idx_SKB) -> (state_S, metrics (S, K))`."""
    single = chunk_body(cfg)

    def build(model: Any, batch_sharding: Any, axis_name: str | None) -> Callable:
        return jax.vmap(single(model, batch_sharding, axis_name), in_axes=(0, None, None, 0))

    return build


class SeedBatches:
    """The chunk arguments of a K-seed run: the device-held training set (shared) and each
    seed's batch indices from its own `EpochSampler`, a pure function of (seed, step) as in a
    single-seed run."""

    def __init__(self, data: Any, seeds: Sequence[int]):
        self.data = data
        n, batch = data.sampler.num_examples, data.sampler.batch_size
        self.samplers = [EpochSampler(n, batch, seed) for seed in seeds]

    def chunk_args(self, step: int, k: int) -> tuple:
        """(images, labels, idx_SKB) of the chunk of steps [step, step + k)."""
        idx_SKB = np.stack([
            np.stack([sampler.batch_indices(s) for s in range(step, step + k)])
            for sampler in self.samplers
        ])
        images, labels = self.data.device_arrays()
        return images, labels, jnp.asarray(idx_SKB, jnp.int32)


@jax.jit
def _slice(state: Any, i: jax.Array) -> Any:
    return jax.tree.map(lambda leaf: leaf[i], state)


def seed_state(state: Any, i: int) -> Any:
    """Seed i's slice of a stacked state (one compiled program for every i)."""
    return _slice(state, jnp.int32(i))


def each_seed(
    measure: Callable[[Any], dict[str, float]], state: Any, num_seeds: int
) -> dict[str, np.ndarray]:
    """`{name: (K,) array}` of `measure(seed i's state)` for every seed (`measure` returns
    `{name: float}` of one state, e.g. the evaluator)."""
    per_seed = [measure(seed_state(state, i)) for i in range(num_seeds)]
    return {name: np.asarray([m[name] for m in per_seed]) for name in per_seed[0]}


def check_assembly(config: ConfigDict, pipeline: str) -> None:
    """What only the run's assembly knows (before any data is read): a K-seed run needs the
    data set on the devices (`data.pipeline='auto'` may have chosen to stream it) and one
    process."""
    if config.num_seeds == 1:
        return
    if pipeline != "device":
        raise ValueError(
            f"num_seeds={config.num_seeds} needs the training set held on the devices, but "
            f"data.pipeline={config.data.pipeline!r} streams {config.dataset!r} (encoded "
            "images, or over data.device_budget_mb): raise data.device_budget_mb, or num_seeds=1"
        )
    if jax.process_count() > 1:
        raise ValueError(
            f"num_seeds={config.num_seeds} runs in one process; this job has "
            f"{jax.process_count()}: run it on one host, or num_seeds=1"
        )


# ---------------------------------------------------------------------------- diverged seeds
# A seed whose loss (or state) becomes non-finite stops where its own run would have stopped
# (`NonFiniteLossError`): its metrics end at the last record before, and
# workdir/seeds/<i>/diverged.json (the marker `normlab.reports.runs` gives a diverged run) says
# why; the other seeds train on. Only when every seed has diverged does the run stop.
DIVERGED = "diverged.json"


def mark_diverged(run: Any, i: int, last_good_step: int, message: str) -> None:
    """Records that seed i diverged (its metrics are complete up to `last_good_step`), in
    `run.diverged` and, with a workdir, in its marker file."""
    message = f"seed {i} (seed={run.config.seed + i}): {message}"
    run.diverged[i] = {"message": message, "last_good_step": last_good_step}
    log.warning("%s; the other seeds go on", message)
    if run.workdir is not None and jax.process_index() == 0:
        path = Path(run.workdir) / SEEDS / str(i) / DIVERGED
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run.diverged[i]) + "\n")


def read_diverged(workdir: str | Path, num_seeds: int, start_step: int) -> dict[int, dict]:
    """The seeds a run resumed at `start_step` knows diverged: their markers, where the metrics
    they stopped at are not after the resume step (an earlier checkpoint replays the steps up
    to the divergence, which marks it again)."""
    found = {}
    for i in range(num_seeds):
        path = Path(workdir) / SEEDS / str(i) / DIVERGED
        if path.is_file():
            marker = json.loads(path.read_text())
            if marker["last_good_step"] <= start_step:
                found[i] = marker
    return found


def clear_stale_markers(workdir: str | Path, num_seeds: int, diverged: dict[int, dict]) -> None:
    """Removes the markers of seeds that, from this run's start, have not diverged (a fresh
    start in an old workdir, or a resume before the divergence)."""
    for i in range(num_seeds):
        if i not in diverged:
            (Path(workdir) / SEEDS / str(i) / DIVERGED).unlink(missing_ok=True)
