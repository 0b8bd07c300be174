"""2-D convolution as matrix multiplication: im2col and the doubly-blocked Toeplitz matrix.

All three algorithms compute the same cross-correlation (what deep-learning frameworks call
convolution), NHWC input, HWIO kernel:

    y[n, i, j, o] = Σ_{a, b, c} x_p[n, i·s_h + a·d_h, j·s_w + b·d_w, c] · K[a, b, c, o]

with x_p the zero-padded input, s the strides and d the (kernel) dilation. Output size:
H_o = ⌊(H_p − (k_h − 1)·d_h − 1) / s_h⌋ + 1 (likewise W_o).

- "im2col": the patches (N, H_o, W_o, k_h·k_w·C_in), one strided slice per kernel tap, times the
  kernel reshaped to (k_h·k_w·C_in, C_out): a single matmul.
- "toeplitz": the padded input flattened to (N, H_p·W_p·C_in) times the explicit matrix T
  (H_p·W_p·C_in, H_o·W_o·C_out) built from the kernel (`toeplitz_matrix`).
- "xla": `lax.conv_general_dilated`, the reference and the fast path.

    from normlab.registry import CONV_ALGORITHMS
    conv = CONV_ALGORITHMS.get("im2col")
    y_NHWC = conv(x_NHWC, kernel_HWIO, strides=2, padding="SAME")

Padding: "SAME" (XLA/TensorFlow's rule: output ⌈H/s⌉, total pad max((⌈H/s⌉ − 1)·s +
(k − 1)·d + 1 − H, 0), the odd pixel at the bottom/right), "VALID", an int p (p on every side),
or ((top, bottom), (left, right)). Strides and dilation: an int or an (h, w) pair.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from normlab.registry import CONV_ALGORITHMS

# 2^28 float32 entries = 1 GiB: past that the dense Toeplitz matrix is a memory hazard, not a
# demonstration.
MAX_TOEPLITZ_ELEMENTS = 2**28

Padding = str | int | Sequence[Sequence[int]]
Pair = int | Sequence[int]


def _pair(value: Pair, arg: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int | np.integer) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int | np.integer) and v >= 1 for v in pair):
        raise ValueError(f"{arg} must be a positive int or a pair of positive ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """XLA/TF "SAME" padding of one spatial axis: (before, after), the extra pixel after.

    total = max((⌈size/stride⌉ − 1)·stride + (kernel − 1)·dilation + 1 − size, 0).

        same_padding(32, 3, 2, 1)     # (0, 1)
    """
    total = max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def resolve_padding(
    input_hw: Sequence[int],
    kernel_hw: Sequence[int],
    strides: Pair = 1,
    padding: Padding = "SAME",
    dilation: Pair = 1,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The explicit ((top, bottom), (left, right)) padding meant by `padding`.

        resolve_padding((32, 32), (3, 3), 1, "SAME")      # ((1, 1), (1, 1))
    """
    strides, dilation = _pair(strides, "strides"), _pair(dilation, "dilation")
    if isinstance(padding, str):
        if padding.upper() == "SAME":
            return tuple(
                same_padding(n, k, s, d)
                for n, k, s, d in zip(input_hw, kernel_hw, strides, dilation, strict=True)
            )
        if padding.upper() == "VALID":
            return (0, 0), (0, 0)
    elif isinstance(padding, int | np.integer) and padding >= 0:
        return (int(padding),) * 2, (int(padding),) * 2
    elif isinstance(padding, Sequence) and all(isinstance(p, Sequence) for p in padding):
        pads = tuple(tuple(p) for p in padding)
        if (
            len(pads) == 2
            and all(len(p) == 2 for p in pads)
            and all(isinstance(v, int | np.integer) and v >= 0 for p in pads for v in p)
        ):
            return tuple((int(a), int(b)) for a, b in pads)
    raise ValueError(
        'padding must be "SAME", "VALID", an int >= 0 or ((top, bottom), (left, right)) of '
        f"ints >= 0, got padding={padding!r}"
    )


def _geometry(
    x_shape: Sequence[int],
    kernel_shape: Sequence[int],
    strides: Pair,
    padding: Padding,
    dilation: Pair,
    where: str,
) -> tuple[tuple[int, int], tuple[int, int], tuple[tuple[int, int], ...], tuple[int, int]]:
    """Validates the arguments; returns strides, dilation, padding pairs and (H_o, W_o)."""
    if len(x_shape) != 4 or len(kernel_shape) != 4:
        raise ValueError(
            f"{where}: x must be NHWC and kernel HWIO (4-D each), got x shape {tuple(x_shape)} "
            f"and kernel shape {tuple(kernel_shape)}"
        )
    if kernel_shape[2] != x_shape[3]:
        raise ValueError(
            f"{where}: kernel input channels {kernel_shape[2]} (kernel shape "
            f"{tuple(kernel_shape)}) do not match the input's C_in={x_shape[3]}"
        )
    s, d = _pair(strides, "strides"), _pair(dilation, "dilation")
    pads = resolve_padding(x_shape[1:3], kernel_shape[:2], s, padding, d)
    out_hw = []
    for n, k, si, di, (lo, hi) in zip(x_shape[1:3], kernel_shape[:2], s, d, pads, strict=True):
        span = (k - 1) * di + 1
        if n + lo + hi < span:
            raise ValueError(
                f"{where}: the dilated kernel ({span} pixels) is larger than the padded input "
                f"({n + lo + hi} pixels) for input {tuple(x_shape[1:3])}, kernel "
                f"{tuple(kernel_shape[:2])}, padding {pads}, dilation {d}"
            )
        out_hw.append((n + lo + hi - span) // si + 1)
    return s, d, pads, (out_hw[0], out_hw[1])


def _matmul(a: jax.Array, b: jax.Array, precision: lax.PrecisionLike) -> jax.Array:
    """a @ b accumulated in at least float32, returned in the operands' common dtype."""
    dtype = jnp.result_type(a, b)
    out = jnp.matmul(a, b, precision=precision, preferred_element_type=_acc_dtype(dtype))
    return out.astype(dtype)


def _acc_dtype(dtype: jnp.dtype) -> jnp.dtype:
    return jnp.promote_types(dtype, jnp.float32)


@CONV_ALGORITHMS.register("im2col")
def conv2d_im2col(
    x_NHWC: jax.Array,
    kernel_HWIO: jax.Array,
    *,
    strides: Pair = 1,
    padding: Padding = "SAME",
    dilation: Pair = 1,
    precision: lax.PrecisionLike = None,
) -> jax.Array:
    """conv2d as patches @ kernel: y = im2col(x_p) (N·H_o·W_o, k_h·k_w·C_in) @ K (…, C_out).

    Patch column (a·k_w + b)·C_in + c holds x_p[n, i·s_h + a·d_h, j·s_w + b·d_w, c], the row
    order of K.reshape(k_h·k_w·C_in, C_out); each tap (a, b) is one strided slice of x_p.

        y = conv2d_im2col(x_NHWC, kernel_HWIO, strides=1, padding="SAME")
    """
    (sh, sw), (dh, dw), pads, (ho, wo) = _geometry(
        x_NHWC.shape, kernel_HWIO.shape, strides, padding, dilation, "conv2d_im2col"
    )
    kh, kw, c_in, c_out = kernel_HWIO.shape
    n = x_NHWC.shape[0]
    x_p = jnp.pad(x_NHWC, ((0, 0), *pads, (0, 0)))
    taps = [
        lax.slice(
            x_p,
            (0, a * dh, b * dw, 0),
            (n, a * dh + (ho - 1) * sh + 1, b * dw + (wo - 1) * sw + 1, c_in),
            (1, sh, sw, 1),
        )
        for a in range(kh)
        for b in range(kw)
    ]
    patches = jnp.stack(taps, axis=3).reshape(n * ho * wo, kh * kw * c_in)
    y = _matmul(patches, kernel_HWIO.reshape(kh * kw * c_in, c_out), precision)
    return y.reshape(n, ho, wo, c_out)


def _selection(size_p: int, size_o: int, kernel: int, stride: int, dilation: int) -> np.ndarray:
    """S[a, p, q] = 1 where padded position p feeds output position q through tap a."""
    s = np.zeros((kernel, size_p, size_o), np.float32)
    q = np.arange(size_o)
    for a in range(kernel):
        s[a, q * stride + a * dilation, q] = 1.0
    return s


def toeplitz_matrix(
    kernel_HWIO: jax.Array,
    input_hw: Sequence[int],
    *,
    strides: Pair = 1,
    padding: Padding = "SAME",
    dilation: Pair = 1,
    max_elements: int = MAX_TOEPLITZ_ELEMENTS,
) -> jax.Array:
    """The doubly-blocked Toeplitz matrix T (H_p·W_p·C_in, H_o·W_o·C_out) of a conv2d.

    T[(p_h, p_w, c), (i, j, o)] = Σ_{a, b} S_h[a, p_h, i] S_w[b, p_w, j] K[a, b, c, o], with the
    0/1 selections S_h[a, p, i] = [p = i·s_h + a·d_h] (likewise S_w): y_flat = x_p_flat @ T. The
    2-D selection S[a, b, p, q] = S_h[a, p_h, i]·S_w[b, p_w, j] factorizes, so T is one einsum
    of two small tensors with the kernel. Viewed as an (H_p × H_o) grid of blocks indexed by
    (p_h, i), block (p_h, i) depends on p_h − i·s_h only (a Toeplitz grid of blocks for stride
    1), and each block, indexed by (p_w, j), depends on p_w − j·s_w: hence "doubly blocked".

        T = toeplitz_matrix(kernel_HWIO, (16, 16), padding="SAME")   # (18·18·C_in, 16·16·C_out)
    """
    if len(input_hw) != 2:
        raise ValueError(f"toeplitz_matrix: input_hw must be (H, W), got {input_hw!r}")
    h, w = input_hw
    (sh, sw), (dh, dw), ((pt, pb), (pl, pr)), (ho, wo) = _geometry(
        (1, h, w, kernel_HWIO.shape[2] if kernel_HWIO.ndim == 4 else -1),
        kernel_HWIO.shape,
        strides,
        padding,
        dilation,
        "toeplitz_matrix",
    )
    kh, kw, c_in, c_out = kernel_HWIO.shape
    hp, wp = h + pt + pb, w + pl + pr
    size = hp * wp * c_in * ho * wo * c_out
    if size > max_elements:
        raise ValueError(
            f"toeplitz_matrix: T would be ({hp}·{wp}·{c_in}) x ({ho}·{wo}·{c_out}) = {size:,} "
            f"elements ({size * 4 / 2**30:.1f} GiB as float32), over max_elements="
            f"{max_elements:,}; use im2col or xla for this size"
        )
    s_h = jnp.asarray(_selection(hp, ho, kh, sh, dh), kernel_HWIO.dtype)
    s_w = jnp.asarray(_selection(wp, wo, kw, sw, dw), kernel_HWIO.dtype)
    # HIGHEST: each entry of T is one kernel entry times 1; TF32/bf16 passes would round it.
    t = jnp.einsum(
        "api,bqj,abco->pqcijo", s_h, s_w, kernel_HWIO, precision=lax.Precision.HIGHEST
    )
    return t.reshape(hp * wp * c_in, ho * wo * c_out)


@CONV_ALGORITHMS.register("toeplitz")
def conv2d_toeplitz(
    x_NHWC: jax.Array,
    kernel_HWIO: jax.Array,
    *,
    strides: Pair = 1,
    padding: Padding = "SAME",
    dilation: Pair = 1,
    precision: lax.PrecisionLike = None,
) -> jax.Array:
    """conv2d as one matmul with the Toeplitz matrix: y = x_p.reshape(N, H_p·W_p·C_in) @ T.

    T = `toeplitz_matrix(kernel_HWIO, (H, W), ...)`; raises ValueError when T has more than
    `MAX_TOEPLITZ_ELEMENTS` entries. Costs H_p·W_p·C_in·H_o·W_o·C_out multiply-adds per image
    (im2col: k_h·k_w·C_in·H_o·W_o·C_out): a demonstration of the algebra, not a fast path.

        y = conv2d_toeplitz(x_NHWC, kernel_HWIO, strides=1, padding="VALID")
    """
    _, _, pads, (ho, wo) = _geometry(
        x_NHWC.shape, kernel_HWIO.shape, strides, padding, dilation, "conv2d_toeplitz"
    )
    t = toeplitz_matrix(
        kernel_HWIO, x_NHWC.shape[1:3], strides=strides, padding=pads, dilation=dilation
    )
    x_p = jnp.pad(x_NHWC, ((0, 0), *pads, (0, 0)))
    y = _matmul(x_p.reshape(x_p.shape[0], -1), t, precision)
    return y.reshape(x_NHWC.shape[0], ho, wo, kernel_HWIO.shape[3])


@CONV_ALGORITHMS.register("xla")
def conv2d_xla(
    x_NHWC: jax.Array,
    kernel_HWIO: jax.Array,
    *,
    strides: Pair = 1,
    padding: Padding = "SAME",
    dilation: Pair = 1,
    precision: lax.PrecisionLike = None,
) -> jax.Array:
    """conv2d by XLA: `lax.conv_general_dilated` (NHWC, HWIO) with the same conventions.

        y = conv2d_xla(x_NHWC, kernel_HWIO, strides=2, padding=1, dilation=1)
    """
    s, d, pads, _ = _geometry(
        x_NHWC.shape, kernel_HWIO.shape, strides, padding, dilation, "conv2d_xla"
    )
    dtype = jnp.result_type(x_NHWC, kernel_HWIO)
    y = lax.conv_general_dilated(
        x_NHWC,
        kernel_HWIO,
        window_strides=s,
        padding=pads,
        rhs_dilation=d,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=precision,
        preferred_element_type=_acc_dtype(dtype),
    )
    return y.astype(dtype)

