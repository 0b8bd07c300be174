"""E8's report step: the tables, figures and verdicts from results.json alone (run.py trains;
`--report-only` calls `write_report` without training)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from normlab.reports import (
    Report,
    RunResult,
    Verdict,
    fmt,
    fmt_mean_ci,
    new_figure,
    plot_curves,
    summarize,
    verdict_table,
    welch_test,
)
from normlab.reports.experiment import report_results, show_training_runs

CONFIG = "configs/e8_optimizers.py"
LADDER = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # the lr search's rungs
ALPHA = 0.05  # a difference counts where its two-sided Welch p is below this


def _steps_cell(s: dict[str, Any]) -> str:
    if s["reached"] == 0:
        return f"never (0 of {s['n']})"
    median, hi = ("∞" if np.isinf(s[k]) else f"{s[k]:.0f}" for k in ("median", "high"))
    return f"{median} [{s['low']:.0f}, {hi}]" + (
        f" ({s['reached']} of {s['n']})" if s["reached"] < s["n"] else "")


def _row(label: str, k: dict[str, Any], thresholds) -> list[Any]:
    return [label, f"{k['lr']:g}",
            *(fmt_mean_ci(k[key], ".4f", show_n=False) for key in
              ("final_val_accuracy", "final_test_accuracy", "best_test_accuracy",
               "final_train_loss", "late_std")),
            *(_steps_cell(k["median_steps_to"][str(t)]) for t in thresholds),
            f"{k['seconds']:.0f}" if k["seconds"] else None]


def _curves_figure(runs: dict[str, RunResult], title: str, ylim, lr_panel: bool = False):
    fig, axes = new_figure(3 if lr_panel else 2)
    if lr_panel:
        plot_curves(axes[0], {k: r.series("lr") for k, r in runs.items()}, xlabel="step",
                    ylabel="learning rate", title=title)
    plot_curves(axes[-2], {k: r.series("train_loss") for k, r in runs.items()}, xlabel="step",
                ylabel="train loss (mean of 100 steps)", logy=True,
                title="" if lr_panel else title)
    plot_curves(axes[-1], {k: r.series("test_accuracy") for k, r in runs.items()},
                xlabel="step", ylabel="test accuracy", ylim=ylim)
    return fig


def _seeds_text(seeds: Sequence[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}–{seeds[-1]}"


def write_report(report: Report, results: dict[str, Any], curves: dict | None) -> None:
    """The report from `results` alone; the training curves drawn from `curves` (None:
    --report-only, the committed figures are embedded)."""
    tiny, seeds, search = results["tiny"], results["seeds"], results["search_seeds"]
    n, n_search = len(seeds), len(search)
    thresholds = results["thresholds"]
    best, grid = results["lr_star"], results["grid"]
    opt_numbers, sched_numbers = results["optimizers"], results["schedules"]
    bases = list(next(iter(sched_numbers.values()))["val_by_base"])
    report.facts.update({
        "data": "digits (tiny)" if tiny else "Fashion-MNIST: train on train[:55000], "
                "validation train[55000:], test = the 10,000 test images",
        "net": "flatten → 3 × (Dense(100) → ReLU) → Dense(10), Kaiming-normal, no norm, "
               "standardized inputs, batch " + ("32, 300 steps, evaluation every 20 steps"
                                               if tiny else
                                               "128, 4,000 steps, evaluation every 200 steps"),
        "config": CONFIG,
        "seeds": f"{n} per chosen setting ({_seeds_text(seeds)}, one num_seeds program each); "
                 f"the lr grids and base lrs: {_seeds_text(search)}",
    })
    show_training_runs(report, results)
    report.text(
        "**Claim** (SPEC §1.6 and §3 E8; the lecture's optimizer comparison): on one net and "
        "data set, momentum (heavy ball, Nesterov) and the adaptive methods (AdaGrad, RMSProp, "
        "Adam, AdamW) train faster than plain SGD; decaying the learning rate (step, "
        "exponential, 1/t, cosine with warm-up) ends lower than a constant rate.\n\n"
        "**Fairness**: one learning rate for all would favour whichever optimizer it suits, so "
        "every optimizer gets its own grid on the half-decade ladder "
        f"{', '.join(f'{x:g}' for x in LADDER)}: three rungs around its customary default, "
        "extended past an end while the best final validation accuracy sits there. "
        "Hyper-parameters besides the lr: momentum 0.9 (heavy ball and Nesterov), AdaGrad with "
        "accumulator 0.1 and ε 1e-7, RMSProp decay 0.9, Adam(W) β = (0.9, 0.999), ε 1e-8; AdamW's "
        "decoupled decay λ = 0.1 (w ← w − lr·(Adam direction + λ·w), on every parameter). "
        f"The learning rates are chosen on validation, {_seeds_text(search)}; every chosen "
        f"setting is then trained with {_seeds_text(seeds)} (initial weights and batch order) "
        "as one program, and every table and verdict below rests on those "
        f"n = {n} seeds, the claims on the test set.\n\n"
        f"**Tests**: a verdict that compares two methods counts a difference where the means "
        f"differ in its direction and Welch's two-sided p < {ALPHA} (steps to a threshold: a "
        "seed that never reaches it counts as one evaluation past the end, a conservative "
        "bound; two sets without spread differ exactly when their means do)."
    )

    report.heading("Result")
    claims = verdicts(results)
    report.text(verdict_table(claims))

    report.heading(f"Learning-rate grid: final validation accuracy ({_seeds_text(search)}, "
                   f"n={n_search})")
    used = sorted({float(lr) for accs in grid.values() for lr in accs})
    rows = [[opt, f"{best[opt]:g}", *(accs.get(f"{lr:g}", "·") for lr in used)]
            for opt, accs in grid.items()]
    report.table(["optimizer", "lr*", *(f"{lr:g}" for lr in used)], rows, spec=".4f")
    report.text("· not run; — diverged (non-finite loss)." + (
        "" if n_search == 1 else f" Means over the {n_search} seeds."))
    fig, axes = new_figure(1)
    plot_curves(axes[0], {opt: ([float(lr) for lr in accs], [a or 0.0 for a in accs.values()])
                          for opt, accs in grid.items()},
                xlabel="learning rate", ylabel="final validation accuracy",
                styles={opt: {"marker": "o"} for opt in grid})
    axes[0].set_xscale("log")
    report.figure(fig, "lr_grid.png", "Final validation accuracy at every learning rate tried")

    report.heading(f"Optimizers, each at its own lr* (n={n})")
    header = ["optimizer", "lr*", "final val acc", "final test acc", "best test acc",
              "final train loss", "late std of test acc",
              *(f"steps to {t:.0%}: median [95% CI]" for t in thresholds),
              f"wall s ({n} seeds)"]
    report.table(header, [_row(opt, k, thresholds) for opt, k in opt_numbers.items()])
    report.text(f"Over the n = {n} seeds of each program: mean ± 95% CI (Student t) of the "
                "final validation and test accuracy, the best test accuracy, the final train "
                "loss (mean over the last 100 steps) and the \"late std\" (the standard "
                "deviation of the test accuracy over the evaluations of the last quarter of the "
                f"steps); \"steps to\": the first evaluation (every {20 if tiny else 200} steps) "
                "with that test accuracy, median over the seeds with its bootstrap CI. wall s: "
                f"the whole program's; the curves are {_seeds_text(search[:1])}'s.")
    ylim = None if tiny else (0.75, 0.92)
    caption = "Training loss and test accuracy vs step, each optimizer at its best lr"
    report.plot("optimizers.png", caption, None if curves is None else functools.partial(
        _curves_figure, curves["optimizers"], "each optimizer at its lr*", ylim))

    schedule_opt = results["schedule_optimizer"]
    report.heading(f"Schedules ({schedule_opt}, base lr {' or '.join(bases)}; n={n})")
    rows = [[s, *(fmt(k["val_by_base"][lr], ".4f") for lr in bases),
             *_row("", k, thresholds)[1:]] for s, k in sched_numbers.items()]
    report.table(["schedule", *(f"val acc @ {lr} ({_seeds_text(search)})" for lr in bases),
                  "chosen base lr", *header[2:]], rows)
    report.text(
        "Every decay ends at base lr/100 (cosine at 0): step ×0.1 at 1/2 and 3/4 of the steps, "
        "exponential base·0.01^(t/T), 1/t base/(1 + 99t/T); cosine after a linear warm-up over "
        "the first 5% of the steps. Each schedule keeps the base lr with the better final "
        f"validation accuracy on {_seeds_text(search)}; the other columns are over the n = {n} "
        "seeds of its program, as above. Welch tests against the constant lr:"
    )
    const = sched_numbers["constant"]
    report.table(
        ["schedule", "Δ final test acc vs constant", "p", "Δ late std vs constant", "p"],
        [[s, f"{_mean(k['final_test_accuracy']) - _mean(const['final_test_accuracy']):+.4f}",
          fmt(_welch_p(k["final_test_accuracy"], const["final_test_accuracy"]), ".3g"),
          f"{_mean(k['late_std']) - _mean(const['late_std']):+.4f}",
          fmt(_welch_p(k["late_std"], const["late_std"]), ".3g")]
         for s, k in sched_numbers.items() if s != "constant"])
    caption = ("Learning rate, training loss and test accuracy vs step for each schedule at its "
               "chosen base lr")
    report.plot("schedules.png", caption, None if curves is None else functools.partial(
        _curves_figure, curves["schedules"], f"{schedule_opt}: schedules", ylim, lr_panel=True))
    report_results(report, results, claims)


def _kept(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def _mean(values: Sequence[float | None]) -> float:
    """Mean over the seeds that did not diverge."""
    return summarize(values).mean


def _welch_p(a: Sequence[float | None], b: Sequence[float | None]) -> float:
    """Welch's two-sided p of mean(a) = mean(b) over the finite values; two sets without
    spread (steps on the evaluation grid) differ exactly when their means do (p 0 or 1)."""
    a, b = _kept(a), _kept(b)
    if np.var(a) == 0 and np.var(b) == 0:
        return 0.0 if np.mean(a) != np.mean(b) else 1.0
    return welch_test(a, b).p


def _lower(a: Sequence[float | None], b: Sequence[float | None]) -> tuple[bool, float]:
    """(mean(a) < mean(b) with Welch p < `ALPHA`, p)."""
    p = _welch_p(a, b)
    return _mean(a) < _mean(b) and p < ALPHA, p


def _share(won: Sequence[str], of: int) -> str:
    return "reproduced" if len(won) == of else "partly reproduced" if won else "not reproduced"


def _steps(k: dict[str, Any], threshold: float) -> list[float]:
    """Per-seed steps to `threshold`, a seed that never reaches it at one evaluation past the
    end (a lower bound: conservative in a comparison with one that does)."""
    never = k["total_steps"] + k["eval_every"]
    return [never if s is None else float(s) for s in k["steps_to"][str(threshold)]]


def _p_list(tests: dict[str, tuple[bool, float]]) -> str:
    # three digits: two would show a p of 0.0497 as 0.05
    return ", ".join(f"{name} {p:.3g}" for name, (_, p) in tests.items())


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    """The claims of E8 and what the numbers in results.json say about them (n: the seeds of
    the programs compared; a difference counts at Welch p < `ALPHA`)."""
    opts, scheds = results["optimizers"], results["schedules"]
    n = min(k["seeds"] for k in [*opts.values(), *scheds.values()])
    out = []
    t = results["thresholds"][0]
    if "sgd" in opts:
        sgd = _steps(opts["sgd"], t)
        tests = {o: _lower(_steps(opts[o], t), sgd) for o in opts if o != "sgd"}
        faster = [o for o, (yes, _) in tests.items() if yes]
        out.append(Verdict(
            f"momentum and adaptive methods reach {t:.0%} test accuracy in fewer steps than SGD",
            "mean steps over the seeds: " + ", ".join(
                f"{o} {np.mean(_steps(opts[o], t)):.0f}" for o in opts)
            + f" (Welch p vs SGD: {_p_list(tests)}); fewer than SGD at p < {ALPHA}: "
            + (", ".join(faster) or "none"), _share(faster, len(tests)), n))
    const = scheds["constant"]
    decays = [s for s in scheds if s != "constant"]
    tests = {s: _lower(const["final_test_accuracy"], scheds[s]["final_test_accuracy"])
             for s in decays}
    better = [s for s, (yes, _) in tests.items() if yes]
    accs = ", ".join(f"{s} {fmt_mean_ci(k['final_test_accuracy'], '.4f', show_n=False)}"
                     for s, k in scheds.items())
    out.append(Verdict(
        "a decaying lr ends with a higher test accuracy than a constant one",
        f"final test acc {accs} (Welch p vs constant: {_p_list(tests)}); above constant at "
        f"p < {ALPHA}: {', '.join(better) or 'none'}", _share(better, len(decays)), n))
    tests = {s: _lower(scheds[s]["late_std"], const["late_std"]) for s in decays}
    steadier = [s for s, (yes, _) in tests.items() if yes]
    out.append(Verdict(
        "a decaying lr stops the late fluctuation of the test accuracy",
        "late std " + ", ".join(f"{s} {fmt_mean_ci(k['late_std'], '.4f', show_n=False)}"
                                for s, k in scheds.items())
        + f" (Welch p vs constant: {_p_list(tests)}); below constant at p < {ALPHA}: "
        + (", ".join(steadier) or "none"), _share(steadier, len(decays)), n))
    return out
