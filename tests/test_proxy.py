"""Proxy Normalization vs a float64 NumPy reference written from SPEC §1.2."""

import math
import zlib
from statistics import NormalDist

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normlab.nn.proxy import (
    GroupNormProxy,
    LayerNormProxy,
    ProxyActivation,
    gaussian_quantiles,
    proxy_param_mask,
    proxy_weight_decay,
)
from normlab.registry import NORMS

try:
    from scipy.special import erf as _erf
except ImportError:  # scipy is optional: math.erf is exact to double precision too
    _erf = np.vectorize(math.erf)
ACTS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "tanh": np.tanh,
}


# ---------------------------------------------------------------- float64 reference (the math)
def ref_quantiles(n):
    return np.array([NormalDist().inv_cdf((i + 0.5) / n) for i in range(n)])


def ref_proxy_stats(phi, g, b, pb, ps, n):
    proxy = pb + (1.0 + ps) * ref_quantiles(n)[:, None]  # (n, C)
    a = phi(g * proxy + b)
    mean = a.mean(axis=0)
    return mean, ((a - mean) ** 2).mean(axis=0)


def ref_pn(y, phi, g, b, pb, ps, n=200, eps=0.03):
    mean, var = ref_proxy_stats(phi, g, b, pb, ps, n)
    return (phi(g * y + b) - mean) / np.sqrt(var + eps)


def ref_layer_norm(x, eps=1e-5):
    axes = tuple(range(1, x.ndim))
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    return (x - mu) / np.sqrt(var + eps)


def ref_group_norm(x, groups, eps=1e-5):
    xg = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)  # consecutive channels
    axes = (*range(1, x.ndim - 1), x.ndim)
    mu = xg.mean(axis=axes, keepdims=True)
    var = ((xg - mu) ** 2).mean(axis=axes, keepdims=True)
    return ((xg - mu) / np.sqrt(var + eps)).reshape(x.shape)


# ------------------------------------------------------------------------------------ helpers
def _random_params(c, seed):
    rng = np.random.default_rng(seed)
    return {
        "scale": rng.uniform(0.5, 1.5, c),
        "bias": rng.normal(0.0, 0.5, c),
        "proxy_bias": rng.normal(0.0, 0.3, c),
        "proxy_scale": rng.normal(0.0, 0.3, c),
    }


def _as_variables(p64):
    return {"params": {"proxy": {k: jnp.asarray(v, jnp.float32) for k, v in p64.items()}}}


def _ref_composite(x64, kind, groups, act, p, n=200, eps=0.03):
    y = ref_layer_norm(x64) if kind == "layer" else ref_group_norm(x64, groups)
    return ref_pn(y, ACTS[act], p["scale"], p["bias"], p["proxy_bias"], p["proxy_scale"], n, eps)


def _module(kind, groups, act, **kw):
    if kind == "layer":
        return LayerNormProxy(activation=act, **kw)
    return GroupNormProxy(num_groups=groups, activation=act, **kw)


# -------------------------------------------------------------------------------------- tests
def test_quantiles():
    np.testing.assert_allclose(gaussian_quantiles(200), ref_quantiles(200), rtol=0, atol=1e-12)
    np.testing.assert_allclose(gaussian_quantiles(7), ref_quantiles(7), rtol=0, atol=1e-12)


# SPEC §1.2 test vectors: (μ̃, σ̃², 1/sqrt(σ̃² + ε)) for n = 200, ε = 0.03, γ = 1, β = β̃ = γ̃ = 0
SPEC_VECTORS = {"relu": (0.398451, 0.338035, 1.648373), "silu": (0.206048, 0.310004, 1.714977)}


@pytest.mark.parametrize("act", ["relu", "silu"])
def test_spec_vectors(act):
    mean_spec, var_spec, inv_spec = SPEC_VECTORS[act]
    one, zero = np.ones(1), np.zeros(1)
    mean_ref, var_ref = ref_proxy_stats(ACTS[act], one, zero, zero, zero, 200)
    np.testing.assert_allclose([mean_ref[0], var_ref[0], 1 / math.sqrt(var_ref[0] + 0.03)],
                               [mean_spec, var_spec, inv_spec], atol=1e-6)

    y = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
    module = ProxyActivation(activation=act)
    variables = module.init(jax.random.key(0), y)
    z, state = module.apply(variables, y, mutable=["intermediates"])
    mean = np.asarray(state["intermediates"]["proxy_mean"][0])
    var = np.asarray(state["intermediates"]["proxy_var"][0])
    assert mean.shape == var.shape == (3,)
    np.testing.assert_allclose(mean, mean_spec, atol=1e-5)
    np.testing.assert_allclose(var, var_spec, atol=1e-5)
    np.testing.assert_allclose(1 / np.sqrt(var + 0.03), inv_spec, atol=1e-5)
    expected = (ACTS[act](np.asarray(y, np.float64)) - mean_ref) / math.sqrt(var_ref[0] + 0.03)
    np.testing.assert_allclose(np.asarray(z), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("kind", "groups"), [("layer", None), ("group", 2), ("group", 4)])
@pytest.mark.parametrize(("act", "shape"), [("relu", (2, 4, 4, 8)), ("silu", (3, 5, 3, 16)),
                                            ("gelu", (3, 5, 3, 16)), ("tanh", (4, 8))])
def test_forward(kind, groups, act, shape):
    # crc32, not hash(): str hashes are salted per process, so the data would differ per run
    rng = np.random.default_rng(zlib.crc32(repr((kind, act, shape)).encode()))
    x = rng.normal(1.0, 2.0, shape).astype(np.float32)
    p = _random_params(shape[-1], seed=shape[-1])
    module = _module(kind, groups, act, num_quantiles=64, epsilon=0.05)
    z = module.apply(_as_variables(p), x)
    assert z.dtype == jnp.float32 and z.shape == shape
    expected = _ref_composite(x.astype(np.float64), kind, groups, act, p, n=64, eps=0.05)
    np.testing.assert_allclose(np.asarray(z), expected, rtol=1e-5, atol=1e-5)


def test_init_params_and_registry():
    x = jnp.ones((2, 3, 3, 8)) * jnp.arange(8.0)
    assert NORMS.get("layer+proxy") is LayerNormProxy
    assert NORMS.get("group+proxy") is GroupNormProxy
    pn = NORMS.build("group+proxy", group_size=4, activation="silu")
    params = pn.init(jax.random.key(0), x)["params"]
    assert set(params) == {"proxy"}  # the inner GroupNorm has no affine
    for name, value in [("scale", 1.0), ("bias", 0.0), ("proxy_bias", 0.0),
                        ("proxy_scale", 0.0)]:
        assert params["proxy"][name].shape == (8,) and params["proxy"][name].dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(params["proxy"][name]), value)


@pytest.mark.parametrize(("kind", "groups", "act"), [("layer", None, "silu"), ("group", 2, "relu"),
                                                     ("group", 4, "gelu")])
def test_gradients_vs_finite_differences(kind, groups, act):
    shape = (2, 3, 3, 8)
    rng = np.random.default_rng(7)
    x = rng.normal(size=shape).astype(np.float32)
    w = rng.normal(size=shape)  # random readout: every output unit matters to the loss
    p = _random_params(shape[-1], seed=3)
    module = _module(kind, groups, act)
    x64 = x.astype(np.float64)

    def loss_jax(params):
        return jnp.sum(module.apply({"params": {"proxy": params}}, x) * w)

    grads = jax.grad(loss_jax)({k: jnp.asarray(v, jnp.float32) for k, v in p.items()})
    h = 1e-6
    for name in p:
        fd = np.zeros(shape[-1])
        for c in range(shape[-1]):
            plus = {k: v.copy() for k, v in p.items()}
            minus = {k: v.copy() for k, v in p.items()}
            plus[name][c] += h
            minus[name][c] -= h
            fd[c] = (np.sum(_ref_composite(x64, kind, groups, act, plus) * w)
                     - np.sum(_ref_composite(x64, kind, groups, act, minus) * w)) / (2 * h)
        # float32 sums over 72 terms per channel: allow 1e-4 of the gradient's scale
        np.testing.assert_allclose(np.asarray(grads[name]), fd, rtol=1e-4,
                                   atol=1e-4 * np.max(np.abs(fd)), err_msg=name)
        assert np.max(np.abs(fd)) > 1e-2, name  # the parameter does move the loss


@pytest.mark.parametrize(("kind", "groups"), [("layer", None), ("group", 4)])
def test_batch_independence(kind, groups):
    x = np.random.default_rng(2).normal(size=(8, 4, 4, 8)).astype(np.float32)
    module = _module(kind, groups, "silu")
    variables = _as_variables(_random_params(8, seed=5))
    z_batch = np.asarray(module.apply(variables, x))
    for i in (0, 5):
        z_alone = np.asarray(module.apply(variables, x[i:i + 1]))
        np.testing.assert_allclose(z_alone[0], z_batch[i], rtol=1e-6, atol=1e-6)
    # and changing the other examples does not change example 0
    x2 = x.copy()
    x2[1:] = 10.0 * x2[1:] + 3.0
    np.testing.assert_allclose(np.asarray(module.apply(variables, x2))[0], z_batch[0],
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("kind", "groups"), [("layer", None), ("group", 2)])
def test_bfloat16_input(kind, groups):
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 4, 4, 8)), jnp.bfloat16)
    p = _random_params(8, seed=9)
    module = _module(kind, groups, "relu")
    z = module.apply(_as_variables(p), x)
    assert z.dtype == jnp.bfloat16
    expected = _ref_composite(np.asarray(x, np.float64), kind, groups, "relu", p)
    # statistics and z are float32 inside; only the final rounding to bfloat16 (8-bit mantissa,
    # relative error <= 2^-9 ≈ 0.2%) separates z from the float64 reference of the same input
    np.testing.assert_allclose(np.asarray(z, np.float64), expected, rtol=2**-8, atol=1e-3)


def test_prelu_slope_shared_with_proxy():
    y = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    module = ProxyActivation(activation="prelu")
    variables = module.init(jax.random.key(0), y)
    slope = np.asarray(variables["params"]["PReLU_0"]["slope"], np.float64)
    assert set(variables["params"]) == {"scale", "bias", "proxy_bias", "proxy_scale", "PReLU_0"}
    slope = slope + 0.1  # a non-default slope must reach both branches
    variables["params"]["PReLU_0"]["slope"] = jnp.asarray(slope, jnp.float32)
    phi = lambda t: np.where(t >= 0, t, slope * t)
    one, zero = np.ones(4), np.zeros(4)
    expected = ref_pn(y.astype(np.float64), phi, one, zero, zero, zero)
    np.testing.assert_allclose(np.asarray(module.apply(variables, y)), expected, rtol=1e-5,
                               atol=1e-6)


class _TwoBlocks(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(8)(x)
        x = LayerNormProxy()(x)
        x = nn.Dense(8)(x)
        return GroupNormProxy(num_groups=2)(x)


def test_proxy_weight_decay_and_mask():
    x = jnp.ones((2, 8))
    params = _TwoBlocks().init(jax.random.key(0), x)["params"]
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda v: jnp.asarray(rng.normal(size=v.shape), v.dtype),
                                    params)
    expected = sum(np.sum(np.asarray(params[block]["proxy"][name], np.float64) ** 2)
                   for block in ("LayerNormProxy_0", "GroupNormProxy_0")
                   for name in ("proxy_bias", "proxy_scale"))
    np.testing.assert_allclose(float(proxy_weight_decay(params)), expected, rtol=1e-6)
    mask = proxy_param_mask(params)
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(mask)}
    assert {k for k, v in flat.items() if v} == {
        f"{b}/proxy/{n}" for b in ("LayerNormProxy_0", "GroupNormProxy_0")
        for n in ("proxy_bias", "proxy_scale")}
    assert len(flat) == 4 + 4 + 4  # 2 Dense × (kernel, bias) + 2 PN × 4 params
    assert float(proxy_weight_decay({"dense": {"kernel": jnp.ones(3)}})) == 0.0
    g = jax.grad(proxy_weight_decay)(params)["LayerNormProxy_0"]["proxy"]
    np.testing.assert_allclose(np.asarray(g["proxy_bias"]),
                               2 * np.asarray(params["LayerNormProxy_0"]["proxy"]["proxy_bias"]),
                               rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(g["scale"]), 0.0)


def test_errors():
    y = jnp.ones((2, 4))
    x = jnp.ones((2, 3, 3, 4))
    with pytest.raises(ValueError, match=r"ProxyActivation: num_quantiles must be >= 2, "
                                         r"got num_quantiles=1"):
        ProxyActivation(num_quantiles=1).init(jax.random.key(0), y)
    with pytest.raises(ValueError, match=r"ProxyActivation: epsilon must be >= 0, "
                                         r"got epsilon=-0.01"):
        ProxyActivation(epsilon=-0.01).init(jax.random.key(0), y)
    with pytest.raises(ValueError, match=r"LayerNormProxy: num_quantiles must be >= 2"):
        LayerNormProxy(num_quantiles=0).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"GroupNormProxy: epsilon must be >= 0"):
        GroupNormProxy(num_groups=2, epsilon=-1.0).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"unknown activation 'rellu'.*relu.*silu"):
        LayerNormProxy(activation="rellu").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"GroupNorm: give exactly one of num_groups and "
                                         r"group_size"):
        GroupNormProxy().init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"gaussian_quantiles: need n >= 2, got n=1"):
        gaussian_quantiles(1)
