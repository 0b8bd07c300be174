"""The numbers a verdict rests on: one meaning each for a run's metric, across seeds with a CI.

A run's metric (`RunResult` records, evaluated every `eval_every_steps`):
- `final_metric(run, key)`: the value at the last record holding `key` (the loop always
  evaluates the last step, so for a finished run this is the value at the end of training);
  None if the run diverged, never logged `key`, or its last value is not finite.
- `best_metric(run, key)`: the maximum over the run's evaluations (None if never logged).
- `mean_of_last(run, key, k)`: the mean of the last k evaluations (smooths eval noise).
- `choose_lr(runs_by_lr, key)`: the lr with the best final value of a *validation* metric.

Across seeds (a list of per-seed values): `mean`, `sample_sd` (ddof=1), `mean_ci` (Student-t
95% CI half-width), `summarize`, `welch_test` (t, dof, two-sided p), `bootstrap_ci` (percentile
bootstrap) — in `normlab.sample_stats` (the training loop's K-seed summary uses them too;
`normlab.reports` exports them) — and `steps_to_reach_across` (median steps to a threshold over
seeds, bootstrap CI).

    accs = [final_metric(r, "test_accuracy") for r in runs]
    fmt_mean_ci(accs)                      # "0.912 ± 0.004 (95% CI, n=5)"
    welch_test(accs_bn, accs_plain).p      # two-sided p of the difference of means
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from normlab.reports.runs import RunResult, steps_to_reach
from normlab.sample_stats import LEVEL, bootstrap_ci


def final_metric(run: RunResult, key: str) -> float | None:
    """The value of `key` at the run's last record holding it (None: diverged run, never
    logged, or not finite).

        final_metric(run, "val_accuracy")      # 0.9731
    """
    if run.diverged:
        return None
    value = run.final(key)
    return value if value is not None and math.isfinite(value) else None


def best_metric(run: RunResult, key: str) -> float | None:
    """The maximum of `key` over the run's evaluations, a diverged run's included (None if it
    never logged a finite value)."""
    _, values = run.series(key)
    values = values[np.isfinite(values)]
    return float(values.max()) if len(values) else None


def mean_of_last(run: RunResult, key: str, k: int) -> float | None:
    """The mean of the last k logged values of `key` (None if the run diverged or logged fewer
    than k values)."""
    if k < 1:
        raise ValueError(f"mean_of_last: k must be >= 1, got k={k}")
    _, values = run.series(key)
    if run.diverged or len(values) < k:
        return None
    return float(values[-k:].mean())


def choose_lr(
    runs_by_lr: Mapping[float, RunResult | Sequence[RunResult]],
    key: str,
    *,
    higher_is_better: bool = True,
) -> float:
    """The lr whose run(s) have the best `final_metric(run, key)`, averaged over the seeds
    when a value is a list of runs; the smaller lr on a tie; a diverged run scores worst.
    `key` must be a validation metric: choosing on the test set would bias the test numbers.

        lr_star = choose_lr({0.1: run_a, 0.5: run_b}, "val_accuracy")
    """
    if "test" in key:
        raise ValueError(
            f"choose_lr: key={key!r} is a test metric; choose the lr on a validation metric "
            "(e.g. 'val_accuracy', 'val_loss')"
        )
    if not runs_by_lr:
        raise ValueError("choose_lr: runs_by_lr is empty; give at least one lr")
    worst = -math.inf if higher_is_better else math.inf

    def score(runs: RunResult | Sequence[RunResult]) -> float:
        runs = [runs] if isinstance(runs, RunResult) else list(runs)
        values = [final_metric(r, key) for r in runs]
        return worst if None in values else float(np.mean(values))

    scores = {lr: score(runs) for lr, runs in runs_by_lr.items()}
    pick = max if higher_is_better else min
    return pick(sorted(scores), key=lambda lr: scores[lr])


@dataclass(frozen=True)
class StepsToReach:
    """Steps to a threshold over seeds: median and its bootstrap CI (inf: the threshold is not
    reached by that bound), and how many of the n runs reached it."""

    median: float
    low: float
    high: float
    reached: int
    n: int


def steps_to_reach_across(
    runs: Sequence[RunResult],
    key: str,
    threshold: float,
    *,
    below: bool = False,
    level: float = LEVEL,
    n_boot: int = 10_000,
    seed: int = 0,
) -> StepsToReach:
    """First step with `key` >= threshold (`below`: <= threshold, for a loss) in each run, a
    run that never gets there counting as inf; the median over runs and its percentile
    bootstrap CI (the median, unlike the mean, is defined with runs that never reach it)."""
    if not runs:
        raise ValueError("steps_to_reach_across: runs is empty")
    hits = []
    for run in runs:
        steps, values = run.series(key)
        hit = steps_to_reach(steps, values, threshold, below=below)
        hits.append(math.inf if hit is None else float(hit))
    low, high = bootstrap_ci(hits, np.median, level=level, n_boot=n_boot, seed=seed)
    return StepsToReach(float(np.median(hits)), low, high,
                        sum(math.isfinite(h) for h in hits), len(hits))
