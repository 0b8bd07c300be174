"""`normlab bench --conv`: the convolution paths XLA offers for ResNet-20, against PyTorch eager.

Each path computes the same cross-correlation (NHWC input, HWIO kernel, normlab's symmetric
padding ⌊k/2⌋) a different way:

  xla     `lax.conv_general_dilated` with NHWC/HWIO dimension numbers (flax's, the default);
  nchw    the same conv on NCHW/OIHW operands, transposed in and out;
  im2col  normlab's conv-as-matmul (`normlab.nn.conv_matmul.conv2d_im2col`): k² strided
          slices stacked into patches, one matmul;
  dot1x1  1×1 convs as a strided slice and one 4-D dot_general (exact: the same sum), xla else;
  hybrid  im2col (one 2-D matmul for a 1×1 conv) for 1×1 convs and convs of ≤ 4 input
          channels (the stem), where it measured faster; xla else.

Two measurements, each interleaved in one process with the PyTorch references (NCHW default
and channels_last, the same arrays) so that load hits all alike; ratios are paired medians
(`harness.paired_ratio`):
  convs  every conv shape of ResNet-20 at the given batch, forward and forward+backward
         (gradients of ½Σy² w.r.t. input and kernel);
  step   normlab's ResNet-20 train step (pre-activation, BN, the CIFAR recipe, float32) with
         every conv of the model on one path, against `torch_ref.resnet20_step`; with the
         step's compile and init seconds.

    result = bench_conv_paths(batch=128, repeats=5)
    print(markdown(result))
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen.linear
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from normlab.bench import torch_ref
from normlab.bench.harness import compile_timed, paired_ratio, time_interleaved
from normlab.nn.conv_matmul import conv2d_im2col

Pads = tuple[tuple[int, int], tuple[int, int]]
ConvFn = Callable[[jax.Array, jax.Array, tuple[int, int], Pads], jax.Array]

# ResNet-20's conv shapes (pre-activation, projection shortcuts): (H = W, C_in, C_out, k, stride)
RESNET20_CONVS = (
    (32, 3, 16, 3, 1), (32, 16, 16, 3, 1), (16, 32, 32, 3, 1), (8, 64, 64, 3, 1),
    (32, 16, 32, 3, 2), (16, 32, 64, 3, 2), (32, 16, 32, 1, 2), (16, 32, 64, 1, 2),
)
QUICK_CONVS = ((8, 4, 4, 3, 1), (8, 4, 8, 3, 2), (8, 4, 8, 1, 2))
TORCH = ("torch", "torch_cl")
# the step also runs PyTorch on one intra-op thread: its OpenMP barriers stall when the
# machine's other jobs deschedule one of two threads
TORCH_STEP = (*TORCH, "torch_1t")


def _xla(x: jax.Array, k: jax.Array, strides: tuple[int, int], pads: Pads) -> jax.Array:
    return lax.conv_general_dilated(x, k, strides, pads,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _nchw(x: jax.Array, k: jax.Array, strides: tuple[int, int], pads: Pads) -> jax.Array:
    y = lax.conv_general_dilated(jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(k, (3, 2, 0, 1)),
                                 strides, pads, dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return jnp.transpose(y, (0, 2, 3, 1))


def _im2col(x: jax.Array, k: jax.Array, strides: tuple[int, int], pads: Pads) -> jax.Array:
    return conv2d_im2col(x, k, strides=strides, padding=pads)


def _dot1x1(x: jax.Array, k: jax.Array, strides: tuple[int, int], pads: Pads) -> jax.Array:
    if k.shape[:2] != (1, 1) or any(p != (0, 0) for p in pads):
        return _xla(x, k, strides, pads)
    x = x[:, :: strides[0], :: strides[1], :]
    return lax.dot_general(x, k[0, 0], (((3,), (0,)), ((), ())))


def _hybrid(x: jax.Array, k: jax.Array, strides: tuple[int, int], pads: Pads) -> jax.Array:
    unpadded_1x1 = k.shape[:2] == (1, 1) and all(p == (0, 0) for p in pads)
    fast = unpadded_1x1 or x.shape[-1] <= HYBRID_MAX_C_IN
    return (_im2col if fast else _xla)(x, k, strides, pads)


# hybrid's im2col threshold: the RGB stem (3 channels) measured 0.55× xla's fwd+bwd
HYBRID_MAX_C_IN = 4
PATHS: dict[str, ConvFn] = {"xla": _xla, "nchw": _nchw, "im2col": _im2col, "dot1x1": _dot1x1,
                            "hybrid": _hybrid}


def _flax_conv(path: ConvFn) -> Callable[..., jax.Array]:
    """`path` behind `lax.conv_general_dilated`'s signature, as flax's Conv calls it: plain
    NHWC/HWIO convs (no dilation, no groups) take the path, anything else stays lax's."""
    nhwc = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))

    def conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
             lhs_dilation: Any = None, rhs_dilation: Any = None, dimension_numbers: Any = None,
             feature_group_count: int = 1, precision: Any = None, **kw: Any) -> jax.Array:
        plain = (lhs.ndim == 4 and dimension_numbers == nhwc and feature_group_count == 1
                 and not isinstance(padding, str) and precision is None and not kw
                 and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))))
        if not plain:
            return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                            rhs_dilation, dimension_numbers,
                                            feature_group_count, precision=precision, **kw)
        pads = tuple((int(a), int(b)) for a, b in padding)
        return path(lhs, rhs, tuple(window_strides), pads)

    return conv


class _Lax:
    """jax.lax with `conv_general_dilated` replaced: what flax's Conv module sees."""

    def __init__(self, conv: Callable[..., jax.Array]):
        self.conv_general_dilated = conv

    def __getattr__(self, name: str) -> Any:
        return getattr(lax, name)


@contextlib.contextmanager
def conv_path(name: str) -> Iterator[None]:
    """Every flax Conv traced inside the block runs on path `name` (benchmark only: it swaps
    the `lax` that flax.linen.linear looks up at call time, so nothing else is touched)."""
    if name not in PATHS:
        raise ValueError(f"conv path must be one of {sorted(PATHS)}, got {name!r}")
    saved = flax.linen.linear.lax
    flax.linen.linear.lax = _Lax(_flax_conv(PATHS[name]))
    try:
        yield
    finally:
        flax.linen.linear.lax = saved


def _shape_name(shape: Sequence[int]) -> str:
    hw, c_in, c_out, k, s = shape
    return f"{k}×{k}/{s} {hw}²×{c_in}→{c_out}"


def _jax_conv_calls(path: ConvFn, x: jax.Array, k: jax.Array, stride: int
                    ) -> dict[str, Callable[[], Any]]:
    pad = k.shape[0] // 2
    pads = ((pad, pad), (pad, pad))
    fwd = jax.jit(lambda x, k: path(x, k, (stride, stride), pads))

    def loss(x: jax.Array, k: jax.Array) -> jax.Array:
        y = path(x, k, (stride, stride), pads)
        return 0.5 * jnp.sum(y * y)

    fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return {"fwd": lambda: fwd(x, k), "fwd_bwd": lambda: fwd_bwd(x, k)}


def bench_convs(shapes: Sequence[Sequence[int]], paths: Sequence[str], batch: int, *,
                torch: bool, repeats: int, min_sample_s: float) -> list[dict[str, Any]]:
    """One row per conv shape × path (and PyTorch layout): fwd and fwd+bwd ms, their paired
    ratios to xla's and, with `torch`, to each PyTorch layout's."""
    rng = np.random.default_rng(0)
    rows = []
    for shape in shapes:
        hw, c_in, c_out, ksize, stride = shape
        x_np = rng.standard_normal((batch, hw, hw, c_in)).astype(np.float32)
        # He normal, as the models' kernels
        k_np = (rng.standard_normal((ksize, ksize, c_in, c_out))
                * np.sqrt(2.0 / (ksize * ksize * c_in))).astype(np.float32)
        x, k = jnp.asarray(x_np), jnp.asarray(k_np)
        calls = {name: _jax_conv_calls(PATHS[name], x, k, stride) for name in paths}
        if torch:
            for name in TORCH:
                calls[name] = torch_ref.conv_calls(x_np, k_np, stride,
                                                   channels_last=name == "torch_cl")
        flat = {(name, mode): fn for name, fns in calls.items() for mode, fn in fns.items()}
        timings = time_interleaved(flat, repeats=repeats, min_sample_s=min_sample_s)
        for name in calls:
            row: dict[str, Any] = {"shape": _shape_name(shape), "path": name, "batch": batch}
            for mode in ("fwd", "fwd_bwd"):
                t = timings[(name, mode)]
                row[f"{mode}_ms"] = t.median_ms
                row[f"{mode}_ratio_to_xla"] = (paired_ratio(t, timings[("xla", mode)])
                                               if "xla" in calls else None)
                for ref in TORCH:
                    row[f"{mode}_ratio_to_{ref}"] = (paired_ratio(t, timings[(ref, mode)])
                                                     if ref in calls else None)
            rows.append(row)
    return rows


def _jax_step(path: str, model: str, x: jax.Array, labels: jax.Array,
              model_kwargs: dict[str, Any]
              ) -> tuple[Callable[[], Any], dict[str, float]]:
    from normlab.bench.models import _initializer, _Stepper, step_config
    from normlab.train.step import train_step

    with conv_path(path):
        cfg = step_config(model, "batch", "float32", 8, 10, model_kwargs)
        start = time.perf_counter()
        state = jax.block_until_ready(_initializer(cfg)(x[:2]))
        init_s = time.perf_counter() - start
        step = jax.jit(functools.partial(train_step, cfg), donate_argnums=0)
        compiled, compile_s = compile_timed(step, state, x, labels)
    return _Stepper(compiled, state, x, labels), {"init_s": init_s, "compile_s": compile_s}


def bench_step(paths: Sequence[str], batch: int, *, torch: bool, repeats: int,
               min_sample_s: float, model: str = "resnet20", image_size: int = 32,
               model_kwargs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per path (and PyTorch layout): the `model` step's ms (a CIFAR ResNet; PyTorch's
    is always ResNet-20), paired ratios to xla's and to each PyTorch layout's, and the JAX
    step's init and compile seconds."""
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((batch, image_size, image_size, 3)).astype(np.float32)
    y_np = rng.integers(0, 10, batch).astype(np.int32)
    x, labels = jnp.asarray(x_np), jnp.asarray(y_np)
    calls, info = {}, {}
    for name in paths:
        calls[name], info[name] = _jax_step(name, model, x, labels,
                                            {"preact": True, **(model_kwargs or {})})
    if torch:
        for name in TORCH_STEP:
            calls[name] = torch_ref.resnet20_step(x_np, y_np, channels_last=name == "torch_cl",
                                                  threads=1 if name == "torch_1t" else None)
            info[name] = {}
    timings = time_interleaved(calls, repeats=repeats, min_sample_s=min_sample_s)
    rows = []
    for name, t in timings.items():
        rows.append({
            "path": name, "model": "resnet20" if name in TORCH_STEP else model, "batch": batch,
            "step_ms": t.median_ms, "step_p10_ms":
            t.percentile_ms(10), "step_p90_ms": t.percentile_ms(90),
            "ratio_to_xla": paired_ratio(t, timings["xla"]) if "xla" in timings else None,
            **{f"ratio_to_{ref}": paired_ratio(t, timings[ref]) if ref in timings else None
               for ref in TORCH_STEP},
            **info[name],
        })
    return rows


def bench_conv_paths(*, batch: int = 128, paths: Sequence[str] = tuple(PATHS),
                     quick: bool = False, torch: bool = True, repeats: int = 5,
                     min_sample_s: float = 0.05, step: bool = True) -> dict[str, Any]:
    """Both measurements (module docstring). `quick`: tiny conv shapes and a quarter-width
    ResNet-8 on 8×8 images (seconds). `torch=False` leaves the PyTorch rows out; so does a
    missing torch, with the install command in the result's "torch" entry."""
    for name in paths:
        if name not in PATHS:
            raise ValueError(f"--conv-paths must name paths of {sorted(PATHS)}, got {name!r}")
    if "xla" not in paths:
        raise ValueError(f"--conv-paths must include xla (the ratios' reference), got {paths}")
    out: dict[str, Any] = {"paths": list(paths), "torch": None}
    if torch:
        try:
            out["torch"] = torch_ref.describe()
        except ImportError as err:
            out["torch"], torch = {"missing": str(err)}, False
    out["convs"] = bench_convs(QUICK_CONVS if quick else RESNET20_CONVS, paths, batch,
                               torch=torch, repeats=repeats, min_sample_s=min_sample_s)
    if step:
        model, image_size, kwargs = (("resnet8", 8, {"width_multiplier": 0.25}) if quick
                                     else ("resnet20", 32, {}))
        out["step"] = bench_step(paths, batch, torch=torch, repeats=repeats,
                                 min_sample_s=min_sample_s, model=model,
                                 image_size=image_size, model_kwargs=kwargs)
    return out


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def markdown(result: dict[str, Any]) -> str:
    """Tables: per conv shape × path, ms and ratios; the ResNet-20 step per path."""
    lines = [f"PyTorch: {result['torch']}", "",
             "| conv (batch N) | path | fwd ms | ×xla | ×torch | ×torch_cl | fwd+bwd ms | ×xla | "
             "×torch | ×torch_cl |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["convs"]:
        cells = [f"{r[f'{m}_ms']:.2f} | {_fmt(r[f'{m}_ratio_to_xla'])} | "
                 f"{_fmt(r[f'{m}_ratio_to_torch'])} | {_fmt(r[f'{m}_ratio_to_torch_cl'])}"
                 for m in ("fwd", "fwd_bwd")]
        lines.append(f"| {r['shape']} (N={r['batch']}) | {r['path']} | {cells[0]} | {cells[1]} |")
    if result.get("step"):
        lines += ["", "| train step (batch N) | path | step ms [p10–p90] | ×xla | ×torch | "
                  "×torch_cl | ×torch_1t | init s | compile s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in result["step"]:
            init, comp = r.get("init_s"), r.get("compile_s")
            lines.append(
                f"| {r['model']} N={r['batch']} | {r['path']} | {r['step_ms']:.1f} "
                f"[{r['step_p10_ms']:.1f}–{r['step_p90_ms']:.1f}] | {_fmt(r['ratio_to_xla'])} | "
                f"{_fmt(r['ratio_to_torch'])} | {_fmt(r['ratio_to_torch_cl'])} | "
                f"{_fmt(r['ratio_to_torch_1t'])} | {_fmt(init)} | {_fmt(comp)} |")
    return "\n".join(lines)
