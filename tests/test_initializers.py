"""Initializers: exact fans, and the moments of large draws vs the formulas of SPEC §1.4."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normlab.nn.initializers import fans, make_initializer
from normlab.registry import INITIALIZERS

DENSE = (512, 400)  # fan_in 512, fan_out 400: 204,800 draws
CONV = (3, 3, 64, 384)  # fan_in 576, fan_out 3456: 221,184 draws


def _fans_ref(shape):
    receptive = int(np.prod(shape[:-2], dtype=np.int64))
    return receptive * shape[-2], receptive * shape[-1]


@pytest.mark.parametrize(("shape", "expected"), [
    ((128, 10), (128, 10)),
    ((3, 3, 16, 64), (144, 576)),
    ((5, 7, 2, 3), (70, 105)),
    ((4, 8, 16), (32, 64)),
    ((2, 3, 3, 3, 5), (54, 90)),
])
def test_fans_exact(shape, expected):
    assert fans(shape) == expected == _fans_ref(shape)


def _draw(name, shape, seed=0, **kw):
    w = make_initializer(name, **kw)(jax.random.key(seed), shape)
    assert w.shape == shape and w.dtype == jnp.float32
    return np.asarray(w, np.float64)


def _check_moments(w, std, mean=0.0):
    n = w.size
    # the sample std of n Gaussian/uniform draws has relative sd <= 1/sqrt(n) ≈ 0.22%: a 1%
    # bound is > 4 sd away, yet a fan off by any factor >= 1.02 fails it
    np.testing.assert_allclose(w.std(), std, rtol=1e-2)
    assert abs(w.mean() - mean) < 5 * std / math.sqrt(n)


# name, kwargs, std(fan_in, fan_out) written from the formula
GAUSSIAN_STD = [
    ("lecun_normal", {}, lambda fi, fo: 1 / math.sqrt(fi)),
    ("xavier_normal", {}, lambda fi, fo: math.sqrt(2 / (fi + fo))),
    ("xavier_uniform", {}, lambda fi, fo: math.sqrt(2 / (fi + fo))),
    ("kaiming_normal", {}, lambda fi, fo: math.sqrt(2 / fi)),
    ("kaiming_normal", {"mode": "fan_out"}, lambda fi, fo: math.sqrt(2 / fo)),
    ("kaiming_uniform", {}, lambda fi, fo: math.sqrt(2 / fi)),
    ("kaiming_uniform", {"mode": "fan_out"}, lambda fi, fo: math.sqrt(2 / fo)),
    ("kaiming_normal", {"gain": 1.0}, lambda fi, fo: math.sqrt(1 / fi)),
    ("normal", {}, lambda fi, fo: 0.01),
    ("normal", {"std": 0.05}, lambda fi, fo: 0.05),
    ("uniform", {}, lambda fi, fo: 0.1 / math.sqrt(12)),
]


@pytest.mark.parametrize(("name", "kwargs", "std"), GAUSSIAN_STD,
                         ids=[f"{c[0]}{c[1] or ''}" for c in GAUSSIAN_STD])
@pytest.mark.parametrize("shape", [DENSE, CONV])
def test_moments(name, kwargs, std, shape):
    w = _draw(name, shape, **kwargs)
    _check_moments(w, std(*_fans_ref(shape)))


def test_normal_is_plain_gaussian_not_truncated():
    w = _draw("lecun_normal", DENSE)
    z = np.abs(w) * math.sqrt(512)
    # a N(0,1) has P(|z| > 2) = 4.55%; a 2-sigma truncated Gaussian has none
    assert 0.040 < np.mean(z > 2) < 0.051
    assert _draw("normal", DENSE, mean=1.0, std=0.1).mean() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(("name", "kwargs", "limit"), [
    ("xavier_uniform", {}, lambda fi, fo: math.sqrt(6 / (fi + fo))),
    ("kaiming_uniform", {}, lambda fi, fo: math.sqrt(6 / fi)),
    ("kaiming_uniform", {"mode": "fan_out"}, lambda fi, fo: math.sqrt(6 / fo)),
    ("uniform", {}, lambda fi, fo: 0.05),
])
@pytest.mark.parametrize("shape", [DENSE, CONV])
def test_uniform_bounds(name, kwargs, limit, shape):
    a = limit(*_fans_ref(shape))
    w = _draw(name, shape, **kwargs)
    assert w.min() >= -a * (1 + 1e-6) and w.max() <= a * (1 + 1e-6)
    # with 2e5 uniform draws the extremes sit within ~1e-4 of the bounds
    assert w.min() < -0.999 * a and w.max() > 0.999 * a


def test_uniform_custom_range():
    w = _draw("uniform", DENSE, low=0.2, high=0.5)
    assert 0.2 <= w.min() < 0.201 and 0.499 < w.max() < 0.5
    _check_moments(w, 0.3 / math.sqrt(12), mean=0.35)


@pytest.mark.parametrize("gain", [1.0, math.sqrt(2.0)])
@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (48, 48), (3, 3, 8, 16), (3, 3, 4, 64)])
def test_orthogonal(shape, gain):
    w = _draw("orthogonal", shape, seed=3, gain=gain)
    m = w.reshape(-1, shape[-1])
    rows, cols = m.shape
    gram = m.T @ m if rows >= cols else m @ m.T
    np.testing.assert_allclose(gram, gain**2 * np.eye(min(rows, cols)), atol=2e-5)


def test_orthogonal_is_random():
    init = make_initializer("orthogonal")
    a, b = init(jax.random.key(0), (16, 16)), init(jax.random.key(1), (16, 16))
    assert not np.allclose(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4, 5)])
def test_zeros_and_constant_exact(shape):
    key = jax.random.key(0)
    np.testing.assert_array_equal(np.asarray(make_initializer("zeros")(key, shape)),
                                  np.zeros(shape))
    w = make_initializer("constant", value=0.37)(key, shape, jnp.float32)
    np.testing.assert_array_equal(np.asarray(w), np.full(shape, np.float32(0.37)))


@pytest.mark.parametrize("name", ["normal", "kaiming_normal", "xavier_uniform", "orthogonal",
                                  "zeros", "lecun_normal"])
def test_dtype(name):
    w = make_initializer(name)(jax.random.key(0), (3, 3, 8, 16), jnp.bfloat16)
    assert w.dtype == jnp.bfloat16


def test_registry_names():
    expected = {"zeros", "constant", "normal", "uniform", "lecun_normal", "xavier_normal",
                "xavier_uniform", "kaiming_normal", "kaiming_uniform", "orthogonal"}
    assert expected <= set(INITIALIZERS.names())
    w = INITIALIZERS.build("normal", std=0.01)(jax.random.key(0), (4, 4))
    assert w.shape == (4, 4)


def test_errors():
    with pytest.raises(ValueError, match=r"normal: std must be >= 0, got std=-0.1"):
        make_initializer("normal", std=-0.1)
    with pytest.raises(ValueError, match=r"uniform: need low < high, got low=0.1, high=0.1"):
        make_initializer("uniform", low=0.1, high=0.1)
    for name in ["kaiming_normal", "kaiming_uniform"]:
        with pytest.raises(ValueError, match=rf"{name}: mode .* got mode='fan_avg'"):
            make_initializer(name, mode="fan_avg")
    with pytest.raises(ValueError, match=r"orthogonal: .* got shape=\(5,\)"):
        make_initializer("orthogonal")(jax.random.key(0), (5,))
    with pytest.raises(ValueError, match=r"fans: .* got shape=\(5,\)"):
        fans((5,))
    with pytest.raises(ValueError, match=r"fans: shape=\(0, 4\) has a zero fan"):
        fans((0, 4))
    with pytest.raises(ValueError, match=r"fans: .*shape=\(5,\)"):
        make_initializer("kaiming_normal")(jax.random.key(0), (5,))
    with pytest.raises(ValueError, match=r"unknown initializer 'he'.*kaiming_normal"):
        make_initializer("he")
    with pytest.raises(ValueError, match=r"initializer 'normal'.*accepted arguments: std, mean"):
        make_initializer("normal", stddev=0.1)
