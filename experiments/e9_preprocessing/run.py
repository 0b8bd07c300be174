"""E9: input preprocessing — speed of convergence and sensitivity to a weight perturbation
(SPEC §3 E9).

A linear softmax classifier on 10,000 CIFAR-10 training images (configs/e9_preprocessing.py:
3,072 raw pixels in [0, 1], plain SGD, batch 128, 3,000 steps) with each preprocessing: none,
zero_center (mean image), standardize (mean and std image), pca_whiten and zca_whiten (ε = 1e-2).
Each preprocessing tolerates a different learning rate, so each gets its own, found by a
search on the half-decade grid `LR_GRID`: start at `LR_START`, step up while the final training
loss (all 10,000 training images, measured after the last step) improves, and, if the first
step up did not improve it, step down instead while it improves. Reported at each
preprocessing's best rate: the training loss curve, the steps to reach training losses of
`THRESHOLDS`, and the validation / test accuracy.

Sensitivity: the change of the training loss (on `LOSS_IMAGES` training images) when the
first (here: the only) layer's weight matrix W is perturbed by δ = ε·‖W‖_F·U/‖U‖_F, U a
standard Gaussian matrix, averaged over `DIRECTIONS` random directions, for ε in `EPSILONS`,
at initialization and after training.

    python experiments/e9_preprocessing/run.py            # 21 runs, ~21 min (loaded CPU)
    python experiments/e9_preprocessing/run.py --reuse    # reuse finished runs of the same code
    python experiments/e9_preprocessing/run.py --report-only  # from results.json alone
    python experiments/e9_preprocessing/run.py --tiny --out /tmp/e9    # 2 runs, 1,000 images
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from normlab.config import load_config
from normlab.data.datasets import load_arrays
from normlab.reports import (
    Report,
    RunResult,
    Verdict,
    final_metric,
    new_figure,
    plot_curves,
    run_training,
    steps_to_reach,
    verdict_table,
)
from normlab.reports.experiment import (
    load_results,
    parse_experiment_args,
    record_runs,
    report_results,
)
from normlab.train import inputs
from normlab.train.build import build_tx
from normlab.train.saved import load_saved
from normlab.train.state import init_state

CONFIG = "configs/e9_preprocessing.py"
PREPS = ("none", "zero_center", "standardize", "pca_whiten", "zca_whiten")
LR_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
LR_START = 0.1
# tiny: 1,000 CIFAR-10 images, raw vs centered at lr 0.1 (where the full search finds raw pixels
# unstable), 300 steps; whitening's 3,072 × 3,072 eigendecomposition is left out (seconds)
TINY_PREPS, TINY_GRID = ("none", "zero_center"), (0.1,)
THRESHOLDS = (2.0, 1.8, 1.6, 1.4)
EPSILONS = (1e-4, 1e-3, 1e-2, 1e-1)
MAIN_EPSILON = 1e-3
DIRECTIONS = 32
LOSS_IMAGES = 2000
WHEN = {"init": "W at initialization", "trained": "trained W"}
FIRST_LAYER = ("head", "kernel")  # the linear classifier's only weight matrix


def search_lr(train_at: Callable[[float], RunResult], grid: Sequence[float],
              start: float) -> tuple[dict[float, RunResult], float]:
    """The runs tried and the best lr of a unimodal search on `grid` (see the module doc)."""
    runs: dict[float, RunResult] = {}

    def score(i: int) -> float:
        lr = grid[i]
        if lr not in runs:
            runs[lr] = train_at(lr)
        loss = final_metric(runs[lr], "fit_loss")
        return math.inf if loss is None else loss

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


def _lr_cell(search: dict[str, float | None], lr: float, best: float) -> str:
    if f"{lr:g}" not in search:
        return "·"
    loss = search[f"{lr:g}"]
    text = "diverged" if loss is None else f"{loss:.3f}"
    return f"**{text}**" if lr == best else text


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
    shows, the runs behind its convergence figure)."""
    preps, grid, start = (TINY_PREPS, TINY_GRID, TINY_GRID[0]) if args.tiny else (
        PREPS, LR_GRID, LR_START)
    data = ",train_size=1000,steps=300" if args.tiny else ""
    images = 256 if args.tiny else LOSS_IMAGES

    def train_at(prep: str) -> Callable[[float], RunResult]:
        return lambda lr: run_training(
            load_config(f"{CONFIG}:prep={prep},lr={lr}{data}"), args.runs / f"{prep}_lr{lr:g}",
            name=f"{prep} (lr {lr:g})", reuse=args.reuse, any_revision=args.reuse_any_revision,
            progress=args.progress, devices=args.devices)

    searched = {prep: search_lr(train_at(prep), grid, start) for prep in preps}
    best = {prep: runs[lr] for prep, (runs, lr) in searched.items()}
    results: dict[str, Any] = {
        "tiny": args.tiny, "grid": list(grid), "lr_start": start, "loss_images": images,
        "best_lr": {prep: lr for prep, (_, lr) in searched.items()}, "preps": {},
        "training_runs": record_runs(args, [r for runs, _ in searched.values()
                                            for r in runs.values()])}
    for p, run in best.items():
        results["preps"][p] = {
            "lr": results["best_lr"][p],
            "steps_to_loss": {str(t): steps_to_reach(*run.series("train_loss"), t, below=True)
                              for t in THRESHOLDS},
            "final_train_loss": final_metric(run, "fit_loss"),
            "val_accuracy": final_metric(run, "val_accuracy"),
            "test_accuracy": final_metric(run, "test_accuracy"),
            "lr_search": {f"{lr:g}": final_metric(r, "fit_loss")
                          for lr, r in searched[p][0].items()},
        }
    results["sensitivity"] = {prep: perturbation_sensitivity(run, images, EPSILONS, DIRECTIONS)
                              for prep, run in best.items()}
    return results, best


def write_report(report: Report, results: dict[str, Any], best: dict | None) -> None:
    """The report from `results` alone; the training curves drawn from the runs in `best`
    (None: --report-only, the committed figure is embedded)."""
    tiny = results.get("tiny", False)
    # results from before these were stored are the full-size run's
    grid, start = results.get("grid", list(LR_GRID)), results.get("lr_start", LR_START)
    images = results.get("loss_images", LOSS_IMAGES)
    best_lr, summary, sensitivity = results["best_lr"], results["preps"], results["sensitivity"]
    preps = list(summary)
    report.facts.update({
        "data": f"CIFAR-10: train on train[:{'1000' if tiny else '10000'}], validation "
                "train[45000:] (5,000), test = the 1,000 test images in shared/datasets",
        "net": "linear softmax classifier (logits = W·x + b), LeCun-normal W, plain SGD, "
               f"constant lr, batch 128, {'300' if tiny else '3,000'} steps",
        "config": CONFIG,
        "learning rates": f"search on {list(grid)} from {start:g} (module docstring)",
    })
    if results.get("training_runs"):
        report.facts["training runs"] = results["training_runs"]
    report.text(
        "**Claim** (SPEC §3 E9, after the CS231n lecture on data preprocessing): zero-centering, "
        "standardization and PCA/ZCA whitening speed up convergence, and with un-centered "
        "inputs the loss is far more sensitive to a small change of the weights (the "
        "decision boundaries must pass far from the origin, so a small rotation of W moves "
        "them a lot), which makes optimization harder.\n\n"
        "Every preprocessing is fitted on the training images only. zero_center and "
        "standardize use per-pixel statistics (the mean image, the std image); the whitening "
        "ε = 1e-2 is relative to pixel variances of ~0.06."
    )

    report.heading("Learning-rate search")
    report.table(["preprocessing", *(f"lr {lr:g}" for lr in grid)],
                 [[p, *(_lr_cell(summary[p]["lr_search"], lr, best_lr[p]) for lr in grid)]
                  for p in preps])
    report.text("Final training loss (all training images, after the last step) at each rate "
                "the search tried (· not tried; **bold**: the best, used below).")

    report.heading("Convergence at each preprocessing's best learning rate")
    rows = []
    for p in preps:
        r = summary[p]
        edge = best_lr[p] in (grid[0], grid[-1]) and len(grid) > 1
        rows.append([p, f"{best_lr[p]:g}" + (" (grid edge)" if edge else ""),
                     *(r["steps_to_loss"][str(t)] for t in THRESHOLDS), r["final_train_loss"],
                     r["val_accuracy"], r["test_accuracy"]])
    report.table(["preprocessing", "best lr", *(f"steps to loss {t:g}" for t in THRESHOLDS),
                  "final train loss", "val acc", "test acc"], rows, spec=".4f")
    report.text("\"steps to loss\": the first logged step (every 50) whose training loss, "
                "averaged over the 50 steps, is at or below the threshold (— never). One seed.")
    caption = ("Training loss and validation accuracy at each preprocessing's best learning "
               "rate, and the final training loss at every rate tried")
    if best is None:
        report.existing_figure("convergence.png", caption)
    else:
        fig, axes = new_figure(3)
        plot_curves(axes[0], {f"{p} (lr {best_lr[p]:g})": best[p].series("train_loss")
                              for p in preps}, xlabel="step", ylabel="training loss", logy=True)
        plot_curves(axes[1], {f"{p} (lr {best_lr[p]:g})": best[p].series("val_accuracy")
                              for p in preps}, xlabel="step", ylabel="validation accuracy")
        plot_curves(axes[2], {p: (sorted(float(lr) for lr in summary[p]["lr_search"]),
                                  [summary[p]["lr_search"][f"{lr:g}"] or np.nan
                                   for lr in sorted(float(x) for x in summary[p]["lr_search"])])
                              for p in preps},
                    xlabel="learning rate", ylabel="final training loss", logy=True)
        axes[2].set_xscale("log")
        report.figure(fig, "convergence.png", caption)

    report.heading("Loss change under a small random perturbation of the weights")
    report.text(
        f"δW = ε·‖W‖_F·U/‖U‖_F with U a standard Gaussian matrix (the same {DIRECTIONS} "
        "directions for every preprocessing), and ΔL = L(W ± δW) − L(W) for the mean "
        f"cross-entropy on {images:,} training images. Each ±δ pair splits ΔL into its odd "
        "part (ΔL₊ − ΔL₋)/2 = gradient·δW + O(ε³), the first-order change, and its even part "
        "(ΔL₊ + ΔL₋)/2 = ½·δWᵀHδW + O(ε⁴), the curvature along δW. \"init\": the run's own "
        "initial W (LeCun normal: the same draw for every preprocessing, so at init the "
        "comparison is purely one of input geometry); \"trained\": after training at the best "
        "lr. \"mean share\" = ‖E[x]‖² / E‖x‖², the part of the inputs' energy that is their "
        "mean (on these images)."
    )
    main_i = EPSILONS.index(MAIN_EPSILON)
    report.table(["preprocessing", "mean share", "E‖x‖²", "‖W‖ init", "‖W‖ trained"],
                 [[p, sensitivity[p]["mean_share"], sensitivity[p]["input_norm2"],
                   sensitivity[p]["init"]["weight_norm"], sensitivity[p]["trained"]["weight_norm"]]
                  for p in preps], spec=".3g")
    ref = sensitivity[preps[0]]
    for label in ("init", "trained"):
        rows = []
        for p in preps:
            at = sensitivity[p][label]["eps"][main_i]
            rows.append([p, sensitivity[p][label]["loss"], at["mean_abs"],
                         at["mean_abs"] / ref[label]["eps"][main_i]["mean_abs"],
                         at["first_order"],
                         at["second_order"],
                         at["second_order"] / ref[label]["eps"][main_i]["second_order"]])
        report.text(f"**{WHEN[label]}**")
        report.table(["preprocessing", "L", f"mean |ΔL|, ε {MAIN_EPSILON:g}", "× none",
                      "odd part", "even part",
                      "× none"], rows, spec=".3g")
    fig, axes = new_figure(2, 2)
    for row, label in enumerate(("init", "trained")):
        for col, (key, name) in enumerate((("mean_abs", "mean |ΔL|"),
                                           ("second_order", "even part (curvature)"))):
            ax = axes[2 * row + col]
            plot_curves(ax, {p: (list(EPSILONS), [e[key] for e in sensitivity[p][label]["eps"]])
                             for p in preps}, xlabel="relative perturbation ε", ylabel=name,
                        title=WHEN[label], logy=True)
            ax.set_xscale("log")
    report.figure(fig, "perturbation.png", "Change of the training loss under a random "
                  "perturbation of relative size ε of the first layer's weights: mean |ΔL| "
                  "(left) and its even, curvature part (right), at init (top) and trained "
                  "(bottom)")

    report.heading("Result")
    claims = verdicts(results)
    report.text(verdict_table(claims))
    report_results(report, results, claims)


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    """The claims of E9 and what the numbers in results.json say about them (one seed:
    preliminary)."""
    runs, s = results["preps"], results["sensitivity"]
    preps, grid = list(runs), results.get("grid", list(LR_GRID))
    others = [p for p in preps if p != "none"]
    main_i, t = EPSILONS.index(MAIN_EPSILON), str(THRESHOLDS[1])

    def share(won: Sequence[str]) -> str:
        return ("reproduced" if len(won) == len(others) else
                "partly reproduced" if won else "not reproduced")

    larger = [p for p in others if runs[p]["lr"] > runs["none"]["lr"]]
    lower = [p for p in others if runs[p]["final_train_loss"] < runs["none"]["final_train_loss"]]
    never = math.inf
    faster = [p for p in others if (runs[p]["steps_to_loss"][t] or never)
              < (runs["none"]["steps_to_loss"][t] or never)]
    out = [
        Verdict("centering/whitening allows a larger lr than raw pixels",
                "best lr " + ", ".join(f"{p} {runs[p]['lr']:g}" for p in preps),
                share(larger) if len(grid) > 1 else "not tested", 1),
        Verdict(f"it reaches a training loss of {t} in fewer steps",
                "steps " + ", ".join(f"{p} {runs[p]['steps_to_loss'][t] or 'never'}"
                                     for p in preps), share(faster), 1),
        Verdict("it ends with a lower training loss",
                "final train loss " + ", ".join(f"{p} {runs[p]['final_train_loss']:.3f}"
                                                for p in preps), share(lower), 1),
    ]
    for when in ("init", "trained"):
        ref = s["none"][when]["eps"][main_i]["mean_abs"]
        ratio = {p: s[p][when]["eps"][main_i]["mean_abs"] / ref for p in others}
        out.append(Verdict(
            f"the loss reacts more to a random δW with raw pixels ({WHEN[when]})",
            f"mean |ΔL| at ε = {MAIN_EPSILON:g} relative to none: "
            + ", ".join(f"{p} {r:.2g}" for p, r in ratio.items()),
            share([p for p, r in ratio.items() if r < 1]), 1))
    return out


if __name__ == "__main__":
    main()
