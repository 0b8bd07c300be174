"""E9's report step: the tables, figures and verdicts from results.json alone (run.py trains
the searches and measures the sensitivity; `--report-only` calls `write_report` without
training). The constants are the experiment's design, shared by both."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from normlab.reports import (
    Report,
    Verdict,
    fmt_mean_ci,
    new_figure,
    plot_curves,
    verdict_table,
)
from normlab.reports.experiment import report_results, show_training_runs
from normlab.sample_stats import mean_ci, welch_test

CONFIG = "configs/e9_preprocessing.py"
PREPS = ("none", "zero_center", "standardize", "pca_whiten", "zca_whiten")
LR_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
LR_START = 0.1
SEEDS = (0, 1, 2, 3, 4)  # trained as one program per (preprocessing, lr) (`num_seeds`)
# tiny: 1,000 CIFAR-10 images, raw vs centered at lr 0.1 (where the full search finds raw pixels
# unstable), 300 steps, one seed; whitening's 3,072 × 3,072 eigendecomposition is left out (seconds)
TINY_PREPS, TINY_GRID = ("none", "zero_center"), (0.1,)
THRESHOLDS = (2.0, 1.8, 1.6, 1.4)
EPSILONS = (1e-4, 1e-3, 1e-2, 1e-1)
MAIN_EPSILON = 1e-3
DIRECTIONS = 32
LOSS_IMAGES = 2000
WHEN = {"init": "W at initialization", "trained": "trained W"}
FIRST_LAYER = ("head", "kernel")  # the linear classifier's only weight matrix
ALPHA = 0.05  # a difference counts where its two-sided Welch p is below this


def mean_loss(losses: Sequence[float | None]) -> float:
    """The seed mean of final losses; inf if a seed diverged (an lr that loses a seed is
    worse than any that trains them all)."""
    return math.inf if None in losses else float(np.mean(losses))


def lower(a: Sequence[float], b: Sequence[float]) -> tuple[bool, float | None]:
    """(mean(a) < mean(b) with Welch p < `ALPHA`, p); with one value per side (tiny) the
    means alone decide (p None). Two sets without spread (steps on a 50-step grid) differ
    exactly when their means do (p 0 or 1)."""
    if min(len(a), len(b)) < 2:
        return float(np.mean(a)) < float(np.mean(b)), None
    if np.var(a) == 0 and np.var(b) == 0:
        p = 0.0 if np.mean(a) != np.mean(b) else 1.0
    else:
        p = welch_test(a, b).p
    return float(np.mean(a)) < float(np.mean(b)) and p < ALPHA, p



def _lr_cell(search: dict[str, list[float | None]], lr: float, best: float) -> str:
    if f"{lr:g}" not in search:
        return "·"
    losses = search[f"{lr:g}"]
    diverged = sum(v is None for v in losses)
    text = ("diverged" if diverged == len(losses) else
            fmt_mean_ci(losses, ".3f", show_n=False) + (f" ({diverged} diverged)"
                                                         if diverged else ""))
    return f"**{text}**" if lr == best else text


def _never_as(steps: Sequence[int | None], total: int) -> list[float]:
    """Steps to a threshold with "never" counted as one log interval past the end: a lower
    bound, so a comparison with a run that never gets there is conservative."""
    return [total + 50 if s is None else float(s) for s in steps]


def _steps_cell(steps: Sequence[int | None]) -> str:
    reached = [s for s in steps if s is not None]
    if not reached:
        return "—"
    text = f"{np.median(reached):g}" if len(steps) == 1 else (
        f"{np.median(reached):g} [{min(reached)}–{max(reached)}]")
    return text + ("" if len(reached) == len(steps) else f" ({len(reached)}/{len(steps)})")


def _mean_ratio(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{np.mean(values):.3g} ± {mean_ci(values):.2g}"



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
    show_training_runs(report, results)
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

    seeds = results["seeds"]
    report.facts["seeds"] = (f"{len(seeds)} ({', '.join(map(str, seeds))}): init and data "
                             "order, one program per (preprocessing, lr) (`num_seeds`)")

    report.heading("Learning-rate search")
    report.table(["preprocessing", *(f"lr {lr:g}" for lr in grid)],
                 [[p, *(_lr_cell(summary[p]["lr_search"], lr, best_lr[p]) for lr in grid)]
                  for p in preps])
    report.text(f"Final training loss (all training images, after the last step), mean ± 95% "
                f"CI over the n={len(seeds)} seeds, at each rate the search tried (· not "
                "tried; **bold**: the best by the seed mean, used below; a rate where a seed "
                "diverged scores worst).")

    report.heading("Convergence at each preprocessing's best learning rate")
    rows = []
    for p in preps:
        r = summary[p]
        edge = best_lr[p] in (grid[0], grid[-1]) and len(grid) > 1
        rows.append([p, f"{best_lr[p]:g}" + (" (grid edge)" if edge else ""),
                     *(_steps_cell(r["steps_to_loss"][str(t)]) for t in THRESHOLDS),
                     *(fmt_mean_ci(r[k], ".4f", show_n=False)
                       for k in ("final_train_loss", "val_accuracy", "test_accuracy"))])
    report.table(["preprocessing", "best lr", *(f"steps to loss {t:g}" for t in THRESHOLDS),
                  "final train loss", "val acc", "test acc"], rows)
    report.text(f"n={len(seeds)} seeds per row. \"steps to loss\": the first logged step "
                "(every 50) whose training loss, averaged over the 50 steps, is at or below "
                "the threshold: median [range] over the seeds, (k/n) where only k seeds got "
                "there, — never. Losses and accuracies: mean ± 95% CI (Student t).")
    caption = ("Training loss and validation accuracy at each preprocessing's best learning "
               f"rate (seed {seeds[0]}), and the final training loss (seed mean) at every "
               "rate tried")

    def draw():
        fig, axes = new_figure(3)
        plot_curves(axes[0], {f"{p} (lr {best_lr[p]:g})": best[p][0].series("train_loss")
                              for p in preps}, xlabel="step", ylabel="training loss", logy=True)
        plot_curves(axes[1], {f"{p} (lr {best_lr[p]:g})": best[p][0].series("val_accuracy")
                              for p in preps}, xlabel="step", ylabel="validation accuracy")
        curves = {}
        for p in preps:
            lrs = sorted(float(lr) for lr in summary[p]["lr_search"])
            curves[p] = (lrs, [mean_loss(summary[p]["lr_search"][f"{lr:g}"]) for lr in lrs])
        plot_curves(axes[2], {p: (x, np.where(np.isfinite(y), y, np.nan))
                              for p, (x, y) in curves.items()},
                    xlabel="learning rate", ylabel="final training loss", logy=True)
        axes[2].set_xscale("log")
        return fig

    report.plot("convergence.png", caption, None if best is None else draw)

    report.heading("Loss change under a small random perturbation of the weights")
    report.text(
        f"δW = ε·‖W‖_F·U/‖U‖_F with U a standard Gaussian matrix (the same {DIRECTIONS} "
        "directions for every preprocessing and seed), and ΔL = L(W ± δW) − L(W) for the mean "
        f"cross-entropy on {images:,} training images. Each ±δ pair splits ΔL into its odd "
        "part (ΔL₊ − ΔL₋)/2 = gradient·δW + O(ε³), the first-order change, and its even part "
        "(ΔL₊ + ΔL₋)/2 = ½·δWᵀHδW + O(ε⁴), the curvature along δW. \"init\": each seed's "
        "own initial W (LeCun normal: for a seed, the same draw for every preprocessing, so "
        "at init the comparison is purely one of input geometry); \"trained\": after "
        "training at the best lr. \"mean share\" = ‖E[x]‖² / E‖x‖², the part of the inputs' "
        f"energy that is their mean (on these images; the same for every seed). Values: mean "
        f"over the n={len(seeds)} seeds; \"× none\": the ratio to raw pixels of the same "
        "seed, mean ± 95% CI over the seeds."
    )
    main_i = EPSILONS.index(MAIN_EPSILON)

    def seed_mean(p: str, when: str, key: str, i: int = main_i) -> float:
        """The seed mean of sensitivity[p][when][key] ("loss", "weight_norm"), or of the ε_i
        entry's `key`."""
        return float(np.mean([s[when][key] if key in s[when] else s[when]["eps"][i][key]
                              for s in sensitivity[p]["seeds"]]))

    report.table(["preprocessing", "mean share", "E‖x‖²", "‖W‖ init", "‖W‖ trained"],
                 [[p, sensitivity[p]["mean_share"], sensitivity[p]["input_norm2"],
                   seed_mean(p, "init", "weight_norm"), seed_mean(p, "trained", "weight_norm")]
                  for p in preps], spec=".3g")
    for label in ("init", "trained"):
        rows = []
        for p in preps:
            rows.append([p, seed_mean(p, label, "loss"), seed_mean(p, label, "mean_abs"),
                         _mean_ratio(_ratios(sensitivity, p, label, "mean_abs")),
                         seed_mean(p, label, "first_order"), seed_mean(p, label, "second_order"),
                         _mean_ratio(_ratios(sensitivity, p, label, "second_order"))])
        report.text(f"**{WHEN[label]}**")
        report.table(["preprocessing", "L", f"mean |ΔL|, ε {MAIN_EPSILON:g}", "× none",
                      "odd part", "even part", "× none"], rows, spec=".3g")
    fig, axes = new_figure(2, 2)
    for row, label in enumerate(("init", "trained")):
        for col, (key, name) in enumerate((("mean_abs", "mean |ΔL|"),
                                           ("second_order", "even part (curvature)"))):
            ax = axes[2 * row + col]
            plot_curves(ax, {p: (list(EPSILONS),
                                 [seed_mean(p, label, key, i) for i in range(len(EPSILONS))])
                             for p in preps}, xlabel="relative perturbation ε", ylabel=name,
                        title=WHEN[label] + " (seed mean)", logy=True)
            ax.set_xscale("log")
    report.figure(fig, "perturbation.png", "Change of the training loss under a random "
                  "perturbation of relative size ε of the first layer's weights: mean |ΔL| "
                  "(left) and its even, curvature part (right), at init (top) and trained "
                  "(bottom), mean over the seeds")

    report.heading("Result")
    claims = verdicts(results)
    report.text(verdict_table(claims) + "\n\n" + (
        f"A comparison with raw pixels counts where the seed means differ in the claimed "
        f"direction with a two-sided Welch p < {ALPHA:g} (n={len(seeds)} per side); the "
        "sensitivity ratios where the 95% CI of the per-seed ratio lies below 1. The best lr "
        "is one choice per preprocessing, made on the seed-mean final training loss (the "
        "claim is one of optimization: validation and test accuracy play no part in it)."
        if len(seeds) > 1 else "One seed: the comparisons are of single values."))
    report_results(report, results, claims)


def _ratios(sensitivity: dict[str, Any], p: str, when: str, key: str) -> list[float]:
    """Per seed, `key` at the main ε of preprocessing p over raw pixels' (the same seed)."""
    main_i = EPSILONS.index(MAIN_EPSILON)
    return [mine[when]["eps"][main_i][key] / raw[when]["eps"][main_i][key]
            for mine, raw in zip(sensitivity[p]["seeds"], sensitivity["none"]["seeds"],
                                 strict=True)]


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    """The claims of E9 and what the per-seed numbers in results.json say about them."""
    runs, s = results["preps"], results["sensitivity"]
    preps, grid = list(runs), results.get("grid", list(LR_GRID))
    n, total = len(results["seeds"]), results["total_steps"]
    others = [p for p in preps if p != "none"]
    t = str(THRESHOLDS[1])

    def share(won: Sequence[str]) -> str:
        return ("reproduced" if len(won) == len(others) else
                "partly reproduced" if won else "not reproduced")

    def p_text(p: float | None) -> str:
        if p is None:
            return ""
        return " (every seed apart, no spread)" if p == 0 else f" (p {p:.2g})"

    larger = [p for p in others if runs[p]["lr"] > runs["none"]["lr"]]
    steps = {p: _never_as(runs[p]["steps_to_loss"][t], total) for p in preps}
    faster = {p: lower(steps[p], steps["none"]) for p in others}
    losses = {p: runs[p]["final_train_loss"] for p in preps}
    lower_loss = {p: lower(losses[p], losses["none"]) for p in others}
    out = [
        Verdict("centering/whitening allows a larger lr than raw pixels",
                "best lr (seed-mean final train loss) "
                + ", ".join(f"{p} {runs[p]['lr']:g}" for p in preps),
                share(larger) if len(grid) > 1 else "not tested", n),
        Verdict(f"it reaches a training loss of {t} in fewer steps",
                "median steps " + ", ".join(
                    f"{p} {_steps_cell(runs[p]['steps_to_loss'][t])}"
                    + (p_text(faster[p][1]) if p in faster else "") for p in preps),
                share([p for p, (won, _) in faster.items() if won]), n),
        Verdict("it ends with a lower training loss",
                "final train loss " + ", ".join(
                    f"{p} {np.mean(losses[p]):.3f}"
                    + (p_text(lower_loss[p][1]) if p in lower_loss else "") for p in preps),
                share([p for p, (won, _) in lower_loss.items() if won]), n),
    ]
    for when in ("init", "trained"):
        ratio = {p: _ratios(s, p, when, "mean_abs") for p in others}
        below = [p for p, r in ratio.items()
                 if np.mean(r) + (mean_ci(r) if len(r) > 1 else 0.0) < 1]
        out.append(Verdict(
            f"the loss reacts more to a random δW with raw pixels ({WHEN[when]})",
            f"mean |ΔL| at ε = {MAIN_EPSILON:g} relative to none: "
            + ", ".join(f"{p} {_mean_ratio(r)}" for p, r in ratio.items()),
            share(below), n))
    centered = runs["zero_center"]["val_accuracy"]
    whitened = [p for p in ("pca_whiten", "zca_whiten") if p in runs]
    if whitened:
        worse = {p: lower(runs[p]["val_accuracy"], centered) for p in whitened}
        out.append(Verdict(
            "whitening's lower training loss comes with a lower validation accuracy than "
            "zero-centering (it overfits)",
            f"val acc zero_center {fmt_mean_ci(centered, '.4f', show_n=False)}, " + ", ".join(
                f"{p} {fmt_mean_ci(runs[p]['val_accuracy'], '.4f', show_n=False)}"
                f"{p_text(worse[p][1])}" for p in whitened),
            "reproduced" if all(w for w, _ in worse.values()) else
            "partly reproduced" if any(w for w, _ in worse.values()) else "not reproduced", n))
    return out
