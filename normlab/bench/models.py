"""Training-step benchmark: step time, images/s, compile time, XLA FLOPs, utilization, memory,
and the real input pipeline against batches already on the device.

The step is normlab's own `train_step` (the CIFAR ResNet recipe's optimizer and L2, no
augmentation, so that the step is the model) on synthetic images of the data set's shape. All
norms of one (model, batch size, dtype) are timed in one interleaved run; `ratio_to_batch` is the
paired median ratio to the "batch" row. Utilization is XLA's FLOP count of the compiled step
divided by the step time and by the peak: `--peak-tflops`, else a large matmul in the same dtype
measured in the same run.

The input pipeline comparison runs K = `steps_per_call` steps per jitted call three ways, each
fetching the call's metrics as `normlab.train.loop` does:
  device    K copies of one batch already on the device, `train_chunk_from_batches`: the bound;
  resident  the loop's path: the epoch sampler's indices sent per call and the batches gathered
            from the device-resident data set, `train_chunk_from_indices`;
  streamed  the data set on the host: each call's K batches gathered on the host and sent while
            the previous call runs (prefetch of one call), then `train_chunk_from_batches`.
Conv nets on CPU train with K = 1 (XLA:CPU runs convolutions inside a loop many times slower),
the default here.

    rows, pipes = bench_models(["resnet20"], ["batch", "group+proxy"], [128], ["float32"],
                               repeats=5, peak_flops={"float32": 1e11})
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from normlab.bench.harness import (
    compile_timed,
    compiled_cost,
    paired_ratio,
    time_interleaved,
)
from normlab.bench.norm_ops import norm_kwargs
from normlab.data.loader import EpochSampler
from normlab.registry import MODELS
from normlab.train.optim import build_optimizer
from normlab.train.state import TrainState, init_state
from normlab.train.step import (
    StepConfig,
    train_chunk_from_batches,
    train_chunk_from_indices,
    train_step,
)


def step_config(model_name: str, norm: str, dtype: str, groups: int, num_classes: int,
                model_kwargs: dict[str, Any]) -> StepConfig:
    """normlab's step for `model_name` with `norm`, computing in `dtype` (params float32).

    The optimizer is the CIFAR ResNet recipe's (SGD with Nesterov momentum 0.9, cosine
    schedule, L2 5e-4 on kernels).
    """
    kwargs = {**model_kwargs, "num_classes": num_classes, "norm": norm,
              "norm_kwargs": norm_kwargs(norm, groups)}
    if jnp.dtype(dtype) != jnp.float32:
        kwargs["dtype"] = jnp.dtype(dtype)
    model = MODELS.build(model_name, **kwargs)
    tx, lr_fn = build_optimizer({"name": "nesterov", "momentum": 0.9},
                                {"name": "cosine", "warmup_steps": 0}, 0.1, 10**6)
    return StepConfig(model=model, tx=tx, lr_fn=lr_fn, num_classes=num_classes, l2=5e-4)


class _Stepper:
    """Zero-argument call running `fn(state, *args)`, threading the (donated) state through."""

    def __init__(self, fn: Any, state: TrainState, *args: Any):
        self.fn, self.state, self.args = fn, state, args

    def __call__(self) -> Any:
        self.state, metrics = self.fn(self.state, *self.args)
        return self.state, metrics


def _initializer(cfg: StepConfig) -> Any:
    # jitted: eager init dispatches (and compiles) every small op one by one, which takes longer
    # than compiling the whole init once; one compiled init serves every state of a config
    return jax.jit(lambda x: init_state(cfg.model, cfg.tx, jax.random.key(0), x))


def _case(cfg: StepConfig, init: Any, x: jax.Array, labels: jax.Array
          ) -> tuple[TrainState, Any, dict]:
    state = init(x[:2])
    step = jax.jit(functools.partial(train_step, cfg), donate_argnums=0)
    compiled, compile_s = compile_timed(step, state, x, labels)
    return state, compiled, {"compile_s": compile_s, **compiled_cost(compiled)}


def bench_models(
    models: Sequence[str],
    norms: Sequence[str],
    batch_sizes: Sequence[int],
    dtypes: Sequence[str],
    *,
    repeats: int,
    peak_flops: dict[str, float],
    groups: int = 8,
    image_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    model_kwargs: dict[str, Any] | None = None,
    pipeline: bool = True,
    steps_per_call: int = 1,
    dataset_size: int = 4096,
    min_sample_s: float = 0.02,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one row per model × norm × batch × dtype, one pipeline row per model × batch × dtype).

    The pipeline rows use the first norm. `peak_flops` maps dtype names to FLOP/s.
    """
    rows, pipes = [], []
    rng = np.random.default_rng(0)
    for model_name in models:
        for batch in batch_sizes:
            for dtype in dtypes:
                x = jnp.asarray(rng.standard_normal((batch, *image_shape)), jnp.float32)
                labels = jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32)
                cases, calls = {}, {}
                for norm in norms:
                    cfg = step_config(model_name, norm, dtype, groups, num_classes,
                                      dict(model_kwargs or {}))
                    init = _initializer(cfg)
                    state, compiled, info = _case(cfg, init, x, labels)
                    cases[norm] = (cfg, init, info)
                    calls[norm] = _Stepper(compiled, state, x, labels)
                timings = time_interleaved(calls, repeats=repeats, min_sample_s=min_sample_s)
                for norm in norms:
                    cfg, _, info = cases[norm]
                    t = timings[norm]
                    flops, peak = info["flops"], peak_flops.get(dtype)
                    achieved = flops / (t.median_ms / 1e3) if flops else None
                    rows.append({
                        "model": model_name, "norm": norm, "batch": batch, "dtype": dtype,
                        "step_ms": t.median_ms, **{f"step_{k}": v for k, v in
                                                   t.summary().items() if k != "median_ms"},
                        "images_per_s": batch / (t.median_ms / 1e3),
                        "flops_per_s": achieved, "peak_flops_per_s": peak,
                        "utilization": achieved / peak if achieved and peak else None,
                        "ratio_to_batch": (paired_ratio(t, timings["batch"])
                                           if "batch" in timings else None),
                        **info,
                    })
                del calls
                if pipeline:
                    cfg, init, _ = cases[norms[0]]
                    pipes.append({
                        "model": model_name, "norm": norms[0], "batch": batch, "dtype": dtype,
                        **bench_pipeline(cfg, init, batch, image_shape, num_classes,
                                         repeats=repeats,
                                         steps_per_call=steps_per_call,
                                         dataset_size=dataset_size, min_sample_s=min_sample_s),
                    })
    return rows, pipes


class _Pipeline:
    """One jitted call of K steps fed one of three ways (module docstring), metrics fetched."""

    def __init__(self, mode: str, chunk_fn: Any, state: TrainState, data: dict[str, Any],
                 steps_per_call: int):
        self.mode, self.fn, self.state, self.data = mode, chunk_fn, state, data
        self.k, self.step = steps_per_call, 0
        if mode == "device":
            self.batches = tuple(jnp.repeat(data[key][None], steps_per_call, axis=0)
                                 for key in ("x", "y"))
        if mode == "streamed":
            self.batches = self._host_batches()

    def _indices(self) -> np.ndarray:
        sampler = self.data["sampler"]
        idx = np.stack([sampler.batch_indices(s) for s in range(self.step, self.step + self.k)])
        self.step += self.k
        return idx

    def _host_batches(self) -> tuple[jax.Array, jax.Array]:
        idx = self._indices()
        return (jax.device_put(self.data["host_x"][idx]),
                jax.device_put(self.data["host_y"][idx]))

    def __call__(self) -> Any:
        if self.mode == "resident":
            idx = jnp.asarray(self._indices(), jnp.int32)
            self.state, metrics = self.fn(self.state, self.data["images"], self.data["labels"],
                                          idx)
        else:
            self.state, metrics = self.fn(self.state, *self.batches)
            if self.mode == "streamed":
                self.batches = self._host_batches()  # prepared while the device runs this call
        return jax.device_get(metrics)


def bench_pipeline(cfg: StepConfig, init: Any, batch: int, image_shape: Sequence[int],
                   num_classes: int, *, repeats: int, steps_per_call: int, dataset_size: int,
                   min_sample_s: float = 0.02) -> dict[str, Any]:
    """ms per step of the three feeds and the ratios resident/device and streamed/device.

    `init(example_x) -> TrainState` makes each feed's initial state.
    """
    if dataset_size < batch:
        raise ValueError(f"dataset_size must be >= the batch size {batch}, "
                         f"got dataset_size={dataset_size}")
    rng = np.random.default_rng(1)
    host_x = rng.standard_normal((dataset_size, *image_shape)).astype(np.float32)
    host_y = rng.integers(0, num_classes, dataset_size).astype(np.int32)
    data = {
        "sampler": EpochSampler(dataset_size, batch, 0),
        "host_x": host_x, "host_y": host_y,
        "images": jax.device_put(host_x), "labels": jax.device_put(host_y),
        "x": jax.device_put(host_x[:batch]), "y": jax.device_put(host_y[:batch]),
    }
    example = jnp.asarray(host_x[:2])
    from_indices = jax.jit(functools.partial(train_chunk_from_indices, cfg), donate_argnums=0)
    # the device and streamed feeds run K assembled batches through the same compiled chunk
    from_batches = jax.jit(functools.partial(train_chunk_from_batches, cfg), donate_argnums=0)
    chunk_fns = {"device": from_batches, "resident": from_indices, "streamed": from_batches}
    calls = {mode: _Pipeline(mode, chunk_fns[mode], init(example), data, steps_per_call)
             for mode in ("device", "resident", "streamed")}
    timings = time_interleaved(calls, repeats=repeats, min_sample_s=min_sample_s)
    out: dict[str, Any] = {"steps_per_call": steps_per_call, "dataset_size": dataset_size}
    for mode, t in timings.items():
        out[f"{mode}_step_ms"] = t.median_ms / steps_per_call
        out[f"{mode}_step_p10_ms"] = t.percentile_ms(10) / steps_per_call
        out[f"{mode}_step_p90_ms"] = t.percentile_ms(90) / steps_per_call
    out["resident_ratio"] = paired_ratio(timings["resident"], timings["device"])
    out["streamed_ratio"] = paired_ratio(timings["streamed"], timings["device"])
    return out


def markdown(rows: list[dict[str, Any]], pipes: list[dict[str, Any]]) -> str:
    """Markdown tables of the step rows and of the pipeline rows."""

    def fmt(value: float | None, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    lines = ["| model | norm | batch | dtype | step ms [p10–p90] | ×BN | images/s | compile s | "
             "GFLOP/step | GFLOP/s | utilization | XLA temp MiB |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        temp = r["temp_size_in_bytes"]
        lines.append(
            f"| {r['model']} | {r['norm']} | {r['batch']} | {r['dtype']} | {r['step_ms']:.1f} "
            f"[{r['step_p10_ms']:.1f}–{r['step_p90_ms']:.1f}] | "
            f"{fmt(r['ratio_to_batch'], '.3f')} | {r['images_per_s']:.1f} | "
            f"{r['compile_s']:.1f} | {fmt(r['flops'] and r['flops'] / 1e9, '.3g')} | "
            f"{fmt(r['flops_per_s'] and r['flops_per_s'] / 1e9, '.1f')} | "
            f"{fmt(r['utilization'] and 100 * r['utilization'], '.1f')}% | "
            f"{fmt(temp and temp / 2**20, '.1f')} |"
        )
    if pipes:
        lines += ["", "| model | norm | batch | dtype | K steps/call | on-device batch ms/step | "
                  "resident data ms/step (×) | streamed + prefetch ms/step (×) |",
                  "|---|---|---:|---|---:|---:|---:|---:|"]
        for p in pipes:
            lines.append(
                f"| {p['model']} | {p['norm']} | {p['batch']} | {p['dtype']} | "
                f"{p['steps_per_call']} | {p['device_step_ms']:.1f} | "
                f"{p['resident_step_ms']:.1f} ({p['resident_ratio']:.3f}×) | "
                f"{p['streamed_step_ms']:.1f} ({p['streamed_ratio']:.3f}×) |"
            )
    return "\n".join(lines)


# The MNIST main example (configs/mnist_mlp.py): a 3×100 sigmoid MLP with BN, SGD at lr 0.5,
# batch 60, 500 steps per jitted call on the device-resident data set.
MNIST_EXAMPLE = {"depth": 3, "width": 100, "norm": "batch", "activation": "sigmoid",
                 "kernel_init": "normal", "kernel_init_kwargs": {"std": 0.1}}


def bench_metrics_cost(*, batch: int = 60, steps_per_call: int = 500, repeats: int = 5,
                       dataset_size: int = 4096, image_shape: Sequence[int] = (28, 28, 1),
                       min_sample_s: float = 0.02) -> dict[str, Any]:
    """What the per-step metrics cost the MNIST example's chunk, interleaved:

      chunk       `train_chunk_from_indices`, the loop's chunk (norms on its last step only);
      every_step  the same scan with grad/update/param norms on every step (before issue 16);
      plain       a plain `lax.scan` of the same step without the norms, the bound.

    Returns ms per step of each and the paired ratios chunk/plain and every_step/plain.
    """
    model = MODELS.build("mlp", num_classes=10, **MNIST_EXAMPLE)
    tx, lr_fn = build_optimizer({"name": "sgd"}, {"name": "constant"}, 0.5, 10**6)
    cfg = StepConfig(model=model, tx=tx, lr_fn=lr_fn, num_classes=10)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((dataset_size, *image_shape)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, dataset_size), jnp.int32)
    sampler = EpochSampler(dataset_size, batch, 0)
    indices = jnp.asarray(np.stack([sampler.batch_indices(s) for s in range(steps_per_call)]),
                          jnp.int32)

    def scan(norm_metrics: bool) -> Any:
        def chunk(state, images, labels, idx_KB):
            def body(state, idx_B):
                return train_step(cfg, state, images[idx_B], labels[idx_B],
                                  norm_metrics=norm_metrics)
            return jax.lax.scan(body, state, idx_KB)
        return chunk

    fns = {"chunk": functools.partial(train_chunk_from_indices, cfg),
           "every_step": scan(True), "plain": scan(False)}
    init = _initializer(cfg)
    calls = {name: _Stepper(jax.jit(fn, donate_argnums=0), init(images[:2]), images, labels,
                            indices) for name, fn in fns.items()}
    timings = time_interleaved(calls, repeats=repeats, min_sample_s=min_sample_s)
    out: dict[str, Any] = {"model": "mlp", **MNIST_EXAMPLE, "batch": batch,
                           "steps_per_call": steps_per_call}
    for name, t in timings.items():
        out[f"{name}_step_ms"] = t.median_ms / steps_per_call
        out[f"{name}_steps_per_s"] = steps_per_call / (t.median_ms / 1e3)
    out["chunk_ratio"] = paired_ratio(timings["chunk"], timings["plain"])
    out["every_step_ratio"] = paired_ratio(timings["every_step"], timings["plain"])
    return out
