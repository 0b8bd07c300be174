"""conv2d as matmul (im2col, Toeplitz) against XLA's conv and a float64 NumPy loop reference."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from normlab.nn.conv_matmul import (
    conv2d_im2col,
    conv2d_toeplitz,
    conv2d_xla,
    resolve_padding,
    toeplitz_matrix,
)
from normlab.registry import CONV_ALGORITHMS

ALGORITHMS = {"im2col": conv2d_im2col, "toeplitz": conv2d_toeplitz, "xla": conv2d_xla}


# ---- float64 NumPy references, written from the definitions -------------------------------


def ref_pads(hw, khw, strides, padding, dilation):
    """((top, bottom), (left, right)): SAME gives ⌈H/s⌉ outputs, the odd pad pixel after."""
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if padding == "SAME":
        pads = []
        for n, k, s, d in zip(hw, khw, strides, dilation, strict=True):
            needed = (math.ceil(n / s) - 1) * s + (k - 1) * d + 1
            total = max(needed - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return padding


def ref_conv(x, k, strides, pads, dilation):
    """y[n,i,j,o] = Σ_{a,b,c} x_p[n, i·s_h + a·d_h, j·s_w + b·d_w, c] K[a,b,c,o]."""
    x_p = np.pad(x.astype(np.float64), ((0, 0), *pads, (0, 0)))
    k = k.astype(np.float64)
    (sh, sw), (dh, dw) = strides, dilation
    kh, kw, _, c_out = k.shape
    ho = (x_p.shape[1] - (kh - 1) * dh - 1) // sh + 1
    wo = (x_p.shape[2] - (kw - 1) * dw - 1) // sw + 1
    y = np.zeros((x.shape[0], ho, wo, c_out))
    for i, j, a, b in itertools.product(range(ho), range(wo), range(kh), range(kw)):
        y[:, i, j] += x_p[:, i * sh + a * dh, j * sw + b * dw] @ k[a, b]
    return y


def ref_grads(x, k, g, strides, pads, dilation):
    """dL/dx and dL/dK of L = Σ y·g, accumulated tap by tap from the definition of y."""
    x_p = np.pad(x.astype(np.float64), ((0, 0), *pads, (0, 0)))
    k = k.astype(np.float64)
    (sh, sw), (dh, dw) = strides, dilation
    kh, kw = k.shape[:2]
    dx_p, dk = np.zeros_like(x_p), np.zeros_like(k)
    for i, j, a, b in itertools.product(range(g.shape[1]), range(g.shape[2]), range(kh), range(kw)):
        r, c = i * sh + a * dh, j * sw + b * dw
        dk[a, b] += x_p[:, r, c].T @ g[:, i, j]
        dx_p[:, r, c] += g[:, i, j] @ k[a, b].T
    (pt, pb), (pl, pr) = pads
    return dx_p[:, pt : x_p.shape[1] - pb, pl : x_p.shape[2] - pr], dk


def ref_toeplitz(k, hw, strides, pads, dilation):
    """T[(p_h·W_p + p_w)·C_in + c, (i·W_o + j)·C_out + o] = K[a, b, c, o] where the tap hits."""
    kh, kw, c_in, c_out = k.shape
    hp, wp = hw[0] + sum(pads[0]), hw[1] + sum(pads[1])
    (sh, sw), (dh, dw) = strides, dilation
    ho, wo = (hp - (kh - 1) * dh - 1) // sh + 1, (wp - (kw - 1) * dw - 1) // sw + 1
    t = np.zeros((hp, wp, c_in, ho, wo, c_out))
    for i, j, a, b in itertools.product(range(ho), range(wo), range(kh), range(kw)):
        t[i * sh + a * dh, j * sw + b * dw, :, i, j, :] = k[a, b]
    return t.reshape(hp * wp * c_in, ho * wo * c_out)


# ---- cases ----------------------------------------------------------------------------------

# (N, H, W, C_in, C_out, kh, kw): rectangular images and kernels, several channel counts.
SHAPES = [(2, 7, 9, 3, 4, 3, 3), (1, 8, 6, 1, 2, 3, 2), (3, 6, 5, 5, 3, 1, 3)]
PADDINGS = ["SAME", "VALID", ((1, 2), (0, 1)), 1]
# Every stride × padding × dilation combination once, the shapes taking turns.
CASES = [
    (seed, SHAPES[seed % len(SHAPES)], s, p, d)
    for seed, (s, p, d) in enumerate(
        itertools.product([(1, 1), (2, 2), (2, 1)], PADDINGS, [(1, 1), (2, 2), (1, 2)])
    )
]


def jitted(conv, **kwargs):
    """conv with its static arguments bound, jitted: one compile instead of many eager ops."""
    return jax.jit(lambda x, k: conv(x, k, **kwargs))


def random_inputs(shape, seed, dtype=np.float32):
    n, h, w, c_in, c_out, kh, kw = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c_in)).astype(dtype)
    k = rng.standard_normal((kh, kw, c_in, c_out)).astype(dtype)
    return x, k


@pytest.mark.parametrize(("seed", "shape", "strides", "padding", "dilation"), CASES)
def test_algorithms_match_lax_and_numpy_reference(seed, shape, strides, padding, dilation):
    x, k = random_inputs(shape, seed)
    pads = ref_pads(shape[1:3], shape[5:7], strides, padding, dilation)
    expected = ref_conv(x, k, strides, pads, dilation)
    lax_padding = padding if isinstance(padding, str) else pads
    via_lax = lax.conv_general_dilated(
        x, k, strides, lax_padding, rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    atol = 1e-5 * np.abs(expected).max()
    np.testing.assert_allclose(via_lax, expected, rtol=1e-5, atol=atol)
    for name, conv in ALGORITHMS.items():
        y = jitted(conv, strides=strides, padding=padding, dilation=dilation)(x, k)
        assert y.shape == expected.shape and y.dtype == jnp.float32, name
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=atol, err_msg=name)
        np.testing.assert_allclose(y, via_lax, rtol=1e-5, atol=atol, err_msg=name)


def test_same_padding_follows_xla_rule():
    # Even totals split evenly; odd totals put the extra pixel at the bottom/right.
    assert resolve_padding((32, 32), (3, 3), 1, "SAME") == ((1, 1), (1, 1))
    assert resolve_padding((32, 31), (3, 4), 2, "SAME") == ((0, 1), (1, 2))
    assert resolve_padding((5, 5), (3, 3), 1, "SAME", dilation=2) == ((2, 2), (2, 2))
    for hw, khw, s, d in [((7, 9), (3, 2), (2, 1), (1, 2)), ((4, 4), (5, 5), (3, 3), (1, 1))]:
        assert resolve_padding(hw, khw, s, "SAME", d) == ref_pads(hw, khw, s, "SAME", d)


def test_bfloat16_inputs():
    x, k = random_inputs((2, 6, 7, 4, 3, 3, 3), seed=1)
    x16, k16 = jnp.asarray(x, jnp.bfloat16), jnp.asarray(k, jnp.bfloat16)
    expected = ref_conv(np.asarray(x16, np.float64), np.asarray(k16, np.float64), (1, 1),
                        ((1, 1), (1, 1)), (1, 1))
    for name, conv in ALGORITHMS.items():
        y = jitted(conv, padding="SAME")(x16, k16)
        assert y.dtype == jnp.bfloat16, name
        # Accumulation is float32; only rounding the output to bf16 (8 mantissa bits, relative
        # error <= 2^-9) separates it from the float64 sum of the same bf16 inputs.
        np.testing.assert_allclose(np.asarray(y, np.float64), expected, rtol=1e-2,
                                   atol=1e-2 * np.abs(expected).max(), err_msg=name)


def test_eager_matches_jit():
    x, k = random_inputs((2, 9, 8, 3, 5, 3, 3), seed=2)
    for name, conv in ALGORITHMS.items():
        fn = jitted(conv, strides=2, padding="SAME", dilation=1)
        np.testing.assert_allclose(conv(x, k, strides=2), fn(x, k), rtol=1e-6, atol=1e-5,
                                   err_msg=name)


@pytest.mark.parametrize(
    ("strides", "padding", "dilation"),
    [((1, 1), "SAME", (1, 1)), ((2, 1), "VALID", (1, 2)), ((2, 2), ((1, 0), (2, 1)), (2, 1))],
)
def test_gradients_match_reference_and_each_other(strides, padding, dilation):
    shape = (2, 7, 6, 3, 4, 3, 2)
    x, k = random_inputs(shape, seed=3)
    pads = ref_pads(shape[1:3], shape[5:7], strides, padding, dilation)
    g = np.random.default_rng(4).standard_normal(ref_conv(x, k, strides, pads, dilation).shape)
    dx_ref, dk_ref = ref_grads(x, k, g, strides, pads, dilation)
    for name, conv in ALGORITHMS.items():
        loss = lambda x, k, conv=conv: jnp.sum(
            conv(x, k, strides=strides, padding=padding, dilation=dilation) * g
        )
        dx, dk = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, k)
        np.testing.assert_allclose(dk, dk_ref, rtol=1e-5, atol=1e-5 * np.abs(dk_ref).max(),
                                   err_msg=name)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5 * np.abs(dx_ref).max(),
                                   err_msg=name)


@pytest.mark.parametrize(
    ("hw", "strides", "padding", "dilation"),
    [((5, 6), (1, 1), "SAME", (1, 1)), ((7, 5), (2, 1), ((1, 0), (2, 1)), (1, 2)),
     ((6, 6), (2, 2), "VALID", (2, 1))],
)
def test_toeplitz_matrix_structure(hw, strides, padding, dilation):
    rng = np.random.default_rng(5)
    k = rng.standard_normal((3, 2, 2, 3)).astype(np.float32)
    pads = ref_pads(hw, k.shape[:2], strides, padding, dilation)
    t = np.asarray(toeplitz_matrix(k, hw, strides=strides, padding=padding, dilation=dilation))
    t_ref = ref_toeplitz(k, hw, strides, pads, dilation)
    np.testing.assert_array_equal(t, t_ref)  # entries are copies of kernel entries: exact
    hp, wp = hw[0] + sum(pads[0]), hw[1] + sum(pads[1])
    ho = (hp - 2 * dilation[0] - 1) // strides[0] + 1
    wo = (wp - 1 * dilation[1] - 1) // strides[1] + 1
    assert t.shape == (hp * wp * 2, ho * wo * 3)
    # Each output pixel sees k_h·k_w distinct input pixels, each through a C_in×C_out block.
    assert np.count_nonzero(t) == ho * wo * k.size
    # Block Toeplitz: moving an output row i → i+1 and the input row p_h → p_h + s_h gives the
    # same block (likewise for columns inside each block): T depends on p − s·q only.
    t6 = t.reshape(hp, wp, 2, ho, wo, 3)
    sh, sw = strides
    np.testing.assert_array_equal(t6[sh:, :, :, 1:], t6[: hp - sh, :, :, :-1])
    np.testing.assert_array_equal(t6[:, sw:, :, :, 1:], t6[:, : wp - sw, :, :, :-1])


def test_registry_names():
    assert {"im2col", "toeplitz", "xla"} <= set(CONV_ALGORITHMS.names())
    for name, fn in ALGORITHMS.items():
        assert CONV_ALGORITHMS.get(name) is fn


@pytest.mark.parametrize("conv", ALGORITHMS.values(), ids=ALGORITHMS.keys())
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strides": 0}, "strides must be a positive int"),
        ({"strides": (1, -2)}, "strides must be a positive int"),
        ({"strides": (1, 1, 1)}, "strides must be"),
        ({"dilation": 0}, "dilation must be a positive int"),
        ({"padding": "FULL"}, "padding must be"),
        ({"padding": -1}, "padding must be"),
        ({"padding": ((1, -1), (0, 0))}, "padding must be"),
        ({"padding": ((1,), (0, 0))}, "padding must be"),
        ({"padding": (1, 2)}, "padding must be"),
        ({"padding": None}, "padding must be"),
    ],
)
def test_bad_arguments_raise(conv, kwargs, match):
    x, k = random_inputs((1, 5, 5, 2, 3, 3, 3), seed=6)
    with pytest.raises(ValueError, match=match):
        conv(x, k, **kwargs)


@pytest.mark.parametrize("conv", ALGORITHMS.values(), ids=ALGORITHMS.keys())
def test_bad_shapes_raise(conv):
    x, k = random_inputs((1, 5, 5, 2, 3, 3, 3), seed=7)
    with pytest.raises(ValueError, match="input channels 2 .* C_in=4"):
        conv(np.zeros((1, 5, 5, 4), np.float32), k)
    with pytest.raises(ValueError, match="NHWC"):
        conv(x[0], k)
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv(x, np.zeros((6, 3, 2, 3), np.float32), padding="VALID")
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv(x, k, padding="VALID", dilation=3)


def test_toeplitz_too_large_raises():
    k = np.zeros((3, 3, 64, 64), np.float32)
    with pytest.raises(ValueError, match=r"T would be \(66·66·64\) x \(64·64·64\) = .* elements"):
        conv2d_toeplitz(np.zeros((1, 64, 64, 64), np.float32), k)
    with pytest.raises(ValueError, match="max_elements=100"):
        toeplitz_matrix(np.zeros((3, 3, 1, 1), np.float32), (8, 8), max_elements=100)
    with pytest.raises(ValueError, match="input_hw must be"):
        toeplitz_matrix(k, (8, 8, 3))
