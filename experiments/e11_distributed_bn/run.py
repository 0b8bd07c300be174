"""E11: distributed BatchNorm — global vs per-device vs ghost statistics on 8 devices, and the
parallel modes agree (SPEC §3 E11).

Part 1 (configs/e11_distributed_bn.py, through the training system): an MLP with BN, 8
data-parallel devices with 4 examples each (global batch 32), 3,000 SGD-momentum steps on
Fashion-MNIST, five seeds (one program per scope, `num_seeds=5`), with the BN statistics over
the global batch (32), groups of 4 devices (16), ghost batches of 8, each device's 4 examples
(per_device), ghost batches of 2. Test accuracy (mean ± 95% CI, Welch tests of neighbours in
the ordering), and the step time of every scope under jit and pmap.
Part 2 (the same config, each parallel layout built with `ParallelPlan` exactly as the trainer
builds it): from three starts (seeds 0, 1, 2: initial state and data order), 1 device, 8-way
data parallel (jit and pmap), 4 data × 2 model (tensor parallel) and 4 data × 2 stages (GPipe),
with BN (global scope, ghost batches of 4) and GN + Proxy Norm; the largest differences of the
losses, parameters and running statistics from the 1-device run after 10 and after 100 steps
(seed 0's start) and after 10 steps (every start: the verdict). A layout beyond its bound is
stepped again one step at a time to find where it parts from the 1-device run (`parting`): a
ReLU input within rounding of 0 at the unit that parts most is a rounding event, not the
layout's error.

The devices are 8 fake CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`, set
here before JAX is imported) sharing this machine's cores: their step times measure the
overhead of each layout, not a speed-up.

    python experiments/e11_distributed_bn/run.py            # ~10 min on 2 cores
    python experiments/e11_distributed_bn/run.py --reuse    # reuse finished runs of the same code
    python experiments/e11_distributed_bn/run.py --report-only  # from results.json alone
    python experiments/e11_distributed_bn/run.py --tiny --out /tmp/e11    # digits, seconds
"""

from __future__ import annotations

import os

_FLAG = "--xla_force_host_platform_device_count"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    # only effective before JAX initializes; a process with real accelerators keeps them
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {_FLAG}=8").strip()

import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from normlab.config import load_config  # noqa: E402
from normlab.reports import Report  # noqa: E402
from normlab.reports.experiment import (  # noqa: E402
    load_results,
    parse_experiment_args,
    record_runs,
    sibling_module,
    train_seeds,
)
from normlab.reports.stats import final_metric  # noqa: E402
from normlab.train.diagnostics import collect_preacts  # noqa: E402
from normlab.train.run import Run, build_run  # noqa: E402

e11_report = sibling_module(__file__, "e11_report")  # the report step
# verdicts: the report step's, read by tests/test_results_guard.py from this module
verdicts, write_report, first_chunk, exceedances = (
    e11_report.verdicts, e11_report.write_report, e11_report.first_chunk, e11_report.exceedances)
CONFIG, SEEDS, SUBSET, CONTROL, AGREE_TOL, KINK_TOL = (
    e11_report.CONFIG, e11_report.SEEDS, e11_report.SUBSET, e11_report.CONTROL,
    e11_report.AGREE_TOL, e11_report.KINK_TOL)
PART_TOL = e11_report.PART_TOL

DEVICES = 8
SCOPES = {  # label: (config arguments, examples behind one set of statistics, at 4 per device)
    "global": ("scope=global", 32),
    "groups (2 × 4 devices)": ("scope=groups,groups=2", 16),
    "ghost 8": ("scope=ghost,ghost=8", 8),
    "per_device": ("scope=per_device", 4),
    "ghost 2": ("scope=ghost,ghost=2", 2),
}
PMAP_SCOPES = ("global", "groups (2 × 4 devices)", "per_device", "ghost 2")  # G | local batch
SETTINGS = {  # label: (config arguments of the run and of its 1-device reference)
    "BN, global": ("scope=global", "scope=global"),
    "BN, ghost 4": ("scope=ghost,ghost=4", "scope=ghost,ghost=4"),
    "BN, per_device vs 1 device with ghost 4": ("scope=per_device", "scope=ghost,ghost=4"),
    "GN + PN": ("norm=group+proxy", "norm=group+proxy"),
}
LAYOUTS = {  # label: (config overrides, number of devices)
    "1 device": ({"mesh": {"data": 1}}, 1),
    "data 8 (jit)": ({}, DEVICES),
    "data 8 (pmap)": ({"parallel_mode": "pmap"}, DEVICES),
    "data 4 × model 2": ({"mesh": {"data": 4, "model": 2}}, DEVICES),
    "data 4 × stage 2": ({"mesh": {"data": 4, "stage": 2}}, DEVICES),
}
AGREE_SEEDS = (0, 1, 2)  # the agreement check's starts (initial state and data order)


class Setup:
    """One config on one device layout, assembled by `build_run` as the trainer assembles it,
    ready to step.

    (A plain class: `load_experiment` runs this file outside `sys.modules`, where
    dataclasses cannot resolve postponed annotations.)
    """

    def __init__(self, run: Run):
        self.run = run
        self.step = 0

    def advance(self, steps: int) -> np.ndarray:
        """Runs `steps` steps (one jitted chunk); returns their training losses."""
        metrics = self.run.train_chunk(self.step, steps)
        self.step += steps
        return np.asarray(metrics["train_loss"], np.float64)

    def canonical(self) -> dict[str, list[np.ndarray]]:
        state = jax.device_get(self.run.canonical())
        return {"params": [np.asarray(x) for x in jax.tree.leaves(state.params)],
                "batch_stats": [np.asarray(x) for x in jax.tree.leaves(state.batch_stats)]}


def _config(spec: str, overrides: dict[str, Any] | None = None) -> ConfigDict:
    """The config of one setup. The checks need batches, not the data set: every setup holds
    its copy on each of its devices (8 copies of all of Fashion-MNIST per setup fill the RAM),
    so it trains on the first `SUBSET` training images (preprocessing fitted on those)."""
    config = load_config(f"{CONFIG}:{spec}")
    for key, value in (overrides or {}).items():
        if key == "mesh":
            config.mesh = {"data": 1, "model": 1, "stage": 1, **value}
        else:
            config[key] = value
    if config.mesh.stage > 1 and not config.model.norm.startswith("batch"):
        config.pipeline.microbatches = 2  # batch-independent norms pipeline exactly with M > 1
    if config.dataset != "digits":  # digits has fewer than SUBSET training images
        config.train_split = f"train[:{SUBSET}]"
    return config


def prepare(config: ConfigDict, num_devices: int, initial: Any = None) -> Setup:
    """`config` on the first `num_devices` devices, from the canonical state `initial` (host
    arrays; the config's own init if None)."""
    return Setup(build_run(config, jax.devices()[:num_devices], initial=initial))


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max((float(np.max(np.abs(u - v))) for u, v in zip(a, b, strict=True)), default=0.0)


def agreement(
    settings: Sequence[str], layouts: Sequence[str], tiny_arg: str, chunk: int, chunks: int,
    seed: int,
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], Setup]]:
    """From the start of `seed` (initial state and data order), for each setting and layout:
    max |Δ| of the losses, parameters and running statistics from the 1-device run after every
    chunk of steps; and the first setting's Setups (reused for timing)."""
    results: dict[str, dict[str, Any]] = {}
    setups: dict[tuple[str, str], Setup] = {}
    for setting in settings:
        spec, ref_spec = (f"{s}{tiny_arg},seed={seed}" for s in SETTINGS[setting])
        reference = prepare(_config(ref_spec, LAYOUTS["1 device"][0]), 1)
        if setting == settings[0]:
            setups[setting, "1 device"] = reference
        initial = jax.device_get(reference.run.canonical())
        ref_losses, ref_states = [], []
        for _ in range(chunks):
            ref_losses.append(reference.advance(chunk))
            ref_states.append(reference.canonical())
        ref_losses = np.concatenate(ref_losses)
        # the control: the same 1-device run from parameters 1 ulp away, i.e. a rounding-sized
        # difference, to tell a layout's error from the training's sensitivity to rounding
        nudged = initial.replace(params=jax.tree.map(
            lambda x: np.nextafter(x, np.asarray(np.inf, x.dtype)), initial.params))
        for layout in (*layouts, CONTROL):
            overrides, devices = LAYOUTS.get(layout, LAYOUTS["1 device"])
            if layout == "1 device" or (setting.startswith("BN, per_device") and "×" in layout):
                continue  # per_device depends on the data axis: compared where it has 8 devices
            setup = prepare(_config(ref_spec if layout == CONTROL else spec, overrides), devices,
                            nudged if layout == CONTROL else initial)
            if setting == settings[0]:  # kept for timing; the others are freed
                setups[setting, layout] = setup
            losses, params, stats = [], [], []
            for k in range(chunks):
                losses.append(setup.advance(chunk))
                state = setup.canonical()
                params.append(_max_diff(state["params"], ref_states[k]["params"]))
                stats.append(_max_diff(state["batch_stats"], ref_states[k]["batch_stats"]))
            losses = np.abs(np.concatenate(losses) - ref_losses)
            results.setdefault(setting, {})[layout] = {
                "steps": [chunk * (k + 1) for k in range(chunks)], "first_loss": float(losses[0]),
                "first_apart": next((int(i) + 1 for i in np.flatnonzero(losses > AGREE_TOL)),
                                    None),
                "loss": [float(losses[: chunk * (k + 1)].max()) for k in range(chunks)],
                "params": params, "batch_stats": stats,
                "microbatches": setup.run.plan.microbatches,
            }
    return results, setups


def _unit_of_largest(a: Any, b: Any) -> tuple[float, str, int, str]:
    """(max |a − b|, its top-level layer, its unit: the index along the leaf's last axis, the
    leaf's path) over two parameter trees of the same structure."""
    best = (-1.0, "", -1, "")
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b),
                            strict=True):
        d = np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))
        if d.size and d.max() > best[0]:
            where = np.unravel_index(int(np.argmax(d)), d.shape)
            best = (float(d.max()), str(path[0].key), int(where[-1]),
                    jax.tree_util.keystr(path))
    return best


def parting(setting: str, layout: str, tiny_arg: str, seed: int, steps: int) -> dict[str, Any]:
    """Where `layout`'s run parts from the 1-device run, stepping both one step at a time
    from the start of `seed` for up to `steps` steps: the first step after which a parameter
    differs by more than PART_TOL; the 1-device run's smallest |pre-activation| on that step's
    batch (its layer, example and unit); and where the parameters then differ most. A ReLU
    input within rounding of 0 can take either sign under another summation order, which
    changes that unit's gradient for that one example: `kink` is True when the smallest
    |pre-activation| is below KINK_TOL and is at the unit whose parameters part the most."""
    spec, ref_spec = (f"{s}{tiny_arg},seed={seed}" for s in SETTINGS[setting])
    reference = prepare(_config(ref_spec, LAYOUTS["1 device"][0]), 1)
    initial = jax.device_get(reference.run.canonical())
    overrides, devices = LAYOUTS[layout]
    other = prepare(_config(spec, overrides), devices, initial)
    run, images = reference.run, np.asarray(reference.run.data.train_images)
    for step in range(steps):
        state = jax.device_get(run.canonical())
        x = run.preprocessor(images[run.data.sampler.batch_indices(step)])
        _, mutated = run.model.apply({"params": state.params, "batch_stats": state.batch_stats},
                                     x, train=True, mutable=["intermediates", "batch_stats"])
        preacts = {path.split("/")[0]: np.asarray(z) for path, z in
                   collect_preacts(mutated["intermediates"]).items()}
        reference.advance(1)
        other.advance(1)
        d, layer, unit, leaf = _unit_of_largest(jax.device_get(run.canonical()).params,
                                                jax.device_get(other.run.canonical()).params)
        if d > PART_TOL:
            z_layer = min(preacts, key=lambda k: np.abs(preacts[k]).min())
            z = preacts[z_layer]
            example, z_unit = np.unravel_index(int(np.argmin(np.abs(z))), z.shape)
            smallest = float(z[example, z_unit])
            return {"step": step + 1, "max_dparam": d, "dparam_at": [layer, unit, leaf],
                    "smallest_preact": smallest,
                    "preact_at": [z_layer, int(example), int(z_unit)],
                    "kink": abs(smallest) < KINK_TOL and (z_layer, int(z_unit)) == (layer, unit)}
    return {"step": None, "kink": False}


def step_times(setups: dict[str, Setup], chunk: int, rounds: int) -> dict[str, float]:
    """Median seconds per step of each setup, timed round-robin (one chunk each per round) so
    that the load of a shared machine falls on all of them alike; compile time excluded."""
    for setup in setups.values():
        setup.advance(chunk)  # compile
    times: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(rounds):
        for name, setup in setups.items():
            start = time.perf_counter()
            setup.advance(chunk)  # device_get inside: waits for the result
            times[name].append((time.perf_counter() - start) / chunk)
    return {name: float(np.median(t)) for name, t in times.items()}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs E11 (or, with --report-only, reads its results.json) and writes the report; returns
    the results."""
    args = parse_experiment_args(__doc__, __file__, argv)
    report = Report("E11: distributed BatchNorm — statistics scopes and parallel modes",
                    args.out, command=args.command)
    results, runs = (load_results(args.out), None) if args.report_only else collect(args)
    write_report(report, results, runs)
    return results


def collect(args) -> tuple[dict[str, Any], dict]:
    """Trains every statistics scope, checks the layouts' agreement and times them; (the
    numbers the report shows, the runs behind its training figure)."""
    if jax.device_count() < DEVICES:
        raise ValueError(
            f"E11 needs {DEVICES} devices, JAX sees {jax.device_count()}: run it in a fresh "
            f"process (it sets XLA_FLAGS={_FLAG}={DEVICES} before importing JAX) or with "
            "JAX_PLATFORMS=cpu"
        )
    args.devices = None  # the statistics scopes need all 8 devices, --tiny too
    tiny = ",dataset=digits" if args.tiny else ""
    seeds = SEEDS[:1] if args.tiny else SEEDS
    scopes = {k: v for k, v in SCOPES.items() if not args.tiny or k in ("global", "per_device")}
    runs = {(label, seed): run
            for label, (spec, _) in scopes.items()
            for seed, run in zip(seeds, train_seeds(
                args, f"{spec.replace(',', '_').replace('=', '')}_seeds{seeds[0]}-{seeds[-1]}",
                f"{CONFIG}:{spec}{tiny}" + (",steps=300" if args.tiny else ""), seeds),
                strict=True)}
    settings = ("BN, global",) if args.tiny else tuple(SETTINGS)
    layouts = tuple(LAYOUTS)[:3] if args.tiny else tuple(LAYOUTS)
    chunk, chunks = (3, 2) if args.tiny else (10, 10)
    starts = AGREE_SEEDS[:1] if args.tiny else AGREE_SEEDS
    agree, agreed = agreement(settings, layouts, tiny, chunk, chunks, starts[0])
    by_start = {str(starts[0]): first_chunk(agree)}
    for seed in starts[1:]:  # the verdict's first chunk only; the 100 steps are seed 0's
        by_start[str(seed)] = first_chunk(
            agreement(settings, layouts, tiny, chunk, 1, seed)[0])
    # why a layout left the 1-device run beyond its bound: stepped again one step at a time
    partings = [{"seed": seed, "setting": setting, "layout": layout,
                 **parting(setting, layout, tiny, int(seed), chunk)}
                for seed, setting, layout, _, _ in exceedances(by_start)]

    # timing: the global-scope layouts of the agreement check, and every other scope
    timed = {("global" + (f" ({layout[8:-1]})" if layout.startswith("data 8") else
                          f", {layout}")): setup
             for (setting, layout), setup in agreed.items()
             if setting == "BN, global" and layout != CONTROL}
    others = () if args.tiny else tuple(k for k in scopes if k != "global")
    for label in others:
        timed[f"{label} (jit)"] = prepare(_config(SCOPES[label][0] + tiny), DEVICES)
        if label in PMAP_SCOPES and not args.tiny:
            timed[f"{label} (pmap)"] = prepare(
                _config(SCOPES[label][0] + tiny, {"parallel_mode": "pmap"}), DEVICES)
    seconds = step_times(timed, *((3, 3) if args.tiny else (100, 7)))  # tiny: no recompile
    results: dict[str, Any] = {
        "tiny": args.tiny, "seeds": list(seeds),
        "devices": f"{jax.device_count()} × {jax.devices()[0].platform} "
                   + ("(fake host devices sharing the CPU cores)"
                      if jax.devices()[0].platform == "cpu" else ""),
        "scopes": {}, "step_ms": {k: 1e3 * v for k, v in seconds.items()}, "agreement": agree,
        "agreement_starts": by_start, "partings": partings,
        "training_runs": record_runs(args, runs.values())
        + f" ({len(scopes)} programs of {len(seeds)} seeds, `num_seeds`)"}
    for label, (_, size) in scopes.items():
        finals = [final_metric(runs[label, s], "test_accuracy") for s in seeds]
        results["scopes"][label] = {
            "examples": size, "test_accuracy": finals,
            "mean_test_accuracy": float(np.mean(finals)),
            "train_loss": [final_metric(runs[label, s], "train_loss") for s in seeds]}
    return results, runs


if __name__ == "__main__":
    main()
