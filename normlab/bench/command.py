"""`normlab bench` (also `python scripts/bench.py`): training-step and per-norm benchmarks.

    normlab bench --models resnet20 --norms batch,group,group+proxy --json bench.json
    normlab bench --norm-ops --json norm_ops.json          # each norm alone, relative to BN
    normlab bench --quick                                  # a seconds-long smoke run
    normlab bench --input --json input.json    # host JPEG decode + augment, the stream (no model)
    normlab bench --suite gpu --json gpu.json  # the accelerator suite (normlab/bench/suite.py)
    normlab bench --seeds --json seeds.json    # 8 seeds in one program vs 8 separate runs
    normlab bench --conv --json conv.json      # XLA conv paths vs PyTorch eager (ResNet-20)

Prints Markdown tables, the targets of the benchmark issue (met or not, with the measured
ratios) and, with --json FILE, writes everything with the run's provenance (command, device,
time, git revision) and the machine's load averages before and after.

Wiring (in the CLI): `command.add_subcommand(subparsers)`; then `args.func(args)` runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from normlab.bench import conv_paths, norm_ops, suite
from normlab.bench import input as input_bench
from normlab.bench import models as model_bench
from normlab.bench import seeds as seeds_bench
from normlab.bench.harness import as_json, machine_load, matmul_flops_per_s, peak_memory_bytes

# Defaults of --quick and of a full run; explicit options override them.
QUICK = {
    "models": "mlp", "model_kwargs": '{"depth": 2, "width": 16, "activation": "relu"}',
    "image_size": 4, "batch_sizes": "8", "norms": "batch,group,group+proxy", "repeats": 2,
    "steps_per_call": 2, "dataset_size": 64, "matmul_size": 128, "shapes": "8x4x4x16",
    "min_sample_ms": 2.0, "input_size": 64, "input_images": 8, "input_batch": 4,
    "input_chunks": 2, "seed_steps_per_call": 5,
}
FULL = {  # normlab's CIFAR ResNet-20 config (pre-activation) at batch 128
    "models": "resnet20", "model_kwargs": '{"preact": true}', "image_size": 32,
    "batch_sizes": "128", "norms": None, "repeats": None, "steps_per_call": 1,
    "dataset_size": 4096, "matmul_size": None,
    "shapes": ",".join("x".join(map(str, s)) for s in norm_ops.DEFAULT_SHAPES),
    "min_sample_ms": 20.0, "input_size": 224, "input_images": 64, "input_batch": 32,
    "input_chunks": 8, "seed_steps_per_call": 100,
}
MODEL_NORMS = "batch,group,layer,group+proxy"
TARGETS = {"norm_fwd_bwd": 1.15, "norm_vs_flax": 1.0, "step_gn_pn": 1.15, "pipeline": 1.05,
           "gpu_bf16_mfu": 0.30}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared by `normlab bench` and scripts/bench.py)."""
    parser.add_argument("--norm-ops", action="store_true",
                        help="time each norm layer alone on NHWC tensors instead of models")
    parser.add_argument("--input", action="store_true",
                        help="time the host input instead of models: JPEG decode + augment by "
                        "worker threads, and the stream end to end")
    parser.add_argument("--input-threads", default="1,2",
                        help="--input: comma-separated worker-thread counts")
    parser.add_argument("--input-size", type=int, help="--input: output side (default 224)")
    parser.add_argument("--input-images", type=int,
                        help="--input: fake JPEGs per timed call (default 64)")
    parser.add_argument("--input-batch", type=int,
                        help="--input: the stream's batch (default 32)")
    parser.add_argument("--input-chunks", type=int,
                        help="--input: stream chunks timed after a warm-up chunk (default 8)")
    parser.add_argument("--seeds", action="store_true",
                        help="time K seeds of a small MLP in one program (num_seeds) against K "
                        "separate runs, instead of models")
    parser.add_argument("--num-seeds", type=int, default=8, help="--seeds: K (default 8)")
    parser.add_argument("--seed-steps-per-call", type=int,
                        help="--seeds: steps per jitted call (default 100)")
    parser.add_argument("--conv", action="store_true",
                        help="time ResNet-20's convs and train step on each XLA conv path "
                        "against PyTorch eager (the `bench` extra: torch), instead of models")
    parser.add_argument("--conv-paths", default=",".join(conv_paths.PATHS),
                        help=f"--conv: comma-separated paths of {','.join(conv_paths.PATHS)}")
    parser.add_argument("--no-torch", action="store_true",
                        help="--conv: leave the PyTorch references out")
    parser.add_argument("--no-step", action="store_true",
                        help="--conv: time the convs alone, not the ResNet-20 step")
    parser.add_argument("--suite", choices=["gpu"],
                        help="gpu: the one-command accelerator suite (norms vs BN and flax, "
                        "ResNet-20/50 bf16 steps with MFU, input, parallel layouts); with "
                        "--json FILE also FILE's .md table")
    parser.add_argument("--quick", action="store_true",
                        help="a seconds-long smoke run: tiny model and shapes, 2 repeats")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--norms", help=f"comma-separated NORMS names (models: {MODEL_NORMS}; "
                        f"--norm-ops: {','.join(norm_ops.DEFAULT_NORMS)})")
    parser.add_argument("--dtypes", default="float32", help="comma-separated, e.g. "
                        "float32,bfloat16 (models: compute dtype; --norm-ops: input dtype)")
    parser.add_argument("--repeats", type=int, help="interleaved timed samples per candidate "
                        "(default 5 for models, 10 for --norm-ops)")
    parser.add_argument("--min-sample-ms", type=float,
                        help="calls are repeated until a sample lasts about this long")
    parser.add_argument("--groups", type=int, default=8, help="G of the grouped norms")
    parser.add_argument("--shapes", help="--norm-ops: NHWC shapes, e.g. 128x16x16x32,64x4x4x512")
    parser.add_argument("--activation", default="relu", help="activation after each norm")
    parser.add_argument("--models", help="comma-separated MODELS names (default resnet20)")
    parser.add_argument("--model-kwargs", help='JSON of model fields, e.g. \'{"preact": true}\'')
    parser.add_argument("--batch-sizes", help="comma-separated (default 128)")
    parser.add_argument("--image-size", type=int, help="input H = W (default 32)")
    parser.add_argument("--image-channels", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--no-pipeline", action="store_true",
                        help="skip the input pipeline comparison")
    parser.add_argument("--steps-per-call", type=int, help="K steps per jitted call (pipeline)")
    parser.add_argument("--dataset-size", type=int, help="examples of the synthetic data set")
    parser.add_argument("--peak-tflops", type=float,
                        help="peak TFLOP/s for utilization (default: a matmul measured now)")
    parser.add_argument("--matmul-size", type=int,
                        help="n of the n×n matmul measuring the peak (default 2048 CPU, 8192 GPU)")


def add_subcommand(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds `bench` to `subparsers`; sets `func=run` on the namespace.

        parser = argparse.ArgumentParser(prog="normlab")
        add_subcommand(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(["bench", "--quick"])
        exit_status = args.func(args)
    """
    bench = subparsers.add_parser(
        "bench", help="benchmark training steps and each norm relative to BN",
        description=__doc__.split("\n\n")[0],
    )
    add_arguments(bench)
    bench.set_defaults(func=run)
    return bench


def _csv(value: str, name: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ValueError(f"{name} must list at least one value, got {name}={value!r}")
    return items


def _positive(value: int | float | None, name: str) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{name} must be > 0, got {name}={value}")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) < 3 or min(shape) < 1:
        raise ValueError(f"--shapes: each shape is NxHxWxC (positive), got {text!r}")
    return shape


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The resolved options: --quick's or the full defaults, overridden by explicit options."""
    base = QUICK if args.quick else FULL
    s = {k: getattr(args, k, None) if getattr(args, k, None) is not None else v
         for k, v in base.items()}
    s["norms"] = _csv(s["norms"] or (",".join(norm_ops.DEFAULT_NORMS) if args.norm_ops
                                     else MODEL_NORMS), "--norms")
    if s["repeats"] is None:
        s["repeats"] = 10 if args.norm_ops else 5
    s["dtypes"] = _csv(args.dtypes, "--dtypes")
    for dtype in s["dtypes"]:
        if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
            raise ValueError(f"--dtypes must name float dtypes, got {dtype!r}")
    s["shapes"] = [_shape(t) for t in _csv(s["shapes"], "--shapes")]
    s["models"] = _csv(s["models"], "--models")
    s["batch_sizes"] = [int(b) for b in _csv(s["batch_sizes"], "--batch-sizes")]
    text = s["model_kwargs"]
    try:
        s["model_kwargs"] = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--model-kwargs must be a JSON object, got {text!r}: {err}") from err
    if not isinstance(s["model_kwargs"], dict):
        raise ValueError(f"--model-kwargs must be a JSON object, got {text!r}")
    s["input_threads"] = [int(t) for t in _csv(args.input_threads, "--input-threads")]
    for threads in s["input_threads"]:
        _positive(threads, "--input-threads")
    for name in ("repeats", "steps_per_call", "dataset_size", "matmul_size", "min_sample_ms",
                 "image_size", "input_size", "input_images", "input_batch", "input_chunks",
                 "seed_steps_per_call"):
        _positive(s[name], f"--{name.replace('_', '-')}")
    for name in ("groups", "peak_tflops", "image_channels", "num_classes"):
        _positive(getattr(args, name), f"--{name.replace('_', '-')}")
    for batch in s["batch_sizes"]:
        _positive(batch, "--batch-sizes")
    if s["matmul_size"] is None:
        s["matmul_size"] = 8192 if jax.default_backend() == "gpu" else 2048
    return {**vars(args), **s, "func": None}


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets that this run measured: measured value, threshold, met."""
    out = []
    norm_rows = result.get("norm_ops") or result.get("suite", {}).get("norm_ops", [])

    def add(name: str, measured: float, threshold: float, at_least: bool = False) -> None:
        met = measured >= threshold if at_least else measured <= threshold
        out.append({"target": name, "measured": measured, "threshold": threshold, "met": met})

    for norm in ("group", "layer", "group+proxy", "layer+proxy"):
        ratios = [r["fwd_bwd_ratio_to_batch"] for r in norm_rows
                  if r["norm"] == norm and r["fwd_bwd_ratio_to_batch"] is not None]
        if ratios:
            add(f"{norm} fwd+bwd / BN, worst shape", max(ratios), TARGETS["norm_fwd_bwd"])
    for norm in ("batch", "layer"):
        for mode, name in (("fwd", "fwd"), ("fwd_bwd", "fwd+bwd")):
            ratios = [r[f"{mode}_ratio_to_flax"] for r in norm_rows
                      if r["norm"] == norm and r.get(f"{mode}_ratio_to_flax") is not None]
            if ratios:
                add(f"{norm} {name} / flax's, worst shape", max(ratios), TARGETS["norm_vs_flax"])
    for r in result.get("models", []):
        where = f"{r['model']} batch {r['batch']} {r['dtype']}"
        if r["norm"] == "group+proxy" and r["ratio_to_batch"] is not None:
            add(f"step GN+PN / BN, {where}", r["ratio_to_batch"], TARGETS["step_gn_pn"])
        if (result["backend"] == "gpu" and r["dtype"] == "bfloat16"
                and r["utilization"] is not None):
            add(f"MFU {r['norm']}, {where}", r["utilization"], TARGETS["gpu_bf16_mfu"], True)
    for r in result.get("suite", {}).get("models", []):
        if r["dtype"] == "bfloat16" and r["mfu"] is not None:
            add(f"MFU {r['model']} batch {r['batch']} bfloat16", r["mfu"],
                TARGETS["gpu_bf16_mfu"], True)
    for p in result.get("pipeline", []):
        where = f"{p['model']} batch {p['batch']} {p['dtype']}"
        add(f"resident input pipeline / on-device batch, {where}", p["resident_ratio"],
            TARGETS["pipeline"])
    return out


def benchmark(s: dict[str, Any]) -> dict[str, Any]:
    """Runs the benchmark the resolved settings `s` describe; returns the JSON-able result."""
    from normlab.train.run_info import run_info

    result: dict[str, Any] = {**run_info(), "backend": jax.default_backend(),
                              "device_kind": jax.devices()[0].device_kind,
                              "load_before": machine_load(),
                              "settings": {k: v for k, v in s.items() if k != "func"}}
    min_sample_s = s["min_sample_ms"] / 1e3
    if s["suite"]:
        result["suite"] = suite.bench_suite(quick=s["quick"])
    elif s["conv"]:
        result["conv"] = conv_paths.bench_conv_paths(
            batch=s["batch_sizes"][0], paths=_csv(s["conv_paths"], "--conv-paths"),
            quick=s["quick"], torch=not s["no_torch"], step=not s["no_step"],
            repeats=s["repeats"], min_sample_s=min_sample_s)
    elif s["seeds"]:
        result["seeds"] = seeds_bench.bench_seeds(
            s["num_seeds"], steps_per_call=s["seed_steps_per_call"], repeats=s["repeats"],
            min_sample_s=min_sample_s)
    elif s["input"]:
        result["input"] = input_bench.bench_input(
            size=s["input_size"], threads=s["input_threads"], images=s["input_images"],
            batch=s["input_batch"], steps_per_call=s["steps_per_call"],
            chunks=s["input_chunks"], repeats=s["repeats"], min_sample_s=min_sample_s,
            quick=s["quick"])
    elif s["norm_ops"]:
        result["norm_ops"] = [
            row for dtype in s["dtypes"] for row in norm_ops.bench_norm_ops(
                s["shapes"], s["norms"], dtype=jnp.dtype(dtype), activation=s["activation"],
                groups=s["groups"], repeats=s["repeats"], min_sample_s=min_sample_s)
        ]
        result["norm_ops_summary"] = norm_ops.summarize(result["norm_ops"])
    else:
        peaks, measured = {}, {}
        for dtype in s["dtypes"]:
            if s["peak_tflops"]:
                peaks[dtype] = s["peak_tflops"] * 1e12
            else:
                measured[dtype] = matmul_flops_per_s(jnp.dtype(dtype), s["matmul_size"],
                                                     max(3, s["repeats"]))
                peaks[dtype] = measured[dtype]["flops_per_s"]
        result["peak_flops"] = {"given_tflops": s["peak_tflops"], "per_dtype": peaks,
                                "matmul": measured}
        result["models"], result["pipeline"] = model_bench.bench_models(
            s["models"], s["norms"], s["batch_sizes"], s["dtypes"], repeats=s["repeats"],
            peak_flops=peaks, groups=s["groups"],
            image_shape=(s["image_size"], s["image_size"], s["image_channels"]),
            num_classes=s["num_classes"], model_kwargs=s["model_kwargs"],
            pipeline=not s["no_pipeline"], steps_per_call=s["steps_per_call"],
            dataset_size=s["dataset_size"], min_sample_s=min_sample_s)
        result["peak_memory_bytes"] = peak_memory_bytes()
    result["load_after"] = machine_load()
    result["targets"] = targets(result)
    return as_json(result)


def report(result: dict[str, Any]) -> str:
    """The human-readable report: provenance, tables, targets."""
    load = (result["load_before"]["load_average"], result["load_after"]["load_average"])
    lines = [f"{result['command']}", f"device: {result['device']}; {result['time_utc']} UTC; "
             f"git {result['git_revision']}; load average (1/5/15 min) before {load[0]}, "
             f"after {load[1]} on {result['load_before']['cpu_count']} CPUs", ""]
    if "suite" in result:
        lines += [suite.markdown(result["suite"]), ""]
    if "norm_ops" in result:
        lines += [norm_ops.markdown(result["norm_ops"]), ""]
    if "input" in result:
        lines += [input_bench.markdown(result["input"]), ""]
    if "seeds" in result:
        lines += [seeds_bench.markdown(result["seeds"]), ""]
    if "conv" in result:
        lines += [conv_paths.markdown(result["conv"]), ""]
    if "models" in result:
        per_dtype = result["peak_flops"]["per_dtype"]
        lines += ["peak FLOP/s: " + ", ".join(f"{d} {v / 1e9:.1f} G" for d, v in
                                              per_dtype.items()), "",
                  model_bench.markdown(result["models"], result["pipeline"]), ""]
    for t in result["targets"]:
        lines.append(f"target {'MET' if t['met'] else 'NOT MET'}: {t['target']} = "
                     f"{t['measured']:.3f} (threshold {t['threshold']})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Runs the parsed `bench` command; returns the process exit status."""
    s = settings(args)
    result = benchmark(s)
    print(report(result))
    if s["json"]:
        Path(s["json"]).write_text(json.dumps(result, indent=2))
        print(f"\nwrote {s['json']}")
        if s["suite"]:
            table = Path(s["json"]).with_suffix(".md")
            table.write_text(report(result) + "\n")
            print(f"wrote {table}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """scripts/bench.py: the same options as `normlab bench`; errors as one `error:` line."""
    parser = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
