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

    python experiments/e8_optimizers/run.py            # 33 one-seed runs, 11 of 5 seeds
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
    best_metric,
    choose_lr,
    final_metric,
    steps_to_reach,
    steps_to_reach_across,
)
from normlab.reports.experiment import (
    load_results,
    parse_experiment_args,
    record_runs,
    sibling_module,
    train_seeds,
)

e8_report = sibling_module(__file__, "e8_report")  # the report step
# verdicts: the report step's, read by tests/test_results_guard.py from this module
CONFIG, LADDER, verdicts, write_report = (e8_report.CONFIG, e8_report.LADDER, e8_report.verdicts,
                                          e8_report.write_report)

DEFAULT_LR = {"sgd": 0.1, "momentum": 0.01, "nesterov": 0.01, "adagrad": 0.01,
              "rmsprop": 1e-3, "adam": 1e-3, "adamw": 1e-3}
MAX_EXTEND = 3
SCHEDULE_OPT = "momentum"
SCHEDULES = ("constant", "step", "exponential", "inverse_time", "cosine")
THRESHOLDS = (0.85, 0.88)
SEEDS = (0, 1, 2, 3, 4)  # every chosen setting: one program of these seeds (`num_seeds`)
SEARCH_SEEDS = (0,)  # the lr grids and the schedules' base lr: one run per rung
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


if __name__ == "__main__":
    main()
