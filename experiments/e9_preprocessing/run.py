"""E9: input preprocessing — speed of convergence and sensitivity to a weight perturbation
(SPEC §3 E9).

A linear softmax classifier on 10,000 CIFAR-10 training images (configs/e9_preprocessing.py:
3,072 raw pixels in [0, 1], plain SGD, batch 128, 3,000 steps) with each preprocessing: none,
zero_center (mean image), standardize (mean and std image), pca_whiten and zca_whiten (ε = 1e-2).
Every (preprocessing, lr) is trained with the five seeds `SEEDS` (init and data order) as
one program (`num_seeds`). Each preprocessing tolerates a different learning rate, so each
gets its own, found by a search on the half-decade grid `LR_GRID`: start at `LR_START`, step up
while the final training loss (all 10,000 training images, measured after the last step;
mean over the seeds, a diverged seed scoring inf) improves, and, if the first step up did not
improve it, step down instead while it improves. Reported at each preprocessing's best rate,
per seed and as mean ± 95% CI: the training loss curve, the steps to reach training losses of
`THRESHOLDS`, and the validation / test accuracy; comparisons with raw pixels by Welch tests.

Sensitivity: the change of the training loss (on `LOSS_IMAGES` training images) when the
first (here: the only) layer's weight matrix W is perturbed by δ = ε·‖W‖_F·U/‖U‖_F, U a
standard Gaussian matrix, averaged over `DIRECTIONS` random directions, for ε in `EPSILONS`,
at initialization and after training, for each seed's run (at init every preprocessing of
seed i starts from the same W, so ratios to raw pixels are paired by seed).

    python experiments/e9_preprocessing/run.py            # 21 programs of 5 seeds
    python experiments/e9_preprocessing/run.py --reuse    # reuse finished runs of the same code
    python experiments/e9_preprocessing/run.py --report-only  # from results.json alone
    python experiments/e9_preprocessing/run.py --tiny --out /tmp/e9    # 2 runs, 1,000 images
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from normlab.config import load_config
from normlab.data.datasets import load_arrays
from normlab.reports import Report, RunResult, final_metric, run_training, steps_to_reach
from normlab.reports.experiment import (
    load_results,
    parse_experiment_args,
    record_runs,
    sibling_module,
)
from normlab.reports.runs import seed_runs
from normlab.train import inputs
from normlab.train.build import build_tx
from normlab.train.saved import load_saved
from normlab.train.state import init_state

e9_report = sibling_module(__file__, "e9_report")  # the report step and the design's constants
verdicts, write_report = e9_report.verdicts, e9_report.write_report
(CONFIG, PREPS, LR_GRID, LR_START, SEEDS, TINY_PREPS, TINY_GRID, THRESHOLDS, EPSILONS,
 DIRECTIONS, LOSS_IMAGES, WHEN, FIRST_LAYER) = (
    e9_report.CONFIG, e9_report.PREPS, e9_report.LR_GRID, e9_report.LR_START, e9_report.SEEDS,
    e9_report.TINY_PREPS, e9_report.TINY_GRID, e9_report.THRESHOLDS, e9_report.EPSILONS,
    e9_report.DIRECTIONS, e9_report.LOSS_IMAGES, e9_report.WHEN, e9_report.FIRST_LAYER)


def search_lr(train_at: Callable[[float], list[RunResult]], grid: Sequence[float],
              start: float) -> tuple[dict[float, list[RunResult]], float]:
    """The runs (all seeds) tried and the best lr of a unimodal search on `grid` (see the
    module doc)."""
    runs: dict[float, list[RunResult]] = {}

    def score(i: int) -> float:
        lr = grid[i]
        if lr not in runs:
            runs[lr] = train_at(lr)
        return e9_report.mean_loss([final_metric(r, "fit_loss") for r in runs[lr]])

    first = best = grid.index(start)
    score(first)
    for step in (1, -1):
        i = first + step
        while 0 <= i < len(grid) and score(i) < score(best):
            best, i = i, i + step
        if best != first:
            break
    return runs, grid[best]



def perturbation_sensitivity(run: RunResult, images: int, epsilons: Sequence[float],
                             directions: int) -> dict[str, Any]:
    """Mean |ΔL| of the training loss under δW = ±ε‖W‖·U/‖U‖ of the first layer, and its odd
    (first-order) and even (curvature) parts, at init (the run's own initial params, re-created
    from its seed) and after training."""
    saved = load_saved(run.workdir)
    config, model = saved.config, saved.model
    trained, preprocess = saved.state.params, saved.preprocessor
    x_u8, y = load_arrays(config.dataset, config.train_split, data_dir=config.data_dir or None,
                          tfds_dir=config.tfds_dir or None)
    x_np = np.asarray(inputs.transform(preprocess, inputs.to_float(x_u8[:images])))
    flat = x_np.reshape(len(x_np), -1).astype(np.float64)
    norm2 = float(np.mean(np.sum(flat**2, -1)))
    # the share of the inputs' mean square that is the square of their mean
    out: dict[str, Any] = {"mean_share": float(np.sum(flat.mean(0) ** 2)) / norm2,
                           "input_norm2": norm2}
    x32 = jnp.asarray(x_np[:1])
    tx, _ = build_tx(config, config.total_steps)
    initial = jax.jit(lambda: init_state(model, tx, jax.random.PRNGKey(config.seed),
                                         x32).params)()
    labels = np.asarray(y[:images])
    # float64: the even part of ΔL is ~ε², below float32's resolution of L at ε = 1e-3
    with jax.enable_x64(True):
        x = jnp.asarray(x_np, jnp.float64)

        @jax.jit
        def loss_changes(params: dict, directions_R: jax.Array, eps_E: jax.Array):
            """(L(W), ‖W‖, L(W ± δ) − L(W) for every ε × direction × sign), W the first
            layer's weights, L the mean cross-entropy."""
            flat_params = traverse_util.flatten_dict(params)
            w = flat_params[FIRST_LAYER]

            def loss(w_new: jax.Array) -> jax.Array:
                new = traverse_util.unflatten_dict({**flat_params, FIRST_LAYER: w_new})
                log_probs = jax.nn.log_softmax(model.apply({"params": new}, x, train=False))
                return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], -1))

            def change(u: jax.Array, e: jax.Array) -> jax.Array:
                delta = e * jnp.linalg.norm(w) * u / jnp.linalg.norm(u)
                return jnp.stack([loss(w + delta), loss(w - delta)]) - base

            base = loss(w)
            return base, jnp.linalg.norm(w), jax.vmap(
                lambda e: jax.vmap(lambda u: change(u, e))(directions_R))(eps_E)

        shape = traverse_util.flatten_dict(trained)[FIRST_LAYER].shape
        units = np.random.default_rng(0).standard_normal((directions, *shape))
        for label, params in (("init", initial), ("trained", trained)):
            host = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
            base, norm, deltas_ER2 = jax.device_get(
                loss_changes(host, units, np.asarray(epsilons, np.float64)))
            out[label] = {"loss": float(base), "weight_norm": float(norm), "eps": [
                {"epsilon": eps,
                 "mean_abs": float(np.mean(np.abs(d))),
                 # ±δ pairs split ΔL into its odd (gradient) and even (curvature) parts
                 "first_order": float(np.mean(np.abs(d[:, 0] - d[:, 1]) / 2)),
                 "second_order": float(np.mean((d[:, 0] + d[:, 1]) / 2))}
                for eps, d in zip(epsilons, np.asarray(deltas_ER2), strict=True)]}
    return out



def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs E9 (or, with --report-only, reads its results.json) and writes the report; returns
    the results."""
    args = parse_experiment_args(__doc__, __file__, argv)
    report = Report("E9: input preprocessing — convergence speed and weight-perturbation "
                    "sensitivity", args.out, command=args.command)
    results, runs = (load_results(args.out), None) if args.report_only else collect(args)
    write_report(report, results, runs)
    return results


def collect(args) -> tuple[dict[str, Any], dict[str, Any]]:
    """The learning-rate searches and the sensitivity measurements; (the numbers the report
    shows, the runs (per seed) behind its convergence figure)."""
    preps, grid, start = (TINY_PREPS, TINY_GRID, TINY_GRID[0]) if args.tiny else (
        PREPS, LR_GRID, LR_START)
    seeds = SEEDS[:1] if args.tiny else SEEDS
    data = ",train_size=1000,steps=300" if args.tiny else ""
    images = 256 if args.tiny else LOSS_IMAGES

    def train_at(prep: str) -> Callable[[float], list[RunResult]]:
        def train(lr: float) -> list[RunResult]:
            config = load_config(f"{CONFIG}:prep={prep},lr={lr},seed={seeds[0]}{data}")
            config.num_seeds = len(seeds)
            name = f"{prep}_lr{lr:g}" + (f"_seeds{seeds[0]}-{seeds[-1]}" if len(seeds) > 1
                                          else "")
            run = run_training(config, args.runs / name, name=f"{prep} (lr {lr:g})",
                               reuse=args.reuse, any_revision=args.reuse_any_revision,
                               progress=args.progress, devices=args.devices)
            # a program whose every seed diverged is one RunResult: each seed diverged
            found = seed_runs(run)
            return found if len(found) == len(seeds) else found * len(seeds)
        return train

    searched = {prep: search_lr(train_at(prep), grid, start) for prep in preps}
    best = {prep: runs[lr] for prep, (runs, lr) in searched.items()}
    trained = [r for runs, _ in searched.values() for rs in runs.values() for r in rs]
    results: dict[str, Any] = {
        "tiny": args.tiny, "grid": list(grid), "lr_start": start, "loss_images": images,
        "seeds": list(seeds), "total_steps": 300 if args.tiny else 3000,
        "best_lr": {prep: lr for prep, (_, lr) in searched.items()}, "preps": {},
        "training_runs": record_runs(args, trained)
        + f" ({sum(len(r) for r, _ in searched.values())} programs of {len(seeds)} seeds, "
          "`num_seeds`)"}
    for p, runs in best.items():
        results["preps"][p] = {
            "lr": results["best_lr"][p],
            "steps_to_loss": {str(t): [steps_to_reach(*r.series("train_loss"), t, below=True)
                                       for r in runs] for t in THRESHOLDS},
            "final_train_loss": [final_metric(r, "fit_loss") for r in runs],
            "val_accuracy": [final_metric(r, "val_accuracy") for r in runs],
            "test_accuracy": [final_metric(r, "test_accuracy") for r in runs],
            "lr_search": {f"{lr:g}": [final_metric(r, "fit_loss") for r in rs]
                          for lr, rs in searched[p][0].items()},
        }
    results["sensitivity"] = {}
    for prep, runs in best.items():
        per_seed = [perturbation_sensitivity(r, images, EPSILONS, DIRECTIONS) for r in runs]
        # the inputs (and so their statistics) are the same for every seed
        results["sensitivity"][prep] = {
            "mean_share": per_seed[0]["mean_share"], "input_norm2": per_seed[0]["input_norm2"],
            "seeds": [{when: s[when] for when in WHEN} for s in per_seed]}
    return results, best



if __name__ == "__main__":
    main()
