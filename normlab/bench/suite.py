"""`normlab bench --suite gpu`: the one-command accelerator suite (≤ 6 min on one H100/H200).

    normlab bench --suite gpu --json gpu.json     # also writes gpu.md
    normlab bench --suite gpu --quick             # the same code on tiny shapes, seconds on CPU

Sections, each measured in one process with interleaved repeats (`normlab.bench.harness`):
  norm_ops  every norm alone (`norm_ops.bench_norm_ops`), forward and forward+backward, relative
            to BN and to flax's same norm, bfloat16 and float32, CIFAR (batch 512) and ImageNet
            (batch 256) activation shapes;
  models    ResNet-20 (CIFAR, batch 512) and ResNet-50 (224 px, batch 256) bfloat16 training
            steps on fake data: images/s, init and first-step compile seconds, and MFU = XLA's
            FLOP count of the compiled step (`compiled.cost_analysis()`) / step time / the
            device's datasheet peak (`PEAK_TFLOPS`; an unknown device gets no MFU, with a note);
  input     the host input (`normlab.bench.input.bench_input`): JPEG decode + augment by
            worker threads and the stream end to end, images/s;
  parallel  the training chunk as `normlab train` builds it (`build_run`) for data, tensor
            (mesh.model) and GPipe (mesh.stage, 2 microbatches) layouts of a ReLU MLP on the
            built-in digits: steps/s, a smoke figure. On one device tensor parallelism is the
            sharding-rule path on a 1-wide model axis, and GPipe (it needs mesh.stage ≥ 2) is
            reported as skipped.

    result = bench_suite(quick=True)
    print(markdown(result))
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from normlab.bench import input as input_bench
from normlab.bench import norm_ops
from normlab.bench.harness import compile_timed, compiled_cost, paired_ratio, time_interleaved
from normlab.bench.models import _initializer, _Stepper, step_config
from normlab.train.step import train_step

# Dense (no sparsity) datasheet peaks in TFLOP/s, keyed by a lower-case substring of
# `jax.devices()[0].device_kind` (first match wins, so the more specific key comes first).
# "float32" is what XLA runs float32 matmuls and convolutions at by default on these parts:
# TF32 tensor cores on NVIDIA (JAX's default precision), bfloat16 passes on TPU.
# Sources: NVIDIA H100 and H200 Tensor Core GPU datasheets (SXM: BF16 989.4, TF32 494.7;
# H100 PCIe: 756.5, 378), NVIDIA A100 datasheet (BF16 312, TF32 156), Google Cloud TPU docs
# (v4: 275 BF16 per chip; v5e: 197 BF16 per chip).
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "h100 pcie": {"bfloat16": 756.5, "float32": 378.0},
    "h100": {"bfloat16": 989.4, "float32": 494.7},
    "h200": {"bfloat16": 989.4, "float32": 494.7},
    "a100": {"bfloat16": 312.0, "float32": 156.0},
    "tpu v4": {"bfloat16": 275.0, "float32": 275.0},
    "tpu v5 lite": {"bfloat16": 197.0, "float32": 197.0},
    "tpu v5e": {"bfloat16": 197.0, "float32": 197.0},
}


def device_peak_flops(device_kind: str, dtype: str) -> float | None:
    """The datasheet peak FLOP/s of `device_kind` in `dtype` (`PEAK_TFLOPS`), None if unknown."""
    kind = device_kind.lower()
    for key, peaks in PEAK_TFLOPS.items():
        if key in kind:
            return peaks[dtype] * 1e12 if dtype in peaks else None
    return None


# The suite's sizes: FULL on the accelerator, QUICK the same code on tiny shapes (CPU, CI).
FULL: dict[str, Any] = {
    "norm_shapes": ((512, 32, 32, 16), (512, 16, 16, 32), (512, 8, 8, 64),
                    (256, 56, 56, 64), (256, 14, 14, 256), (256, 7, 7, 512)),
    # 216 small compiles: samples of 10 ms (hundreds of GPU kernels each) keep this ~2-3 min
    "norms": norm_ops.DEFAULT_NORMS, "norm_dtypes": ("bfloat16", "float32"), "norm_repeats": 8,
    "min_sample_ms": 10.0,
    "models": (
        {"name": "resnet20", "kwargs": {"preact": True}, "batch": 512, "image": (32, 32, 3),
         "classes": 10},
        {"name": "resnet50", "kwargs": {}, "batch": 256, "image": (224, 224, 3),
         "classes": 1000},
    ),
    "model_dtype": "bfloat16", "model_repeats": 5,
    "input": {"size": 224, "threads": [1, 4, 16], "images": 128, "batch": 64, "chunks": 4},
    "parallel": {"depth": 5, "width": 1024, "batch": 256, "steps_per_call": 20},
}
QUICK: dict[str, Any] = {
    "norm_shapes": ((8, 4, 4, 16),), "norms": ("batch", "flax:batch"),
    "norm_dtypes": ("bfloat16", "float32"), "norm_repeats": 2, "min_sample_ms": 1.0,
    "models": (
        {"name": "mlp", "kwargs": {"depth": 2, "width": 16, "activation": "relu"}, "batch": 8,
         "image": (4, 4, 3), "classes": 10},
    ),
    "model_dtype": "bfloat16", "model_repeats": 2,
    "input": {"size": 32, "threads": [1], "images": 4, "batch": 2, "chunks": 1},
    "parallel": {"depth": 5, "width": 8, "batch": 8, "steps_per_call": 2},
}
SECTIONS = ("norm_ops", "models", "input", "parallel")


def bench_model_step(spec: dict[str, Any], dtype: str, *, repeats: int,
                     min_sample_s: float, device_kind: str) -> dict[str, Any]:
    """One model's training step (BN, the CIFAR recipe's optimizer) on fake data: init and
    compile seconds, ms/step, images/s, XLA FLOPs and MFU against the datasheet peak."""
    cfg = step_config(spec["name"], "batch", dtype, 8, spec["classes"], dict(spec["kwargs"]))
    rng = np.random.default_rng(0)
    batch = spec["batch"]
    x = jnp.asarray(rng.standard_normal((batch, *spec["image"])), jnp.float32)
    labels = jnp.asarray(rng.integers(0, spec["classes"], batch), jnp.int32)
    start = time.perf_counter()
    state = jax.block_until_ready(_initializer(cfg)(x[:2]))
    init_s = time.perf_counter() - start  # compiling the init and running it once
    step = jax.jit(functools.partial(train_step, cfg), donate_argnums=0)
    compiled, compile_s = compile_timed(step, state, x, labels)
    start = time.perf_counter()
    state, _ = jax.block_until_ready(compiled(state, x, labels))
    first_s = time.perf_counter() - start
    timing = time_interleaved({"step": _Stepper(compiled, state, x, labels)}, repeats=repeats,
                              min_sample_s=min_sample_s)["step"]
    seconds = timing.median_ms / 1e3
    cost = compiled_cost(compiled)
    peak = device_peak_flops(device_kind, dtype)
    flops_per_s = cost["flops"] / seconds if cost["flops"] else None
    return {
        "model": spec["name"], "model_kwargs": spec["kwargs"], "norm": "batch", "dtype": dtype,
        "batch": batch, "image": list(spec["image"]), "init_s": init_s, "compile_s": compile_s,
        "first_step_s": first_s, "step_ms": timing.median_ms, "step_p10_ms":
        timing.percentile_ms(10), "step_p90_ms": timing.percentile_ms(90),
        "images_per_s": batch / seconds, "flops": cost["flops"], "flops_per_s": flops_per_s,
        "peak_flops_per_s": peak,
        "mfu": flops_per_s / peak if flops_per_s and peak else None,
        "mfu_note": None if peak else f"no datasheet peak for device {device_kind!r}: MFU "
                                      "omitted (add it to normlab.bench.suite.PEAK_TFLOPS)",
        "temp_size_in_bytes": cost["temp_size_in_bytes"],
    }


def _parallel_config(layout: str, devices: int, spec: dict[str, Any]) -> Any:
    from normlab.train.defaults import base_config

    c = base_config()
    c.dataset, c.evals = "digits", {"eval": "test"}
    c.model = {"name": "mlp", "depth": spec["depth"], "width": spec["width"],
               "activation": "relu", "norm": "layer"}
    k = spec["steps_per_call"]
    c.lr, c.batch_size, c.total_steps, c.steps_per_call = 0.1, spec["batch"], 10**6, k
    mesh = {"data": {"data": devices}, "tensor": {"model": devices},
            "gpipe": {"stage": devices}}[layout]
    c.mesh = {"data": 1, "model": 1, "stage": 1, **mesh}
    c.pipeline.microbatches = 2 if layout == "gpipe" else 1
    return c


def bench_parallel(spec: dict[str, Any], *, repeats: int, min_sample_s: float,
                   devices: list[Any] | None = None) -> list[dict[str, Any]]:
    """steps/s of the data, tensor and GPipe layouts of `build_run`'s chunk (module doc) on
    `devices` (default: up to 2 of the visible ones), interleaved; ratio to the data layout."""
    from normlab.train.run import build_run

    devices = devices or jax.devices()[:2]
    n, k = len(devices), spec["steps_per_call"]
    rows, calls, initial = [], {}, None
    for layout in ("data", "tensor", "gpipe"):
        row: dict[str, Any] = {"layout": layout, "devices": n, "steps_per_call": k,
                               "model": f"mlp {spec['depth']}×{spec['width']}", "note": None}
        if layout == "gpipe" and n < 2:
            row["note"] = "skipped: GPipe needs mesh.stage >= 2, i.e. at least 2 devices"
        else:
            # one initial state placed into every layout: compiling each layout's init costs
            run = build_run(_parallel_config(layout, n, spec), devices, initial=initial)
            initial = jax.device_get(run.canonical()) if initial is None else initial
            args = run.data.chunk_args(0, k)
            start = time.perf_counter()
            run.state, _ = jax.block_until_ready(run.chunk(run.state, *args))
            row["first_call_s"] = time.perf_counter() - start  # compiling included
            calls[layout] = _Stepper(run.chunk, run.state, *args)
        rows.append(row)
    timings = time_interleaved(calls, repeats=repeats, min_sample_s=min_sample_s)
    for row in rows:
        t = timings.get(row["layout"])
        row["steps_per_s"] = k / (t.median_ms / 1e3) if t else None
        row["ratio_to_data"] = paired_ratio(t, timings["data"]) if t else None
    return rows


def bench_suite(*, quick: bool = False) -> dict[str, Any]:
    """Every section of the suite (module doc) at FULL or QUICK sizes; JSON-able."""
    s = QUICK if quick else FULL
    kind = jax.devices()[0].device_kind
    min_sample_s = s["min_sample_ms"] / 1e3
    out: dict[str, Any] = {"quick": quick, "device_kind": kind, "sizes": s}
    started = time.perf_counter()
    out["norm_ops"] = [
        row for dtype in s["norm_dtypes"] for row in norm_ops.bench_norm_ops(
            s["norm_shapes"], s["norms"], dtype=jnp.dtype(dtype),
            repeats=s["norm_repeats"], min_sample_s=min_sample_s)
    ]
    out["norm_ops_summary"] = norm_ops.summarize(out["norm_ops"])
    out["seconds"] = {"norm_ops": time.perf_counter() - started}
    started = time.perf_counter()
    out["models"] = [bench_model_step(spec, s["model_dtype"], repeats=s["model_repeats"],
                                      min_sample_s=min_sample_s, device_kind=kind)
                     for spec in s["models"]]
    out["seconds"]["models"] = time.perf_counter() - started
    started = time.perf_counter()
    i = s["input"]
    out["input"] = input_bench.bench_input(
        size=i["size"], threads=i["threads"], images=i["images"], batch=i["batch"],
        steps_per_call=1, chunks=i["chunks"], repeats=s["model_repeats"],
        min_sample_s=min_sample_s, grain=False, feeds=False)
    out["seconds"]["input"] = time.perf_counter() - started
    started = time.perf_counter()
    out["parallel"] = bench_parallel(s["parallel"], repeats=s["model_repeats"],
                                     min_sample_s=min_sample_s)
    out["seconds"]["parallel"] = time.perf_counter() - started
    return out


def _f(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "–" if value is None else format(value * scale, spec)


def markdown(result: dict[str, Any]) -> str:
    """The suite as Markdown: norm ratios, model steps with MFU, input rates, parallel."""
    lines = [f"Device: {result['device_kind']}" + (" (--quick)" if result["quick"] else ""), "",
             "Each norm alone (×BN and ×flax: paired median ratios)", "",
             norm_ops.markdown(result["norm_ops"]), "",
             "| model | dtype | batch | init s | compile s | ms/step [p10–p90] | images/s | "
             "GFLOP/step | TFLOP/s | MFU |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for r in result["models"]:
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['init_s']:.1f} | "
            f"{r['compile_s']:.1f} | {r['step_ms']:.2f} [{r['step_p10_ms']:.2f}–"
            f"{r['step_p90_ms']:.2f}] | {r['images_per_s']:.0f} | {_f(r['flops'], '.3g', 1e-9)} "
            f"| {_f(r['flops_per_s'], '.1f', 1e-12)} | {_f(r['mfu'], '.1f', 100)}% |")
        if r["mfu_note"]:
            notes.append(f"{r['model']}: {r['mfu_note']}")
    lines += [*notes, "", "| input | threads | images/s |", "|---|---:|---:|"]
    lines += [f"| {t['what']} ({t['decoder']}) | {t['threads']} | {t['images_per_s']:.0f} |"
              for t in result["input"]["transforms"]]
    lines += [f"| stream {t['pipeline']} | {t['threads']} | {t['images_per_s']:.0f} |"
              for t in result["input"]["streams"]]
    lines += ["", "| parallel layout | devices | steps/s | ×data | note |",
              "|---|---:|---:|---:|---|"]
    lines += [f"| {p['layout']} | {p['devices']} | {_f(p['steps_per_s'], '.1f')} | "
              f"{_f(p['ratio_to_data'], '.2f')} | {p['note'] or ''} |" for p in result["parallel"]]
    seconds = ", ".join(f"{k} {v:.0f} s" for k, v in result["seconds"].items())
    return "\n".join([*lines, "", f"suite time by section: {seconds}"])
