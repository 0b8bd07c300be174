"""The statistics core on a hard input: mean 1e4, standard deviation 1e-2, in float32.

float32 holds such x to ~1e-3 (ulp(1e4) = 2⁻¹⁰), so the data are exact only as float32 values:
the references are float64 NumPy statistics of those values. A mean over n float32 values has a
rounding error δ = μ̂ − μ of a few ulp(1)·|μ| (here ~0.1σ); the two-pass variance is then
E[(x − μ̂)²] = σ² + δ² up to a float32 sum of squares (1e-5 relative), which is what these tests
pin (any float32 formula inherits δ; a single pass would have to match this). E[x²] − E[x]², the
single pass without a shift, loses everything here (checked too, so the tests can fail); grouped
statistics combined from per-channel ones by the law of total variance were 2% off.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from normlab.nn.stats import group_moments, group_norm_act, moments

U = 2.0**-24  # unit roundoff of float32
SHAPE = (16, 8, 8, 32)


@pytest.fixture(scope="module")
def hard_x():
    x = (1e4 + 1e-2 * np.random.default_rng(0).standard_normal(SHAPE)).astype(np.float32)
    return x, x.astype(np.float64)


def test_batch_moments_two_pass_on_large_mean_small_variance(hard_x):
    x, x64 = hard_x
    mean, var = (np.asarray(v, np.float64).ravel() for v in moments(jnp.asarray(x), (0, 1, 2)))
    ref_mean, ref_var = x64.mean((0, 1, 2)), x64.var((0, 1, 2))
    delta = mean - ref_mean
    # the mean is a float32 sum: a few ulp(1)·|μ| off, never more
    assert np.max(np.abs(delta)) <= 16 * U * 1e4
    np.testing.assert_allclose(var, ref_var + delta**2, rtol=1e-5)
    # the unshifted single pass fails the same check by orders of magnitude
    xf = jnp.asarray(x)
    naive = np.asarray(jnp.mean(xf * xf, (0, 1, 2)) - jnp.mean(xf, (0, 1, 2)) ** 2, np.float64)
    assert np.max(np.abs(naive - ref_var - delta**2) / ref_var) > 1.0


@pytest.mark.parametrize("groups", [1, 4, 32])  # LayerNorm (its long-row path), GN, InstanceNorm
def test_group_norm_on_large_mean_small_variance(hard_x, groups):
    x, x64 = hard_x
    y = np.asarray(group_norm_act(jnp.asarray(x), groups, 0.0), np.float64)
    xg = x64.reshape(*SHAPE[:-1], groups, SHAPE[-1] // groups)
    mu = xg.mean((1, 2, 4), keepdims=True)
    sd = np.sqrt(xg.var((1, 2, 4), keepdims=True))
    ref = ((xg - mu) / sd).reshape(SHAPE)
    # With the mean's rounding δ (above), two-pass statistics are μ̂ = μ + δ and σ̂² = σ² + δ²,
    # so y = (x − μ̂)/σ̂ = ref·σ/σ̂ + o with o = −δ/σ̂ the same for a whole group, and
    # σ/σ̂ = sqrt(1 − o²); o is read off as the group's mean of y
    yg = y.reshape(xg.shape)
    offset = yg.mean((1, 2, 4), keepdims=True)
    assert np.max(np.abs(offset)) <= 16 * U * 1e4 / np.min(sd)
    np.testing.assert_allclose(yg, ref.reshape(xg.shape) * np.sqrt(1 - offset**2) + offset,
                               rtol=0, atol=1e-4)


def test_group_moments_two_pass_on_large_mean_small_variance(hard_x):
    x, x64 = hard_x
    mean, var = (np.asarray(v, np.float64) for v in group_moments(jnp.asarray(x), 4))
    xg = x64.reshape(*SHAPE[:-1], 4, SHAPE[-1] // 4)
    ref_mean = np.repeat(xg.mean((1, 2, 4)), SHAPE[-1] // 4, axis=-1)[:, None, None]
    ref_var = np.repeat(xg.var((1, 2, 4)), SHAPE[-1] // 4, axis=-1)[:, None, None]
    delta = mean - ref_mean
    assert np.max(np.abs(delta)) <= 16 * U * 1e4
    np.testing.assert_allclose(var, ref_var + delta**2, rtol=1e-5)
