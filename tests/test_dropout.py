"""Dropout, spatial dropout, DropConnect and stochastic depth vs float64 NumPy references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normlab.nn.dropout import (
    DropConnectConv,
    DropConnectDense,
    Dropout,
    SpatialDropout,
    StochasticDepth,
    bernoulli_keep_mask,
    linear_depth_rates,
)
from normlab.registry import REGULARIZERS


def _normal(rng, *shape):
    # Bounded away from 0 so that "output is 0" identifies a dropped unit unambiguously.
    x = rng.normal(size=shape)
    return np.where(np.abs(x) < 0.1, 0.1 + np.abs(x), x).astype(np.float32)


def _train(layer, x, seed, variables=None, **kw):
    return layer.apply(variables or {}, x, train=True, rngs={"dropout": jax.random.key(seed)}, **kw)


def _many_train_outputs(layer, x, num):
    keys = jax.random.split(jax.random.key(123), num)
    run = jax.jit(jax.vmap(lambda k: layer.apply({}, x, train=True, rngs={"dropout": k})))
    return np.asarray(run(keys), np.float64)


def test_registry_names():
    assert REGULARIZERS.get("dropout") is Dropout
    assert REGULARIZERS.get("spatial_dropout") is SpatialDropout
    assert REGULARIZERS.get("dropconnect") is DropConnectDense
    assert REGULARIZERS.get("dropconnect_conv") is DropConnectConv
    assert REGULARIZERS.get("stochastic_depth") is StochasticDepth
    assert isinstance(REGULARIZERS.build("dropout", rate=0.3, mode="classic"), Dropout)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
@pytest.mark.parametrize(
    "layer_cls", [Dropout, SpatialDropout, StochasticDepth, DropConnectDense, DropConnectConv]
)
def test_rate_out_of_range_raises(layer_cls, rate):
    x = jnp.ones((2, 4, 4, 3))
    layer = layer_cls(features=2, rate=rate) if "DropConnect" in layer_cls.__name__ else (
        layer_cls(rate=rate)
    )
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\), got rate="):
        layer.init(jax.random.key(0), x, train=False)


def test_other_bad_arguments_raise():
    x4 = jnp.ones((2, 4, 4, 3))
    with pytest.raises(ValueError, match="mode must be one of"):
        Dropout(rate=0.5, mode="scaled").apply({}, x4, train=False)
    with pytest.raises(ValueError, match="ndim >= 3"):
        SpatialDropout(rate=0.5).apply({}, jnp.ones((2, 3)), train=True)
    with pytest.raises(ValueError, match="features must be >= 1"):
        DropConnectDense(features=0).init(jax.random.key(0), jnp.ones((2, 3)), train=False)
    with pytest.raises(ValueError, match="NHWC"):
        DropConnectConv(features=2).init(jax.random.key(0), jnp.ones((4, 4, 3)), train=False)
    with pytest.raises(ValueError, match="kernel_size"):
        DropConnectConv(features=2, kernel_size=(0, 3)).init(jax.random.key(0), x4, train=False)
    with pytest.raises(ValueError, match="scalar"):
        StochasticDepth(rate=0.5).apply({}, jnp.ones(()), train=True)
    with pytest.raises(ValueError, match="num_blocks must be an int >= 1"):
        linear_depth_rates(0, 0.5)
    with pytest.raises(ValueError, match=r"final_rate must be in \[0, 1\)"):
        linear_depth_rates(4, 1.0)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        bernoulli_keep_mask(jax.random.key(0), (3,), 1.0)


def test_rate_zero_is_exact_identity_and_needs_no_rng(rng):
    x = _normal(rng, 3, 5, 5, 4)
    for layer in (Dropout(rate=0.0), Dropout(rate=0.0, mode="classic"),
                  SpatialDropout(rate=0.0), StochasticDepth(rate=0.0)):
        for train in (True, False):
            np.testing.assert_array_equal(np.asarray(layer.apply({}, x, train=train)), x)
    dense = DropConnectDense(features=3, rate=0.0)
    variables = dense.init(jax.random.key(0), x, train=False)
    np.testing.assert_array_equal(
        dense.apply(variables, x, train=True), dense.apply(variables, x, train=False)
    )


@pytest.mark.parametrize("mode", ["inverted", "classic"])
@pytest.mark.parametrize("shape", [(64, 33), (8, 6, 6, 5)])
def test_dropout_train_and_eval_formulas(rng, mode, shape):
    rate = 0.3
    q = 1.0 - rate
    x = _normal(rng, *shape)
    y = np.asarray(_train(Dropout(rate=rate, mode=mode), x, seed=1), np.float64)
    kept = y != 0.0
    scale = 1.0 / q if mode == "inverted" else 1.0
    np.testing.assert_allclose(y, np.where(kept, x.astype(np.float64) * scale, 0.0), rtol=1e-6)
    # Kept fraction: binomial with n = x.size, tolerance 5 standard errors.
    assert abs(kept.mean() - q) < 5 * np.sqrt(q * (1 - q) / x.size)
    y_eval = np.asarray(Dropout(rate=rate, mode=mode).apply({}, x, train=False), np.float64)
    eval_scale = 1.0 if mode == "inverted" else q
    np.testing.assert_allclose(y_eval, x.astype(np.float64) * eval_scale, rtol=1e-6)


@pytest.mark.parametrize("mode,rate", [("inverted", 0.2), ("classic", 0.6)])
def test_dropout_expected_train_output_equals_eval_output(rng, mode, rate):
    q = 1.0 - rate
    x = _normal(rng, 4, 6)
    num = 4000
    layer = Dropout(rate=rate, mode=mode)
    mean = _many_train_outputs(layer, x, num).mean(axis=0)
    x64 = x.astype(np.float64)
    eval_ref = x64 if mode == "inverted" else q * x64
    # Per-unit variance of one draw: inverted x²(1−q)/q, classic x²·q(1−q).
    var = x64**2 * ((1 - q) / q if mode == "inverted" else q * (1 - q))
    assert np.all(np.abs(mean - eval_ref) < 5 * np.sqrt(var / num))
    np.testing.assert_allclose(np.asarray(layer.apply({}, x, train=False)), eval_ref, rtol=1e-6)


def test_inverted_and_classic_agree_at_test_time_and_convert_by_rescaling(rng):
    rate = 0.4
    q = 1.0 - rate

    class Net(nn.Module):
        mode: str

        @nn.compact
        def __call__(self, x, *, train):
            h = nn.relu(nn.Dense(16)(x))
            h = Dropout(rate=rate, mode=self.mode)(h, train=train)
            return nn.Dense(3)(h)

    x = _normal(rng, 10, 5)
    target = _normal(rng, 10, 3)
    classic, inverted = Net("classic"), Net("inverted")
    params = classic.init(jax.random.key(0), x, train=False)["params"]

    def loss(p, key):
        out = classic.apply({"params": p}, x, train=True, rngs={"dropout": key})
        return jnp.mean((out - target) ** 2)

    grad_fn = jax.jit(jax.grad(loss))
    for step in range(3):  # a few SGD steps with classic dropout
        grads = grad_fn(params, jax.random.key(10 + step))
        params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)

    # The layer reading the dropped units gets its weights (not its bias) multiplied by q.
    converted = dict(params)
    converted["Dense_1"] = {**params["Dense_1"], "kernel": params["Dense_1"]["kernel"] * q}
    for train_kw in ({"train": False}, {"train": True, "rngs": {"dropout": jax.random.key(7)}}):
        np.testing.assert_allclose(
            np.asarray(inverted.apply({"params": converted}, x, **train_kw)),
            np.asarray(classic.apply({"params": params}, x, **train_kw)),
            rtol=1e-5, atol=1e-6,
        )


def test_dropout_bfloat16_output_dtype_and_values(rng):
    rate = 0.5
    x = jnp.asarray(_normal(rng, 16, 32), jnp.bfloat16)
    y = _train(Dropout(rate=rate), x, seed=3)
    assert y.dtype == jnp.bfloat16
    x64 = np.asarray(x, np.float64)
    y64 = np.asarray(y, np.float64)
    # x/q is computed in float32 and rounded once to bf16 (8 significant bits): rel. error ≤ 2^-8.
    np.testing.assert_allclose(y64, np.where(y64 != 0, x64 / (1 - rate), 0.0), rtol=2**-8)


def test_same_key_same_mask_and_different_keys_differ(rng):
    x = _normal(rng, 8, 20)
    layer = Dropout(rate=0.5)
    np.testing.assert_array_equal(_train(layer, x, seed=5), _train(layer, x, seed=5))
    assert not np.array_equal(_train(layer, x, seed=5), _train(layer, x, seed=6))


@pytest.mark.parametrize("shape", [(16, 5, 7, 6), (6, 3, 4, 5, 8)])
def test_spatial_dropout_mask_is_constant_over_spatial_axes(rng, shape):
    rate = 0.5
    q = 1.0 - rate
    x = _normal(rng, *shape)
    y = np.asarray(_train(SpatialDropout(rate=rate), x, seed=2), np.float64)
    spatial = tuple(range(1, len(shape) - 1))
    kept = y != 0.0
    kept_NC = kept.all(axis=spatial)
    # Every (example, channel) map is either entirely kept or entirely dropped.
    np.testing.assert_array_equal(kept.any(axis=spatial), kept_NC)
    mask = np.expand_dims(kept_NC, spatial)
    np.testing.assert_allclose(y, np.where(mask, x.astype(np.float64) / q, 0.0), rtol=1e-6)
    n_maps = kept_NC.size
    assert abs(kept_NC.mean() - q) < 5 * np.sqrt(q * (1 - q) / n_maps)
    y_eval = SpatialDropout(rate=rate).apply({}, x, train=False)
    np.testing.assert_array_equal(np.asarray(y_eval), x)


def test_spatial_dropout_expected_train_output_equals_eval_output(rng):
    rate, num = 0.3, 3000
    q = 1.0 - rate
    x = _normal(rng, 2, 3, 3, 2)
    mean = _many_train_outputs(SpatialDropout(rate=rate), x, num).mean(axis=0)
    sd = np.abs(x.astype(np.float64)) * np.sqrt((1 - q) / q / num)
    assert np.all(np.abs(mean - x) < 5 * sd)


def _dense_variables(features, x, rate=0.5):
    layer = DropConnectDense(features=features, rate=rate,
                             bias_init=nn.initializers.normal(1.0))
    return layer, layer.init(jax.random.key(0), x, train=False)


@pytest.mark.parametrize("rate", [0.25, 0.5])
def test_dropconnect_dense_masks_the_weights(rng, rate):
    q = 1.0 - rate
    x = _normal(rng, 6, 7)
    layer, variables = _dense_variables(5, x, rate)
    y, state = _train(layer, x, seed=4, variables=variables, mutable=["intermediates"])
    (mask,) = state["intermediates"]["weight_mask"]
    mask = np.asarray(mask)
    w = np.asarray(variables["params"]["kernel"], np.float64)
    b = np.asarray(variables["params"]["bias"], np.float64)
    assert mask.shape == w.shape and mask.dtype == bool
    # One mask for the whole batch: every row of x uses the same masked W.
    ref = x.astype(np.float64) @ (w * mask) / q + b
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(layer.apply(variables, x, train=False), np.float64),
        x.astype(np.float64) @ w + b, rtol=1e-5, atol=1e-6,
    )
    other = _train(layer, x, seed=5, variables=variables, mutable=["intermediates"])[1]
    assert not np.array_equal(np.asarray(other["intermediates"]["weight_mask"][0]), mask)


def test_dropconnect_dense_mask_frequency_and_expectation(rng):
    rate, num = 0.5, 3000
    x = _normal(rng, 3, 4)
    layer, variables = _dense_variables(2, x, rate)
    keys = jax.random.split(jax.random.key(9), num)
    outs = jax.jit(jax.vmap(
        lambda k: layer.apply(variables, x, train=True, rngs={"dropout": k})
    ))(keys)
    mean = np.asarray(outs, np.float64).mean(axis=0)
    w = np.asarray(variables["params"]["kernel"], np.float64)
    b = np.asarray(variables["params"]["bias"], np.float64)
    # Var of one draw of y[n, j] = Σ_i x[n,i] W[i,j] M[i,j]/q is Σ_i (x W)² (1−q)/q.
    var = (x.astype(np.float64) ** 2) @ (w**2) * rate / (1 - rate)
    assert np.all(np.abs(mean - (x @ w + b)) < 5 * np.sqrt(var / num))


def test_dropconnect_dense_gradient_flows_only_through_kept_weights(rng):
    rate = 0.5
    x = _normal(rng, 4, 6)
    g = _normal(rng, 4, 3)
    layer, variables = _dense_variables(3, x, rate)
    rngs = {"dropout": jax.random.key(8)}
    _, state = layer.apply(variables, x, train=True, rngs=rngs, mutable=["intermediates"])
    mask = np.asarray(state["intermediates"]["weight_mask"][0])

    def objective(params):
        return jnp.sum(layer.apply({"params": params}, x, train=True, rngs=rngs) * g)

    grads = jax.grad(objective)(variables["params"])
    ref_kernel = (x.astype(np.float64).T @ g) * mask / (1 - rate)
    np.testing.assert_allclose(np.asarray(grads["kernel"]), ref_kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grads["bias"]), g.sum(axis=0), rtol=1e-5, atol=1e-6)


def test_dropconnect_dense_bfloat16(rng):
    rate = 0.5
    x = jnp.asarray(_normal(rng, 4, 16), jnp.bfloat16)
    layer, variables = _dense_variables(8, x, rate)
    y, state = _train(layer, x, seed=1, variables=variables, mutable=["intermediates"])
    assert y.dtype == jnp.bfloat16 and variables["params"]["kernel"].dtype == jnp.float32
    mask = np.asarray(state["intermediates"]["weight_mask"][0])
    w = np.asarray(variables["params"]["kernel"], np.float64)
    b = np.asarray(variables["params"]["bias"], np.float64)
    ref = np.asarray(x, np.float64) @ (w * mask) / (1 - rate) + b
    # The masked kernel is rounded to bf16 (rel. 2^-9 per weight) before a 16-term dot product
    # whose result is rounded to bf16 again: errors of ~1e-2 of the output scale.
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=2e-2, atol=2e-2)


def _conv_reference(x, w, b, stride, pad):
    """Cross-correlation y[n,i,j,o] = Σ_{u,v,c} xp[n, i·s+u, j·s+v, c] w[u,v,c,o] + b[o]."""
    xp = np.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
    kh, kw, _, cout = w.shape
    out_h = (xp.shape[1] - kh) // stride + 1
    out_w = (xp.shape[2] - kw) // stride + 1
    y = np.zeros((x.shape[0], out_h, out_w, cout))
    for i in range(out_h):
        for j in range(out_w):
            patch = xp[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            y[:, i, j, :] = np.einsum("nuvc,uvco->no", patch, w)
    return y + b


@pytest.mark.parametrize(
    "padding,stride,pad", [("SAME", 1, ((1, 1), (1, 1))), ("VALID", 2, ((0, 0), (0, 0)))]
)
def test_dropconnect_conv_masks_the_kernel(rng, padding, stride, pad):
    rate = 0.3
    x = _normal(rng, 2, 7, 7, 3)
    layer = DropConnectConv(features=4, kernel_size=(3, 3), rate=rate, strides=(stride, stride),
                            padding=padding, bias_init=nn.initializers.normal(1.0))
    variables = layer.init(jax.random.key(0), x, train=False)
    y, state = _train(layer, x, seed=2, variables=variables, mutable=["intermediates"])
    mask = np.asarray(state["intermediates"]["weight_mask"][0])
    w = np.asarray(variables["params"]["kernel"], np.float64)
    b = np.asarray(variables["params"]["bias"], np.float64)
    assert mask.shape == w.shape == (3, 3, 3, 4)
    x64 = x.astype(np.float64)
    ref = _conv_reference(x64, w * mask / (1 - rate), b, stride, pad)
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=1e-5, atol=1e-5)
    ref_eval = _conv_reference(x64, w, b, stride, pad)
    np.testing.assert_allclose(
        np.asarray(layer.apply(variables, x, train=False), np.float64), ref_eval,
        rtol=1e-5, atol=1e-5,
    )


def test_stochastic_depth_drops_whole_examples(rng):
    rate = 0.4
    q = 1.0 - rate
    n = 200
    x = _normal(rng, n, 3, 3, 2)
    y = np.asarray(_train(StochasticDepth(rate=rate), x, seed=3), np.float64)
    kept = (y != 0).reshape(n, -1)
    kept_N = kept.all(axis=1)
    np.testing.assert_array_equal(kept.any(axis=1), kept_N)  # all or nothing per example
    ref = np.where(kept_N[:, None, None, None], x.astype(np.float64) / q, 0.0)
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    assert 0 < kept_N.sum() < n
    assert abs(kept_N.mean() - q) < 5 * np.sqrt(q * (1 - q) / n)
    y_eval = StochasticDepth(rate=rate).apply({}, x, train=False)
    np.testing.assert_array_equal(np.asarray(y_eval), x)


def test_stochastic_depth_expected_train_output_equals_eval_output(rng):
    rate, num = 0.5, 3000
    x = _normal(rng, 3, 4)
    mean = _many_train_outputs(StochasticDepth(rate=rate), x, num).mean(axis=0)
    sd = np.abs(x.astype(np.float64)) * np.sqrt(rate / (1 - rate) / num)
    assert np.all(np.abs(mean - x) < 5 * sd)


def test_linear_depth_rates():
    num_blocks, final = 6, 0.5
    ref = [final * block / num_blocks for block in range(1, num_blocks + 1)]
    np.testing.assert_allclose(linear_depth_rates(num_blocks, final), ref, rtol=1e-12)
    assert linear_depth_rates(1, 0.2) == [0.2]
    assert linear_depth_rates(3, 0.0) == [0.0, 0.0, 0.0]


def test_bernoulli_keep_mask_frequency():
    rate = 0.3
    mask = np.asarray(bernoulli_keep_mask(jax.random.key(0), (100, 100), rate))
    assert mask.dtype == bool
    assert abs(mask.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / mask.size)
