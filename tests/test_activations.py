"""Activations vs float64 NumPy references written from their formulas: values and derivatives."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normlab.nn.activations import PReLU, make_activation
from normlab.registry import ACTIVATIONS

try:
    from scipy.special import erf as _erf
except ImportError:  # scipy is optional: math.erf is exact to double precision too
    _erf = np.vectorize(math.erf)

LAM, ALPHA_SELU = 1.0507009873554805, 1.6732632423543772


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)


def _phi_pdf(x):
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


_C = math.sqrt(2.0 / math.pi)


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(_C * (x + 0.044715 * x**3)))


def _gelu_tanh_d(x):
    t = np.tanh(_C * (x + 0.044715 * x**3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _C * (1 + 3 * 0.044715 * x * x)


def _mish_d(x):
    t = np.tanh(_softplus(x))
    return t + x * (1 - t * t) * _sig(x)


# name, kwargs, f(x), f'(x): float64 references from the textbook formulas
CASES = [
    ("sigmoid", {}, _sig, lambda x: _sig(x) * (1 - _sig(x))),
    ("tanh", {}, np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    ("relu", {}, lambda x: np.maximum(x, 0), lambda x: (x > 0).astype(float)),
    ("leaky_relu", {}, lambda x: np.where(x >= 0, x, 0.01 * x), lambda x: np.where(x > 0, 1, 0.01)),
    ("leaky_relu", {"alpha": 0.2}, lambda x: np.where(x >= 0, x, 0.2 * x),
     lambda x: np.where(x > 0, 1, 0.2)),
    ("elu", {}, lambda x: np.where(x > 0, x, np.expm1(x)), lambda x: np.where(x > 0, 1, np.exp(x))),
    ("elu", {"alpha": 0.5}, lambda x: np.where(x > 0, x, 0.5 * np.expm1(x)),
     lambda x: np.where(x > 0, 1, 0.5 * np.exp(x))),
    ("selu", {}, lambda x: LAM * np.where(x > 0, x, ALPHA_SELU * np.expm1(x)),
     lambda x: LAM * np.where(x > 0, 1, ALPHA_SELU * np.exp(x))),
    ("gelu", {}, lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))),
     lambda x: 0.5 * (1 + _erf(x / math.sqrt(2))) + x * _phi_pdf(x)),
    ("gelu_tanh", {}, _gelu_tanh, _gelu_tanh_d),
    ("silu", {}, lambda x: x * _sig(x), lambda x: _sig(x) * (1 + x * (1 - _sig(x)))),
    ("swish", {}, lambda x: x * _sig(x), lambda x: _sig(x) * (1 + x * (1 - _sig(x)))),
    ("mish", {}, lambda x: x * np.tanh(_softplus(x)), _mish_d),
    ("identity", {}, lambda x: x, np.ones_like),
]


def _inputs(shape, seed):
    x = np.random.default_rng(seed).normal(0.0, 3.0, shape)
    # keep away from the kinks at 0, where relu-like derivatives are not defined
    return np.where(np.abs(x) < 1e-3, 0.5, x).astype(np.float32)


@pytest.mark.parametrize(("name", "kwargs", "f", "df"), CASES,
                         ids=[f"{c[0]}{c[1] or ''}" for c in CASES])  # stable across processes
@pytest.mark.parametrize("shape", [(257,), (4, 5, 6)])
def test_values_and_derivatives(name, kwargs, f, df, shape):
    x32 = _inputs(shape, seed=len(shape))
    x64 = x32.astype(np.float64)
    act = make_activation(name, **kwargs)
    y = np.asarray(act(jnp.asarray(x32)))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, f(x64), rtol=1e-5, atol=1e-6)
    dy = np.asarray(jax.vmap(jax.grad(lambda t: act(t)))(jnp.asarray(x32.ravel())))
    # atol 1e-5 on O(1) derivatives: in float32, gelu_tanh's derivative for x << 0 is a
    # difference 1 + tanh(·) ≈ 1 − 1, whose rounding leaves an absolute error of a few 1e-6
    np.testing.assert_allclose(dy, df(x64.ravel()), rtol=1e-5, atol=1e-5)


def test_gelu_is_exact_not_tanh():
    x = jnp.linspace(-4.0, 4.0, 101)
    exact = np.asarray(make_activation("gelu")(x))
    approx = np.asarray(make_activation("gelu_tanh")(x))
    # the tanh form differs from the erf form by up to ~5e-4 on [-4, 4]: far above f32 rounding
    assert np.max(np.abs(exact - approx)) > 1e-4


@pytest.mark.parametrize("name", ["elu", "selu", "gelu", "mish", "silu", "sigmoid"])
def test_gradient_finite_at_extremes(name):
    act = make_activation(name)
    g = jax.vmap(jax.grad(lambda t: act(t)))(jnp.array([-200.0, -50.0, 50.0, 200.0]))
    assert np.all(np.isfinite(np.asarray(g)))


def test_bfloat16_keeps_dtype():
    x = jnp.asarray(_inputs((64,), 3), jnp.bfloat16)
    for name in ["relu", "gelu", "silu", "selu", "mish", "tanh"]:
        assert make_activation(name)(x).dtype == jnp.bfloat16


def _prelu_ref(x, a):
    return np.where(x >= 0, x, a * x)


class _Parent(nn.Module):
    per_channel: bool

    @nn.compact
    def __call__(self, x):
        return make_activation("prelu", per_channel=self.per_channel)(x)


@pytest.mark.parametrize("per_channel", [True, False])
def test_prelu_inside_parent(per_channel):
    x = _inputs((3, 4, 5), 7)
    model = _Parent(per_channel=per_channel)
    variables = model.init(jax.random.key(0), x)
    slope = variables["params"]["PReLU_0"]["slope"]
    assert slope.shape == ((5,) if per_channel else ())
    np.testing.assert_array_equal(np.asarray(slope), 0.25)
    np.testing.assert_allclose(np.asarray(model.apply(variables, x)), _prelu_ref(x, 0.25),
                               rtol=1e-6)


@pytest.mark.parametrize(("per_channel", "shape"), [(True, (6, 4)), (True, (2, 3, 3, 4)),
                                                    (False, (6, 4))])
def test_prelu_params_and_gradients(per_channel, shape):
    rng = np.random.default_rng(11)
    x = _inputs(shape, 5)
    w = rng.normal(size=shape)  # a random linear readout makes the loss sensitive to every unit
    a = rng.uniform(0.05, 0.5, (shape[-1],) if per_channel else ())
    act = PReLU(per_channel=per_channel, init_slope=0.1)
    variables = {"params": {"slope": jnp.asarray(a, jnp.float32)}}
    y = np.asarray(act.apply(variables, x))
    np.testing.assert_allclose(y, _prelu_ref(x.astype(np.float64), a), rtol=1e-6, atol=1e-7)

    def loss(params, x):
        return jnp.sum(act.apply({"params": params}, x) * w)

    g_params, g_x = jax.grad(loss, argnums=(0, 1))(variables["params"], jnp.asarray(x))
    # dL/da = Σ w·x over units with x < 0 (per channel, or over everything when shared)
    contrib = np.where(x < 0, w * x, 0.0)
    expected_da = contrib.reshape(-1, shape[-1]).sum(0) if per_channel else contrib.sum()
    np.testing.assert_allclose(np.asarray(g_params["slope"]), expected_da, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(g_x), np.where(x >= 0, w, a * w), rtol=1e-5, atol=1e-6)


def test_registry_names():
    expected = {"sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu", "gelu",
                "gelu_tanh", "silu", "swish", "mish", "identity"}
    assert expected <= set(ACTIVATIONS.names())
    assert ACTIVATIONS.build("leaky_relu", alpha=0.1)(jnp.array(-2.0)) == pytest.approx(-0.2)


def test_errors():
    with pytest.raises(ValueError, match=r"elu: alpha must be > 0, got alpha=0"):
        make_activation("elu", alpha=0.0)
    with pytest.raises(ValueError, match=r"elu: alpha must be > 0, got alpha=-1"):
        make_activation("elu", alpha=-1.0)
    with pytest.raises(ValueError, match=r"leaky_relu: alpha must be >= 0, got alpha=-0.1"):
        make_activation("leaky_relu", alpha=-0.1)
    with pytest.raises(ValueError, match=r"unknown activation 'gleu'.*gelu.*relu"):
        make_activation("gleu")
    with pytest.raises(ValueError, match=r"activation 'relu'.*accepted arguments: \(none\)"):
        make_activation("relu", alpha=0.1)
