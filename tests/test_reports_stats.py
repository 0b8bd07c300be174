"""normlab.sample_stats (welch_ci included), normlab.reports.stats and the mean ± CI / verdict
formatting, against scipy and NumPy."""

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from normlab.reports import (
    RunResult,
    Verdict,
    best_metric,
    bootstrap_ci,
    choose_lr,
    final_metric,
    fmt_mean_ci,
    mean,
    mean_ci,
    mean_of_last,
    sample_sd,
    steps_to_reach,
    steps_to_reach_across,
    summarize,
    verdict_table,
    welch_test,
)
from normlab.sample_stats import welch_ci

RNG_SEED = 20240611


def make_run(values, key="val_accuracy", diverged=None, every=100) -> RunResult:
    """A run whose eval records hold `values` at steps every, 2·every, ... (train records, which
    lack the key, in between)."""
    records = []
    for i, v in enumerate(values):
        records.append({"step": (i + 1) * every - every // 2, "train_loss": 1.0})
        records.append({"step": (i + 1) * every, key: v})
    return RunResult("r", Path("/nonexistent"), records, diverged=diverged)


def test_final_best_and_mean_of_last_have_one_meaning_each():
    run = make_run([0.5, 0.9, 0.8, 0.85])
    assert final_metric(run, "val_accuracy") == 0.85
    assert best_metric(run, "val_accuracy") == 0.9
    assert mean_of_last(run, "val_accuracy", 3) == pytest.approx((0.9 + 0.8 + 0.85) / 3)
    assert mean_of_last(run, "val_accuracy", 5) is None  # fewer evaluations than asked
    assert final_metric(run, "missing") is None and best_metric(run, "missing") is None
    broken = make_run([0.5, 0.7], diverged="loss is nan at step 250")
    assert final_metric(broken, "val_accuracy") is None  # a diverged run has no final value
    assert mean_of_last(broken, "val_accuracy", 1) is None
    assert best_metric(broken, "val_accuracy") == 0.7  # what it reached before diverging
    assert final_metric(make_run([0.5, float("nan")]), "val_accuracy") is None
    with pytest.raises(ValueError, match="k must be >= 1, got k=0"):
        mean_of_last(run, "val_accuracy", 0)


def test_steps_to_reach_above_and_below():
    steps, acc = [100, 200, 300], [0.8, 0.96, 0.97]
    assert steps_to_reach(steps, acc, 0.95) == 200
    assert steps_to_reach(steps, [2.3, 2.1, 1.9], 2.0, below=True) == 300
    assert steps_to_reach(steps, [2.3, 2.1, 2.05], 2.0, below=True) is None


def test_choose_lr_on_validation_with_ties_divergence_and_seeds():
    runs = {0.1: make_run([0.90]), 0.5: make_run([0.95]), 1.0: make_run([0.95]),
            2.0: make_run([0.99], diverged="nan")}
    assert choose_lr(runs, "val_accuracy") == 0.5  # tie with 1.0 → the smaller lr
    seeds = {0.1: [make_run([0.90]), make_run([0.94])], 0.5: [make_run([0.95]), make_run([0.88])]}
    assert choose_lr(seeds, "val_accuracy") == 0.1  # mean 0.92 > 0.915
    losses = {0.1: make_run([0.3], key="val_loss"), 0.5: make_run([0.2], key="val_loss")}
    assert choose_lr(losses, "val_loss", higher_is_better=False) == 0.5
    with pytest.raises(ValueError, match="key='test_accuracy' is a test metric"):
        choose_lr(runs, "test_accuracy")


def test_mean_sd_and_t_ci_against_numpy_and_scipy():
    x = np.random.default_rng(RNG_SEED).normal(0.9, 0.01, size=7)
    assert mean(x) == pytest.approx(np.sum(x) / 7, rel=1e-14)
    sd = math.sqrt(np.sum((x - x.mean()) ** 2) / 6)
    assert sample_sd(x) == pytest.approx(sd, rel=1e-12)
    # the interval scipy builds from the t distribution, independently
    low, high = scipy_stats.t.interval(0.95, 6, loc=x.mean(), scale=scipy_stats.sem(x))
    assert mean_ci(x) == pytest.approx((high - low) / 2, rel=1e-12)
    assert mean_ci(x, level=0.99) > mean_ci(x)
    assert math.isnan(sample_sd([1.0])) and math.isnan(mean_ci([1.0]))
    s = summarize([*x, None, float("nan")])  # diverged runs are left out of n
    assert s.n == 7 and s.mean == pytest.approx(x.mean()) and s.ci == pytest.approx(mean_ci(x))


def test_t_ci_covers_the_true_mean_at_its_level():
    # 4,000 samples of n=4 from N(0, 1): coverage 0.95 ± 3.5σ of a binomial proportion
    samples = np.random.default_rng(RNG_SEED).normal(size=(4000, 4))
    covered = np.mean([abs(s.mean()) <= mean_ci(s) for s in samples])
    assert abs(covered - 0.95) < 3.5 * math.sqrt(0.95 * 0.05 / 4000)


@pytest.mark.parametrize("sizes", [(5, 5), (3, 8)])
def test_welch_test_matches_scipy(sizes):
    rng = np.random.default_rng(RNG_SEED)
    a = rng.normal(0.91, 0.01, size=sizes[0])
    b = rng.normal(0.90, 0.03, size=sizes[1])
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    got = welch_test(a, b)
    assert got.t == pytest.approx(ref.statistic, rel=1e-12)
    assert got.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert got.dof == pytest.approx(ref.df, rel=1e-12)
    with pytest.raises(ValueError, match="need >= 2 values per group, got 1 and 5"):
        welch_test([1.0], b[:5])


@pytest.mark.parametrize("sizes", [(5, 5), (3, 8)])
def test_welch_ci_matches_scipy_and_inverts_the_test(sizes):
    rng = np.random.default_rng(RNG_SEED)
    a = rng.normal(0.91, 0.01, size=sizes[0])
    b = rng.normal(0.90, 0.03, size=sizes[1])
    ref = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert welch_ci(a, b) == pytest.approx((ref.low, ref.high), rel=1e-10)
    ref99 = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.99)
    assert welch_ci(a, b, 0.99) == pytest.approx((ref99.low, ref99.high), rel=1e-10)
    # a bound at the difference shifted until the test's two-sided p is exactly 1 − level
    low, _ = welch_ci(a, b)
    assert welch_test(a - low, b).p == pytest.approx(0.05, rel=1e-8)
    with pytest.raises(ValueError, match="need >= 2 values per group, got 2 and 1"):
        welch_ci(a[:2], b[:1])


def test_bootstrap_ci_agrees_with_scipy_percentile_bootstrap():
    x = np.random.default_rng(RNG_SEED).exponential(size=30)
    low, high = bootstrap_ci(x, n_boot=20_000, seed=1)
    ref = scipy_stats.bootstrap((x,), np.mean, method="percentile", n_resamples=20_000,
                                random_state=2).confidence_interval
    # two Monte Carlo estimates of the same quantiles: agree to a few % of the interval width
    width = ref.high - ref.low
    assert abs(low - ref.low) < 0.05 * width and abs(high - ref.high) < 0.05 * width
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)  # reproducible


def test_steps_to_reach_across_seeds_counts_runs_that_never_reach():
    # hits at steps 200, 300, 300, 400 and one run that never reaches 0.95
    runs = [make_run(v) for v in ([0.9, 0.96], [0.9, 0.9, 0.95], [0.9, 0.94, 0.97],
                                  [0.9, 0.9, 0.9, 0.99], [0.9, 0.9])]
    got = steps_to_reach_across(runs, "val_accuracy", 0.95, n_boot=2000)
    assert (got.median, got.reached, got.n) == (300.0, 4, 5)
    assert got.low <= 300 <= got.high
    assert math.isinf(got.high)  # resamples with 3+ non-reaching runs have median inf
    assert got.low >= 200


def test_fmt_mean_ci_states_n_and_the_interval():
    x = [0.91, 0.912, 0.914]
    half = scipy_stats.t.ppf(0.975, 2) * np.std(x, ddof=1) / math.sqrt(3)
    assert fmt_mean_ci(x) == f"0.912 ± {half:.3f} (95% CI, n=3)"
    assert fmt_mean_ci(x, ".1f", scale=100, show_n=False) == f"91.2 ± {100 * half:.1f}"
    assert fmt_mean_ci([0.91, None, 0.914]).endswith("(95% CI, n=2 of 3)")
    assert fmt_mean_ci([0.91]) == "0.910 (n=1)"
    assert fmt_mean_ci([None]) == "— (n=0 of 1)"


def test_verdict_table_marks_few_seeds_preliminary():
    text = verdict_table([
        Verdict("BN reaches 97% sooner", "2100 vs 6800 steps", "reproduced", n=1),
        Verdict("GN+PN beats GN", "+1.2 pts, p=0.01", "reproduced", n=5),
        Verdict("dead ReLUs", "not provoked", "not tested"),
    ])
    lines = text.splitlines()
    assert lines[0] == "| claim | evidence | n | verdict |"
    assert lines[2].endswith("| 1 | preliminary: reproduced |")
    assert lines[3].endswith("| 5 | reproduced |")
    assert lines[4].endswith("| — | not tested |")
    with pytest.raises(ValueError, match="verdict must be one of"):
        Verdict("x", "y", "confirmed")
