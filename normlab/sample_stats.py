"""Statistics of a sample of per-seed values: mean, sample sd, Student-t CI, Welch's test and
its CI of the difference, percentile bootstrap. Plain numbers in, plain numbers out, so the
training loop (a K-seed run's summary) and the reports (`normlab.reports.stats`: a run's
metric, lr choice, steps to a threshold) share one definition of each.

    summarize([0.91, 0.92, 0.90])          # Summary(n=3, mean=0.91, sd=0.01, ci=0.0248)
    welch_test(accs_bn, accs_plain).p      # two-sided p of the difference of means
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95  # every CI is a 95% interval unless a caller asks otherwise


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean (NaN for no values)."""
    values = np.asarray(values, np.float64)
    return float(values.mean()) if len(values) else math.nan


def sample_sd(values: Sequence[float]) -> float:
    """The sample standard deviation, ddof=1 (NaN for fewer than 2 values)."""
    values = np.asarray(values, np.float64)
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def mean_ci(values: Sequence[float], level: float = LEVEL) -> float:
    """Half-width of the Student-t CI of the mean: t_{(1+level)/2, n−1} · sd / √n (NaN for
    fewer than 2 values)."""
    from scipy import stats as scipy_stats  # here: 0.6 s to import, and every train imports this

    n = len(values)
    if n < 2:
        return math.nan
    return float(scipy_stats.t.ppf((1 + level) / 2, n - 1) * sample_sd(values) / math.sqrt(n))


@dataclass(frozen=True)
class Summary:
    """Per-seed values summarized: n, mean, sample sd and the CI half-width of the mean."""

    n: int
    mean: float
    sd: float
    ci: float
    level: float = LEVEL


def summarize(values: Sequence[float | None], level: float = LEVEL) -> Summary:
    """`Summary` of the finite values (None and non-finite ones, e.g. diverged runs, are left
    out: n counts only what the mean is over)."""
    kept = _finite(values)
    return Summary(len(kept), mean(kept), sample_sd(kept), mean_ci(kept, level), level)


@dataclass(frozen=True)
class Welch:
    """Welch's unequal-variance t-test of mean(a) − mean(b): t, Welch–Satterthwaite dof and
    the two-sided p value."""

    t: float
    dof: float
    p: float


def _welch_terms(a: Sequence[float], b: Sequence[float], caller: str
                 ) -> tuple[np.float64, np.float64, np.float64]:
    """(mean(a) − mean(b), its standard error √(s_a²/n_a + s_b²/n_b), the Welch–Satterthwaite
    dof): what Welch's test and its CI share. Needs ≥ 2 values in each group."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"{caller}: need >= 2 values per group, got {len(a)} and {len(b)}")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    # NumPy scalars: equal constant groups give t = ±inf or nan (a warning), not an exception
    return a.mean() - b.mean(), np.sqrt(va + vb), dof


def welch_test(a: Sequence[float], b: Sequence[float]) -> Welch:
    """Welch's t-test of mean(a) = mean(b), two-sided. Needs ≥ 2 values in each group.

        welch_test([0.91, 0.92, 0.90], [0.88, 0.89, 0.87])   # Welch(t=3.67, dof=4.0, p=0.021)
    """
    from scipy import stats as scipy_stats  # as in mean_ci

    diff, se, dof = _welch_terms(a, b, "welch_test")
    t = diff / se
    return Welch(float(t), float(dof), float(2 * scipy_stats.t.sf(abs(t), dof)))


def welch_ci(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """The CI (low, high) of mean(a) − mean(b) that Welch's test inverts: the difference
    ± t_{(1+level)/2, dof} · √(s_a²/n_a + s_b²/n_b), dof the Welch–Satterthwaite one (as
    `welch_test`). It excludes 0 exactly when the two-sided p < 1 − level. Needs ≥ 2 values
    in each group.

        welch_ci([0.91, 0.92, 0.90], [0.88, 0.89, 0.87])   # (0.0073, 0.0527)
    """
    from scipy import stats as scipy_stats  # as in mean_ci

    diff, se, dof = _welch_terms(a, b, "welch_ci")
    half = scipy_stats.t.ppf((1 + level) / 2, dof) * se
    return float(diff - half), float(diff + half)


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], np.ndarray] = np.mean,
    *,
    level: float = LEVEL,
    n_boot: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap CI (low, high) of `statistic` (called as statistic(x, axis=-1) on
    an (n_boot, n) array of resamples) over n_boot resamples with replacement; `seed` makes it
    reproducible. Values may be ±inf (e.g. a threshold never reached) with a statistic that
    handles them, such as np.median."""
    values = np.asarray(values, np.float64)
    if len(values) == 0:
        raise ValueError("bootstrap_ci: values is empty")
    rng = np.random.default_rng(seed)
    resamples = values[rng.integers(0, len(values), size=(n_boot, len(values)))]
    stats = np.sort(statistic(resamples, axis=-1))
    tail = (1 - level) / 2
    # the order statistics at the two tails, not interpolated: inf stays inf
    low = stats[int(math.floor(tail * (n_boot - 1)))]
    high = stats[int(math.ceil((1 - tail) * (n_boot - 1)))]
    return float(low), float(high)


def wilson_interval(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval (low, high) of a proportion, k successes in n trials: centre
    (p + z²/2n)/(1 + z²/n), half-width z·√(p(1−p)/n + z²/4n²)/(1 + z²/n), z the normal
    (1+level)/2 quantile. Unlike p ± z·√(p(1−p)/n) it stays in [0, 1] and is not empty at
    k = 0 or k = n (0 of 5: (0, 0.43)).

        wilson_interval(5, 5)      # (0.566, 1.0)
    """
    from scipy import stats as scipy_stats  # as in mean_ci

    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval: need n >= 1 and 0 <= k <= n, got k={k}, n={n}")
    z = float(scipy_stats.norm.ppf((1 + level) / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # clipped: at k = 0 or n the bound is 0 or 1 up to rounding
    return max(0.0, centre - half), min(1.0, centre + half)
