"""wilson_interval against the Wilson score interval computed from its definition: the set of
proportions π with |p − π| ≤ z·√(π(1−π)/n), i.e. the roots of the quadratic
(1 + z²/n)π² − (2p + z²/n)π + p² = 0, solved here in float64 with np.roots."""

import numpy as np
import pytest

from normlab.sample_stats import wilson_interval

Z95 = 1.959963984540054  # the normal 0.975 quantile


@pytest.mark.parametrize("k,n", [(0, 5), (3, 5), (5, 5), (1, 10), (7, 10), (50, 100)])
def test_wilson_interval_is_the_score_test_inversion(k, n):
    p, z2 = k / n, Z95**2
    low, high = sorted(np.roots([1 + z2 / n, -(2 * p + z2 / n), p * p]).real)
    assert wilson_interval(k, n) == pytest.approx((max(low, 0.0), min(high, 1.0)), abs=1e-12)


def test_wilson_interval_level_and_errors():
    assert wilson_interval(5, 5)[0] == pytest.approx(5 / (5 + Z95**2), rel=1e-12)  # k = n: n/(n+z²)
    assert wilson_interval(3, 5, 0.5)[1] < wilson_interval(3, 5)[1]
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(6, 5)
