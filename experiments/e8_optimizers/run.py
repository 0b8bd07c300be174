"""E8: optimizers and learning-rate schedules on one net and data set (SPEC §1.6, §3 E8).

The net of configs/e8_optimizers.py (3 × 100 ReLU MLP, no normalization, batch 128, 4,000
steps of Fashion-MNIST) trained with SGD, SGD + momentum, Nesterov, AdaGrad, RMSProp, Adam and
AdamW, each at its own best constant learning rate, then SGD + momentum with the constant,
step, exponential, 1/t (inverse-time) and cosine-with-warm-up schedules.

Learning rates: the grid is the half-decade ladder 1e-4, 3e-4, 1e-3, ..., 3. Each optimizer
starts with the three rungs around its customary default (SGD 0.1; momentum and Nesterov 0.01,
i.e. SGD's step size × (1 − μ); AdaGrad 0.01; RMSProp, Adam and AdamW 1e-3); while the best final
validation accuracy (5,000 held-out training images) sits at an end of the rungs tried, the
next rung beyond it is run too (at most `MAX_EXTEND` times). The best rung is that optimizer's
lr*. Each schedule runs SGD + momentum at its lr* and at the next rung up (a decay tolerates a
larger start) and keeps the better on validation. The learning rates are chosen on seed 0
(`SEARCH_SEEDS`, one run per rung); every chosen setting is then trained with the five seeds
`SEEDS` (initial weights and batch order) as one `num_seeds` program, and the tables and
verdicts rest on those five: mean ± 95% CI, steps to a threshold as median with a bootstrap CI,
and Welch tests (p < `ALPHA`) wherever a verdict compares two methods.

    python experiments/e8_optimizers/run.py            # ~32 one-seed runs, 11 of 5 seeds
    python experiments/e8_optimizers/run.py --reuse    # reuse finished runs of the same code
    python experiments/e8_optimizers/run.py --report-only  # from results.json alone
    python experiments/e8_optimizers/run.py --tiny --out /tmp/e8    # digits, 2 seeds, seconds
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from normlab.reports import (
    Report,
    RunResult,
    Verdict,
    best_metric,
    choose_lr,
    final_metric,
    fmt,
    fmt_mean_ci,
    new_figure,
    plot_curves,
    steps_to_reach,
    steps_to_reach_across,
    summarize,
    verdict_table,
    welch_test,
)
from normlab.reports.experiment import (
    load_results,
    parse_experiment_args,
    record_runs,
    report_results,
    train_seeds,
)

CONFIG = "configs/e8_optimizers.py"
LADDER = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.01, "nesterov": 0.01, "adagrad": 0.01,
              "rmsprop": 1e-3, "adam": 1e-3, "adamw": 1e-3}
MAX_EXTEND = 3
SCHEDULE_OPT = "momentum"
SCHEDULES = ("constant", "step", "exponential", "inverse_time", "cosine")
THRESHOLDS = (0.85, 0.88)
SEEDS = (0, 1, 2, 3, 4)  # every chosen setting: one program of these seeds (`num_seeds`)
SEARCH_SEEDS = (0,)  # the lr grids and the schedules' base lr: one run per rung
ALPHA = 0.05  # a difference counts where its two-sided Welch p is below this
LATE = 0.25  # "late": the last quarter of the steps
# tiny: each optimizer at its default lr alone, constant vs cosine; the two seeds' program is
# both the search and the final runs
TINY = {"optimizers": ("sgd", "momentum", "adam"), "thresholds": (0.85, 0.9),
        "schedules": ("constant", "cosine"), "seeds": (0, 1), "search_seeds": (0, 1),
        "search": (0, 1), "arg": ",dataset=digits,steps=300,batch=32,eval_every=20"}
FULL = {"optimizers": tuple(DEFAULT_LR), "thresholds": THRESHOLDS, "schedules": SCHEDULES,
        "seeds": SEEDS, "search_seeds": SEARCH_SEEDS, "search": (MAX_EXTEND, 3), "arg": ""}


class Study:
    """Runs (or reuses) the training programs of this report, each once, by name."""

    def __init__(self, args, extra: str, search_seeds: Sequence[int]):
        self.args, self.extra, self.search_seeds = args, extra, tuple(search_seeds)
        self.runs: dict[str, list[RunResult]] = {}

    def run(self, opt: str, lr: float, schedule: str = "constant",
            seeds: Sequence[int] | None = None) -> list[RunResult]:
        """The runs (one per seed, default `search_seeds`) of one setting, trained as one
        `num_seeds` program."""
        seeds = tuple(seeds or self.search_seeds)
        name = f"{opt}_{schedule}_lr{lr:g}" + (
            f"_seeds{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else f"_seed{seeds[0]}")
        if name not in self.runs:
            spec = f"{CONFIG}:opt={opt},lr={lr},schedule={schedule}{self.extra}"
            self.runs[name] = train_seeds(self.args, name, spec, seeds)
        return self.runs[name]


def _val(runs: Sequence[RunResult]) -> float | None:
    """The final validation accuracy, mean over the seeds (None if one diverged)."""
    values = [final_metric(r, "val_accuracy") for r in runs]
    return None if None in values else float(np.mean(values))


def tune(
    study: Study, opt: str, max_extend: int, rungs: int = 3
) -> tuple[float, dict[float, list[RunResult]]]:
    """lr* of `opt` on the ladder (see the module docstring) and every run tried; `rungs`=1
    (the tiny version) runs the default alone."""
    i = LADDER.index(DEFAULT_LR[opt])
    tried = {lr: study.run(opt, lr) for lr in LADDER[max(i - rungs // 2, 0): i + rungs // 2 + 1]}
    for _ in range(max_extend):
        j = LADDER.index(best := choose_lr(tried, "val_accuracy"))
        edge = (j - 1 if best == min(tried) else j + 1 if best == max(tried) else None)
        if edge is None or not 0 <= edge < len(LADDER):
            break
        tried[LADDER[edge]] = study.run(opt, LADDER[edge])
    tried = dict(sorted(tried.items()))
    return choose_lr(tried, "val_accuracy"), tried


def late_std(run: RunResult) -> float:
    """Std of the test accuracy over the evaluations of the last `LATE` of the steps: how much
    it still fluctuates at the end."""
    steps, acc = run.series("test_accuracy")
    return float(np.std(acc[steps >= (1 - LATE) * steps.max()]))


def numbers(runs: list[RunResult], lr: float, thresholds: Sequence[float]) -> dict[str, Any]:
    """The numbers behind a table row, per seed (seed order), and the steps to each threshold
    over the seeds (median, bootstrap CI); `seconds`: the wall time of the program (all
    seeds)."""
    steps0, acc0 = runs[0].series("test_accuracy")
    reach = {str(t): steps_to_reach_across(runs, "test_accuracy", t) for t in thresholds}
    return {"lr": lr, "seeds": len(runs),
            "final_test_accuracy": [final_metric(r, "test_accuracy") for r in runs],
            "final_val_accuracy": [final_metric(r, "val_accuracy") for r in runs],
            "best_test_accuracy": [best_metric(r, "test_accuracy") for r in runs],
            "final_train_loss": [final_metric(r, "train_loss") for r in runs],
            "late_std": [late_std(r) for r in runs],
            "median_steps_to": {t: vars(s) for t, s in reach.items()},
            "steps_to": {str(t): [steps_to_reach(*r.series("test_accuracy"), t) for r in runs]
                         for t in thresholds},
            "total_steps": int(steps0.max()), "eval_every": int(np.diff(steps0).max()),
            "steps": steps0.tolist(), "test_accuracy": acc0.tolist(),
            "diverged": [r.diverged for r in runs],
            "seconds": sum(r.seconds or 0.0 for r in runs) or None}


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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs E8 (or, with --report-only, reads its results.json) and writes the report; returns
    the results."""
    args = parse_experiment_args(__doc__, __file__, argv)
    report = Report("E8: optimizers and learning-rate schedules", args.out, command=args.command)
    results, runs = (load_results(args.out), None) if args.report_only else collect(args)
    write_report(report, results, runs)
    return results


def collect(args) -> tuple[dict[str, Any], dict[str, dict[str, RunResult]]]:
    """Tunes and trains E8's runs; (the numbers the report shows, the runs behind its
    curves)."""
    size = TINY if args.tiny else FULL
    optimizers, thresholds, seeds = size["optimizers"], size["thresholds"], size["seeds"]
    study = Study(args, size["arg"], size["search_seeds"])
    max_extend, rungs = size["search"]
    tuned = {opt: tune(study, opt, max_extend, rungs) for opt in optimizers}
    best = {opt: lr for opt, (lr, _) in tuned.items()}
    base = best[SCHEDULE_OPT]
    bases = (base,) if args.tiny else (base, LADDER[min(LADDER.index(base) + 1, len(LADDER) - 1)])
    sched_runs = {s: {lr: study.run(SCHEDULE_OPT, lr, s) for lr in bases}
                  for s in size["schedules"]}
    chosen = {s: choose_lr(r, "val_accuracy") for s, r in sched_runs.items()}
    # every chosen setting with all the seeds, one program each (the constant schedule at
    # momentum's lr* is the momentum optimizer's program)
    opt_numbers = {opt: numbers(study.run(opt, best[opt], seeds=seeds), best[opt], thresholds)
                   for opt in optimizers}
    sched_numbers = {s: numbers(study.run(SCHEDULE_OPT, chosen[s], s, seeds=seeds), chosen[s],
                                thresholds) for s in size["schedules"]}
    for s, runs in sched_runs.items():
        sched_numbers[s]["val_by_base"] = {f"{lr:g}": _val(r) for lr, r in runs.items()}
    results = {"tiny": args.tiny, "seeds": list(seeds),
               "search_seeds": list(size["search_seeds"]), "thresholds": list(thresholds),
               "lr_star": best, "schedule_optimizer": SCHEDULE_OPT,
               "grid": {opt: {f"{lr:g}": _val(r) for lr, r in runs.items()}
                        for opt, (_, runs) in tuned.items()},
               "optimizers": opt_numbers, "schedules": sched_numbers,
               "training_runs": record_runs(args, [r for runs in study.runs.values()
                                                   for r in runs])}
    # the curves: the first seed of each chosen setting's search program
    curves = {"optimizers": {f"{opt} ({best[opt]:g})": tuned[opt][1][best[opt]][0]
                             for opt in optimizers},
              "schedules": {f"{s} ({chosen[s]:g})": sched_runs[s][chosen[s]][0]
                            for s in sched_runs}}
    return results, curves


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
    if results.get("training_runs"):
        report.facts["training runs"] = results["training_runs"]
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
    if curves is None:
        report.existing_figure("optimizers.png", caption)
    else:
        report.figure(_curves_figure(curves["optimizers"], "each optimizer at its lr*", ylim),
                      "optimizers.png", caption)

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
          fmt(_welch_p(k["final_test_accuracy"], const["final_test_accuracy"]), ".2g"),
          f"{_mean(k['late_std']) - _mean(const['late_std']):+.4f}",
          fmt(_welch_p(k["late_std"], const["late_std"]), ".2g")]
         for s, k in sched_numbers.items() if s != "constant"])
    caption = ("Learning rate, training loss and test accuracy vs step for each schedule at its "
               "chosen base lr")
    if curves is None:
        report.existing_figure("schedules.png", caption)
    else:
        report.figure(_curves_figure(curves["schedules"], f"{schedule_opt}: schedules", ylim,
                                     lr_panel=True), "schedules.png", caption)
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
    return ", ".join(f"{name} {p:.2g}" for name, (_, p) in tests.items())


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    """The claims of E8 and what the numbers in results.json say about them (n: the seeds of
    the programs compared; a difference counts at Welch p < `ALPHA`)."""
    if "search_seeds" not in results:
        return _verdicts_before_num_seeds(results)
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
            "median steps: " + ", ".join(
                f"{o} {opts[o]['median_steps_to'][str(t)]['median']:.0f}" for o in opts)
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


def _seed_mean(k: dict[str, Any], key: str) -> float:
    # the 3-seed results hold some statistics as the mean over the seeds alone
    value = k[key]
    return _mean(value) if isinstance(value, list) else value


def _verdicts_before_num_seeds(results: dict[str, Any]) -> list[Verdict]:
    """`verdicts` of the 3-seed results.json committed before the 5-seed rerun."""
    opts, scheds = results["optimizers"], results["schedules"]
    thresholds = results.get("thresholds", list(FULL["thresholds"]))
    n = min(k["seeds"] for k in [*opts.values(), *scheds.values()])
    out = []
    t = thresholds[0]
    if "sgd" in opts:
        sgd = opts["sgd"]["median_steps_to"][str(t)]["median"]
        others = [o for o in opts if o != "sgd"]
        faster = [o for o in others if opts[o]["median_steps_to"][str(t)]["median"] < sgd]
        out.append(Verdict(
            f"momentum and adaptive methods reach {t:.0%} test accuracy in fewer steps than SGD",
            "median steps: " + ", ".join(
                f"{o} {opts[o]['median_steps_to'][str(t)]['median']:.0f}" for o in opts)
            + f"; fewer than SGD: {', '.join(faster) or 'none'}",
            _share(faster, len(others)), n))
    const = scheds["constant"]["final_test_accuracy"]
    decays = [s for s in scheds if s != "constant"]
    p = {s: welch_test(_kept(scheds[s]["final_test_accuracy"]), _kept(const)).p
         for s in decays} if n >= 2 else {}
    # higher in the mean, and (with seeds to test it) Welch p < 0.05
    better = [s for s in decays if _mean(scheds[s]["final_test_accuracy"]) > _mean(const)
              and p.get(s, 0.0) < 0.05]
    accs = ", ".join(f"{s} {fmt_mean_ci(k['final_test_accuracy'], '.4f', show_n=False)}"
                     for s, k in scheds.items())
    tests = f" (Welch p vs constant: {', '.join(f'{s} {v:.2g}' for s, v in p.items())})"
    out.append(Verdict(
        "a decaying lr ends with a higher test accuracy than a constant one",
        f"final test acc {accs}{tests if p else ''}; above constant: {', '.join(better) or 'none'}",
        _share(better, len(decays)), n))
    const_std = _seed_mean(scheds["constant"], "late_std")
    steadier = [s for s in decays if _seed_mean(scheds[s], "late_std") < const_std]
    out.append(Verdict(
        "a decaying lr stops the late fluctuation of the test accuracy",
        "late std " + ", ".join(f"{s} {_seed_mean(k, 'late_std'):.4f}"
                                for s, k in scheds.items()),
        _share(steadier, len(decays)), n))
    return out


if __name__ == "__main__":
    main()
