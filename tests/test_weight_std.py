"""Weight-standardized convolutions (WS, scaled WS) vs a float64 NumPy convolution reference.

The references standardize the kernel from the formulas and convolve with a direct float64
NumPy convolution written here. float32 results are compared at 1e-5 (relative, with an absolute
floor of 1e-5·sqrt(fan-in) for outputs that are sums of fan-in terms); gradients at 1e-4.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from finite_differences import fd_grads

from normlab.nn.weight_std import Conv, ScaledWSConv, WSConv
from normlab.registry import CONVOLUTIONS


def _x(shape, seed=0, loc=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    return (loc + scale * rng.standard_normal(shape)).astype(np.float32)


def ref_conv(x, kernel, bias, stride, padding):
    """y[n,i,j,o] = Σ_{a,b,c} x_padded[n, i·s + a, j·s + b, c]·W[a,b,c,o] + bias[o] (NHWC, HWIO)."""
    kh, kw = kernel.shape[:2]
    if padding == "SAME":
        pads = []
        for size, k in zip(x.shape[1:3], (kh, kw), strict=True):
            out = -(-size // stride)
            total = max((out - 1) * stride + k - size, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)])
    out_h = (x.shape[1] - kh) // stride + 1
    out_w = (x.shape[2] - kw) // stride + 1
    y = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
    for a in range(kh):
        for b in range(kw):
            patch = x[:, a : a + stride * out_h : stride, b : b + stride * out_w : stride, :]
            y += np.einsum("nhwc,co->nhwo", patch, kernel[a, b])
    return y + bias


def ref_ws(kernel, eps=1e-5):
    axes = tuple(range(kernel.ndim - 1))
    mean, var = kernel.mean(axes), kernel.var(axes)
    return (kernel - mean) / np.sqrt(var + eps)


def ref_scaled_ws(kernel, gain, act_gain, eps=1e-4):
    axes = tuple(range(kernel.ndim - 1))
    fan_in = np.prod(kernel.shape[:-1])
    mean, var = kernel.mean(axes), kernel.var(axes)
    return gain * act_gain * (kernel - mean) / np.sqrt(fan_in * var + eps)




def _standardized(module, variables):
    """The kernel Ŵ the conv actually uses, read off its response to one-hot input patches."""
    kernel = variables["params"]["kernel"]
    fan_in = int(np.prod(kernel.shape[:-1]))
    basis = np.eye(fan_in, dtype=np.float32).reshape((fan_in,) + kernel.shape[:-1])
    probe = module.clone(padding="VALID", strides=1, use_bias=False)
    params = {k: v for k, v in variables["params"].items() if k != "bias"}
    y = probe.apply({"params": params}, basis)
    return y.reshape(kernel.shape)


CONFIGS = [
    {"features": 4, "kernel_size": (3, 3), "strides": 1, "padding": "SAME"},
    {"features": 5, "kernel_size": (3, 2), "strides": 2, "padding": "VALID"},
    {"features": 3, "kernel_size": (1, 1), "strides": 1, "padding": "SAME", "use_bias": False},
]


def _setup(module, x, seed=1):
    variables = module.init(jax.random.key(seed), x)
    rng = np.random.default_rng(seed)
    params = {k: np.asarray(v) for k, v in variables["params"].items()}
    params["kernel"] = (0.3 + rng.standard_normal(params["kernel"].shape)).astype(np.float32)
    if "bias" in params:
        params["bias"] = rng.standard_normal(params["bias"].shape).astype(np.float32)
    if "gain" in params:
        params["gain"] = (1 + 0.3 * rng.standard_normal(params["gain"].shape)).astype(np.float32)
    return params


def _tolerance(kernel):
    return {"rtol": 1e-5, "atol": 1e-5 * np.sqrt(np.prod(kernel.shape[:-1]))}


@pytest.mark.parametrize("config", CONFIGS)
def test_standard_conv(config):
    x = _x((2, 7, 6, 3), seed=2)
    conv = Conv(**config)
    params = _setup(conv, x)
    y = conv.apply({"params": params}, x)
    expected = ref_conv(x.astype(np.float64), params["kernel"].astype(np.float64),
                        params.get("bias", 0.0), config["strides"], config["padding"])
    np.testing.assert_allclose(y, expected, **_tolerance(params["kernel"]))


@pytest.mark.parametrize("config", CONFIGS)
def test_weight_standardized_conv(config):
    x = _x((2, 7, 6, 3), seed=3)
    conv = WSConv(**config)
    params = _setup(conv, x)
    assert set(params) == ({"kernel", "bias"} if config.get("use_bias", True) else {"kernel"})
    kernel_hat = ref_ws(params["kernel"].astype(np.float64))
    y = conv.apply({"params": params}, x)
    expected = ref_conv(x.astype(np.float64), kernel_hat, params.get("bias", 0.0),
                        config["strides"], config["padding"])
    np.testing.assert_allclose(y, expected, **_tolerance(kernel_hat))


@pytest.mark.parametrize("kernel_size", [(3, 3), (5,), (2, 2, 2)])
def test_standardized_kernel_has_zero_mean_unit_variance_over_fan_in(kernel_size):
    x = _x((2,) + (6,) * len(kernel_size) + (3,), seed=4)
    conv = WSConv(features=6, kernel_size=kernel_size, epsilon=0.0)
    params = _setup(conv, x)
    kernel_hat = np.asarray(_standardized(conv, {"params": params}), np.float64)
    fan_in_axes = tuple(range(kernel_hat.ndim - 1))
    np.testing.assert_allclose(kernel_hat.mean(fan_in_axes), 0.0, atol=1e-6)
    np.testing.assert_allclose(kernel_hat.var(fan_in_axes), 1.0, rtol=1e-5)


@pytest.mark.parametrize("config", CONFIGS[:2])
def test_scaled_weight_standardized_conv(config):
    x = _x((2, 7, 6, 3), seed=5)
    conv = ScaledWSConv(**config, act_gain=1.7139)
    params = _setup(conv, x)
    assert "gain" in params
    kernel_hat = ref_scaled_ws(params["kernel"].astype(np.float64), params["gain"], 1.7139)
    y = conv.apply({"params": params}, x)
    expected = ref_conv(x.astype(np.float64), kernel_hat, params["bias"], config["strides"],
                        config["padding"])
    np.testing.assert_allclose(y, expected, **_tolerance(kernel_hat))


def test_scaled_ws_kernel_preserves_variance():
    # g = 1, γ_act = 1, ε = 0: Σ over the fan-in of Ŵ² is 1, so unit-variance inputs give
    # unit-variance outputs; and the gain param starts at 1.
    x = _x((2, 5, 5, 4), seed=6)
    conv = ScaledWSConv(features=3, kernel_size=(3, 3), epsilon=0.0)
    variables = conv.init(jax.random.key(0), x)
    np.testing.assert_array_equal(variables["params"]["gain"], np.ones(3))
    kernel_hat = np.asarray(_standardized(conv, variables), np.float64)
    np.testing.assert_allclose((kernel_hat**2).sum(axis=(0, 1, 2)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(kernel_hat.sum(axis=(0, 1, 2)), 0.0, atol=1e-6)


@pytest.mark.parametrize("scaled", [False, True])
def test_gradients(scaled):
    x = _x((2, 4, 4, 2), seed=7)
    w = _x((2, 4, 4, 3), seed=8)
    conv = (ScaledWSConv(features=3, kernel_size=(2, 2), act_gain=1.5) if scaled
            else WSConv(features=3, kernel_size=(2, 2)))
    params = _setup(conv, x, seed=9)
    names = sorted(params)

    def loss(params):
        return jnp.sum(conv.apply({"params": params}, x) * w)

    def ref_loss(*values):
        p = dict(zip(names, values, strict=True))
        kernel_hat = (ref_scaled_ws(p["kernel"], p["gain"], 1.5) if scaled
                      else ref_ws(p["kernel"]))
        return np.sum(ref_conv(x.astype(np.float64), kernel_hat, p["bias"], 1, "SAME") * w)

    grads = jax.grad(loss)({k: jnp.asarray(v) for k, v in params.items()})
    expected = fd_grads(ref_loss, [params[k] for k in names])
    for name, grad in zip(names, expected, strict=True):
        # Each gradient entry sums O(size) float32 products: ~1e-5 absolute rounding.
        np.testing.assert_allclose(grads[name], grad, rtol=1e-4, atol=1e-4, err_msg=name)


def test_registry_names():
    assert CONVOLUTIONS.get("standard") is Conv
    assert CONVOLUTIONS.get("weight_std") is WSConv
    assert CONVOLUTIONS.get("scaled_ws") is ScaledWSConv
    conv = CONVOLUTIONS.build("scaled_ws", features=8, kernel_size=(3, 3), act_gain=2.0)
    assert conv.act_gain == 2.0 and conv.features == 8


@pytest.mark.parametrize(
    ("module", "match"),
    [
        (WSConv(features=2, kernel_size=(3, 3), epsilon=-1e-5), "^WSConv: .*epsilon=-1e-05"),
        (ScaledWSConv(features=2, kernel_size=(3, 3), epsilon=-1.0), "ScaledWSConv.*epsilon=-1.0"),
    ],
)
def test_value_errors(module, match):
    with pytest.raises(ValueError, match=match):
        module.init(jax.random.key(0), jnp.zeros((1, 5, 5, 2)))
