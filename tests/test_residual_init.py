"""Residual-branch inits: Fixup's scale, identity at init, variance of the residual stream."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normlab.nn.initializers import make_initializer
from normlab.nn.residual_init import (
    ScalarBias,
    ScalarMultiplier,
    SkipInit,
    fixup_scale,
    scaled,
)
from normlab.registry import RESIDUAL_INITS

WIDTH, BLOCKS, M = 64, 8, 2


@pytest.mark.parametrize(("L", "m"), [(1, 2), (8, 2), (16, 3), (54, 2), (110, 3), (7, 5)])
def test_fixup_scale_formula(L, m):
    # L^(-1/(2m-2)) written as exp(-ln L / (2m - 2))
    assert fixup_scale(L, m) == pytest.approx(math.exp(-math.log(L) / (2 * m - 2)), rel=1e-12)


class ToyResNet(nn.Module):
    """x_{l+1} = x_l + F_l(x_l), F_l = Dense(64) → ReLU → Dense(64), wired by a ResidualInit."""

    variant: str
    norm: bool = False  # a LayerNorm with learnable scale after each branch layer

    @nn.compact
    def __call__(self, x):
        res = RESIDUAL_INITS.build(self.variant)
        he = make_initializer("kaiming_normal")
        kw = {"num_branches": BLOCKS, "layers_per_branch": M}
        stream = [x]
        for _ in range(BLOCKS):
            h = res.bias(x)
            h = nn.Dense(WIDTH, kernel_init=res.kernel_init(he, 0, norm_scale_after=self.norm,
                                                            **kw))(h)
            if self.norm:
                h = nn.LayerNorm(scale_init=res.norm_scale_init(0, layers_per_branch=M))(h)
            h = res.bias(nn.relu(res.bias(h)))
            h = nn.Dense(WIDTH, kernel_init=res.kernel_init(he, 1, norm_scale_after=self.norm,
                                                            **kw))(h)
            if self.norm:
                h = nn.LayerNorm(scale_init=res.norm_scale_init(1, layers_per_branch=M))(h)
            x = x + res.branch_output(h)
            stream.append(x)
        return x, stream


def _input(n=512):
    return np.random.default_rng(0).normal(0.0, 1.5, (n, WIDTH)).astype(np.float32)


@pytest.mark.parametrize(("variant", "norm"), [("zero_init_last", False), ("zero_init_last", True),
                                               ("fixup", False), ("skipinit", False)])
def test_identity_at_init(variant, norm):
    x = _input()
    model = ToyResNet(variant, norm)
    params = model.init(jax.random.key(1), x)["params"]
    out, stream = model.apply({"params": params}, x)
    np.testing.assert_array_equal(np.asarray(out), x)
    var_x = np.var(x.astype(np.float64))
    for x_l in stream:
        assert np.var(np.asarray(x_l, np.float64)) == pytest.approx(var_x, rel=1e-12)

    # the zero-initialized factor must still receive a gradient, or training could not start
    def loss(p):
        return 0.5 * jnp.sum(model.apply({"params": p}, x)[0] ** 2)

    grads = jax.grad(loss)(params)
    g_norms = [float(jnp.linalg.norm(g)) for g in jax.tree_util.tree_leaves(grads)]
    assert sum(g > 0 for g in g_norms) >= BLOCKS


def test_standard_variance_grows():
    x = _input()
    model = ToyResNet("standard")
    _, stream = model.apply(model.init(jax.random.key(1), x), x)
    var = np.array([np.var(np.asarray(x_l, np.float64)) for x_l in stream])
    # He init: Var(F(x)) ≈ 2·Var(x), so Var(x + F(x)) ≈ 3·Var(x) per block (in expectation)
    assert np.all(var[1:] / var[:-1] > 1.5)
    assert var[-1] / var[0] > 1.5**BLOCKS


def test_zero_init_last_targets():
    x = _input(8)
    with_norm = ToyResNet("zero_init_last", norm=True).init(jax.random.key(1), x)["params"]
    without = ToyResNet("zero_init_last").init(jax.random.key(1), x)["params"]
    for b in range(BLOCKS):
        # with a norm after the last layer its scale is 0 and the kernel stays standard ...
        assert np.all(np.asarray(with_norm[f"LayerNorm_{2 * b + 1}"]["scale"]) == 0)
        assert np.all(np.asarray(with_norm[f"LayerNorm_{2 * b}"]["scale"]) == 1)
        assert np.std(np.asarray(with_norm[f"Dense_{2 * b + 1}"]["kernel"])) > 0.1
        # ... without one the kernel itself is 0
        assert np.all(np.asarray(without[f"Dense_{2 * b + 1}"]["kernel"]) == 0)
        assert np.std(np.asarray(without[f"Dense_{2 * b}"]["kernel"])) > 0.1


def test_fixup_scaled_std():
    x = _input(8)
    params = ToyResNet("fixup").init(jax.random.key(2), x)["params"]
    first = np.concatenate([np.asarray(params[f"Dense_{2 * b}"]["kernel"]).ravel()
                            for b in range(BLOCKS)])
    expected = math.sqrt(2.0 / WIDTH) * BLOCKS ** (-1.0 / (2 * M - 2))
    # 32768 draws: sample-std relative sd ≈ 0.4%, so 2% is a 5-sd bound (unscaled is off by 2.8×)
    np.testing.assert_allclose(first.std(), expected, rtol=2e-2)
    for b in range(BLOCKS):
        assert np.all(np.asarray(params[f"Dense_{2 * b + 1}"]["kernel"]) == 0)
    scalar_biases = [k for k in params if k.startswith("ScalarBias")]
    assert len(scalar_biases) == 4 * BLOCKS  # 3 inside the branch + 1 after the multiplier
    assert len([k for k in params if k.startswith("ScalarMultiplier")]) == BLOCKS


@pytest.mark.parametrize(("L", "m", "shape"), [(8, 2, (512, 400)), (27, 4, (3, 3, 64, 384))])
def test_fixup_kernel_init_large_draw(L, m, shape):
    res = RESIDUAL_INITS.build("fixup")
    he = make_initializer("kaiming_normal")
    w = np.asarray(res.kernel_init(he, 0, num_branches=L, layers_per_branch=m)(
        jax.random.key(0), shape), np.float64)
    fan_in = int(np.prod(shape[:-1]))
    np.testing.assert_allclose(w.std(), math.sqrt(2 / fan_in) * L ** (-1 / (2 * m - 2)),
                               rtol=1e-2)
    last = res.kernel_init(he, m - 1, num_branches=L, layers_per_branch=m)(jax.random.key(0), shape)
    assert not np.any(np.asarray(last))


def test_scaled():
    base = make_initializer("normal", std=1.0)
    key = jax.random.key(4)
    np.testing.assert_allclose(np.asarray(scaled(base, 0.3)(key, (5, 7))),
                               0.3 * np.asarray(base(key, (5, 7)), np.float64), rtol=1e-6)


def test_scalar_modules():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 3, 6)).astype(np.float32)
    w = rng.normal(size=x.shape)
    x64 = x.astype(np.float64)
    for module, name, init, value, fwd, dparam in [
        (ScalarBias(), "bias", 0.0, 0.7, lambda v: x64 + v, np.sum(w)),
        (ScalarMultiplier(), "scale", 1.0, 0.7, lambda v: v * x64, np.sum(w * x64)),
        (SkipInit(), "alpha", 0.0, 0.7, lambda v: v * x64, np.sum(w * x64)),
    ]:
        params = module.init(jax.random.key(0), x)["params"]
        assert params[name].shape == () and float(params[name]) == init
        p = {name: jnp.float32(value)}
        np.testing.assert_allclose(np.asarray(module.apply({"params": p}, x)), fwd(value),
                                   rtol=1e-6)
        g = jax.grad(lambda p, m=module: jnp.sum(m.apply({"params": p}, x) * w))(p)
        # the gradient is a sum of 72 signed terms: compare on the scale of the terms' magnitudes
        scale = np.sum(np.abs(w)) if name == "bias" else np.sum(np.abs(w * x64))
        np.testing.assert_allclose(float(g[name]), dparam, rtol=1e-5, atol=1e-6 * scale)


def test_registry_and_flags():
    assert {"standard", "zero_init_last", "fixup", "skipinit"} <= set(RESIDUAL_INITS.names())
    assert not RESIDUAL_INITS.build("standard").norm_free
    assert RESIDUAL_INITS.build("fixup").norm_free
    assert RESIDUAL_INITS.build("skipinit").skip_gain


def test_errors():
    with pytest.raises(ValueError, match=r"layers_per_branch must be >= 2, got .*=1"):
        fixup_scale(8, 1)
    with pytest.raises(ValueError, match=r"num_branches must be >= 1, got num_branches=0"):
        fixup_scale(0, 2)
    res = RESIDUAL_INITS.build("fixup")
    he = make_initializer("kaiming_normal")
    with pytest.raises(ValueError, match=r"fixup_scale: layers_per_branch must be >= 2"):
        res.kernel_init(he, 0, num_branches=4, layers_per_branch=1)
    with pytest.raises(ValueError, match=r"kernel_init: need 0 <= layer < layers_per_branch=2, "
                                         r"got layer=2"):
        res.kernel_init(he, 2, num_branches=4, layers_per_branch=2)
    with pytest.raises(ValueError, match=r"norm_scale_init: .* got layer=-1"):
        res.norm_scale_init(-1, layers_per_branch=2)
    with pytest.raises(ValueError, match=r"unknown residual_init 'zero'.*zero_init_last"):
        RESIDUAL_INITS.build("zero")
