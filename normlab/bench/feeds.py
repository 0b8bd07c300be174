"""`normlab bench --input`, the training side: what feeding a real run costs.

- feed: the CIFAR ResNet-20 recipe (`configs/cifar10_resnet.py`, batch 128, one step per call)
  assembled by `build_run` twice on one fake CIFAR-10 (random pixels, prepared by normlab's own
  builder), with `data.pipeline=device` (uint8 split on the device, indices per step) and
  `data.pipeline=stream` (rows read per step by `StreamSource`, sent as uint8); their
  `train_chunk` calls, each fetching its metrics as the loop does, interleaved in one timing
  (`harness.time_interleaved`); the stream's cost is the paired median ratio stream / device.
- rss: the host's resident memory over a long streamed run: a small MLP on a fake ImageNet
  (JPEGs decoded, inception-cropped and flipped per step), sampled every few steps: start, half
  way, end, max. The first steps grow it (compilation, thread pools, allocator arenas filling
  up); a leak shows as growth that goes on, so "flat" is judged on the second half.

Each run is on one device (as the model benchmark): the cost per device.
- model: a ResNet-50 training step alone on fake data (`models.bench_models`, 224 px, no input):
  the images/s the input must reach to keep it busy, and so the decode threads it needs.

--quick runs each on a tiny MLP and a few steps (seconds), to test the wiring.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from normlab.bench.harness import paired_ratio, time_interleaved

REPO = Path(__file__).resolve().parents[2]
MLP = f"{REPO}/configs/mnist_mlp.py:runlocal"
FULL = {
    "feed_config": f"{REPO}/configs/cifar10_resnet.py",
    "feed_overrides": ["batch_size=128", "train_split=train"],
    "cifar_per_batch": 1024, "rss_steps": 400, "rss_every": 10, "rss_batch": 32,
    "rss_size": 64, "model": "resnet50", "model_kwargs": {}, "model_size": 224,
    "model_batch": 8,
}
QUICK = {
    "feed_config": MLP, "feed_overrides": ["batch_size=8"], "cifar_per_batch": 8,
    "rss_steps": 12, "rss_every": 4, "rss_batch": 8, "rss_size": 32, "model": "mlp",
    "model_kwargs": {"depth": 2, "width": 16, "activation": "relu"}, "model_size": 16,
    "model_batch": 4,
}
FLAT_FRACTION = 0.01  # "flat": the second half's growth is within 1% of the RSS half way


def _one_device() -> list[jax.Device]:
    """Like the model benchmark, one device: the step's cost per device."""
    return jax.local_devices()[:1]


def rss_bytes() -> int | None:
    """This process's resident set size now (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _config(spec: str, overrides: list[str]):
    from normlab.config import apply_overrides, load_config

    config = load_config(spec)
    apply_overrides(config, ["steps_per_call=1", *overrides])
    return config


class _Steps:
    """Zero-argument call: the run's next `train_chunk` of one step (metrics fetched)."""

    def __init__(self, run: Any):
        self.run, self.step = run, 0

    def __call__(self) -> dict[str, np.ndarray]:
        metrics = self.run.train_chunk(self.step, 1)
        self.step += 1
        return metrics


def bench_feed(root: Path, s: dict[str, Any], *, repeats: int,
               min_sample_s: float) -> dict[str, Any]:
    """Step ms of the device-resident and the streamed run of `s["feed_config"]`, interleaved."""
    from normlab.data.datasets import prepare
    from normlab.data.fake_cifar import write_fake_cifar10
    from normlab.train.run import build_run

    write_fake_cifar10(root / "archives", per_batch=s["cifar_per_batch"], test=8)
    prepare("cifar10", source=root / "archives", tfds_dir=root / "tfds", verify=False,
            quiet=True)
    runs = {pipeline: build_run(_config(s["feed_config"], [
        "dataset=cifar10", f"tfds_dir={root / 'tfds'}", f"data.pipeline={pipeline}",
        *s["feed_overrides"]]), _one_device()) for pipeline in ("device", "stream")}
    try:
        calls = {pipeline: _Steps(run) for pipeline, run in runs.items()}
        timings = time_interleaved(calls, repeats=repeats, min_sample_s=min_sample_s)
        steps = calls["stream"].step
        wait = runs["stream"].data.wait_seconds
    finally:
        for run in runs.values():
            run.close()
    config = runs["device"].config
    return {"config": s["feed_config"], "model": config.model.name,
            "batch": config.batch_size, "train_images": 5 * s["cifar_per_batch"],
            **{f"{p}_step_ms": t.median_ms for p, t in timings.items()},
            **{f"{p}_step_p10_ms": t.percentile_ms(10) for p, t in timings.items()},
            **{f"{p}_step_p90_ms": t.percentile_ms(90) for p, t in timings.items()},
            "stream_ratio": paired_ratio(timings["stream"], timings["device"]),
            "stream_input_wait_ms_per_step": 1e3 * wait / steps}


def bench_rss(root: Path, s: dict[str, Any]) -> dict[str, Any]:
    """Host RSS every `rss_every` steps of a streamed MLP run on a fake ImageNet."""
    from normlab.data.datasets import prepare
    from normlab.data.fake_imagenet import write_fake_imagenet
    from normlab.train.run import build_run

    write_fake_imagenet(root / "archives", classes=4, train_per_class=16, val=4)
    prepare("imagenet2012", source=root / "archives", tfds_dir=root / "tfds", verify=False,
            quiet=True)
    run = build_run(_config(MLP, [
        "dataset=imagenet2012", f"tfds_dir={root / 'tfds'}", "data.pipeline=stream",
        f"data.image_size={s['rss_size']}", f"batch_size={s['rss_batch']}"]), _one_device())
    samples = []
    try:
        for step in range(s["rss_steps"]):
            run.train_chunk(step, 1)
            if (step + 1) % s["rss_every"] == 0:
                samples.append((step + 1, rss_bytes()))
    finally:
        run.close()
    if samples[0][1] is None:
        return {"steps": s["rss_steps"], "samples": [], "flat": None}
    rss = np.asarray([size for _, size in samples], np.float64)
    half = rss[len(rss) // 2]
    return {"steps": s["rss_steps"], "batch": s["rss_batch"], "image_size": s["rss_size"],
            "samples": [[int(a), int(b)] for a, b in samples], "start_bytes": rss[0],
            "half_step": samples[len(rss) // 2][0], "half_bytes": half, "end_bytes": rss[-1],
            "max_bytes": rss.max(), "second_half_growth_bytes": rss[-1] - half,
            "flat": bool(abs(rss[-1] - half) <= FLAT_FRACTION * half)}


def bench_model(s: dict[str, Any], *, repeats: int, min_sample_s: float) -> dict[str, Any]:
    """A training step of `s["model"]` alone on one fake batch already on the device."""
    from normlab.bench.models import bench_models

    size = s["model_size"]
    rows, _ = bench_models([s["model"]], ["batch"], [s["model_batch"]], ["float32"],
                           repeats=repeats, peak_flops={}, image_shape=(size, size, 3),
                           num_classes=1000, model_kwargs=s["model_kwargs"], pipeline=False,
                           min_sample_s=min_sample_s)
    keep = ("model", "norm", "batch", "dtype", "step_ms", "step_p10_ms", "step_p90_ms",
            "images_per_s", "compile_s", "flops", "flops_per_s")
    return {"image_size": size, **{k: rows[0][k] for k in keep}}


def bench_feeds(*, quick: bool, repeats: int, min_sample_s: float) -> dict[str, Any]:
    """The three measurements of the module docstring; JSON-able."""
    s = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="normlab-bench-feeds-") as tmp:
        feed = bench_feed(Path(tmp) / "cifar", s, repeats=repeats, min_sample_s=min_sample_s)
        rss = bench_rss(Path(tmp) / "imagenet", s)
    return {"feed": feed, "rss": rss,
            "model": bench_model(s, repeats=repeats, min_sample_s=min_sample_s)}


def markdown(result: dict[str, Any], train_images_per_s_per_thread: float | None) -> str:
    """The three measurements as Markdown tables; with the host's train-transform rate per
    thread, the decode threads the model alone would need."""
    f, r, m = result["feed"], result["rss"], result["model"]
    lines = [f"| fed by ({f['model']}, batch {f['batch']}, 1 step per call) | step ms "
             "[p10–p90] | × device | input wait ms/step |", "|---|---:|---:|---:|"]
    for p in ("device", "stream"):
        ratio = f"{f['stream_ratio']:.3f}" if p == "stream" else "1"
        wait = f"{f['stream_input_wait_ms_per_step']:.2f}" if p == "stream" else "–"
        lines.append(f"| {p} | {f[f'{p}_step_ms']:.1f} [{f[f'{p}_step_p10_ms']:.1f}–"
                     f"{f[f'{p}_step_p90_ms']:.1f}] | {ratio} | {wait} |")
    mb = 2**20
    if r["samples"]:
        first = r["samples"][0][0]
        lines += ["", f"| streamed run (MLP, fake ImageNet) | steps | RSS MiB at step {first} | "
                  f"at step {r['half_step']} | at the end | max | growth in the second half "
                  "MiB | flat (second half within 1%) |", "|---|---:|---:|---:|---:|---:|---:|---|",
                  f"| batch {r['batch']}, {r['image_size']} px | {r['steps']} | "
                  f"{r['start_bytes'] / mb:.1f} | {r['half_bytes'] / mb:.1f} | "
                  f"{r['end_bytes'] / mb:.1f} | {r['max_bytes'] / mb:.1f} | "
                  f"{r['second_half_growth_bytes'] / mb:+.1f} | {'yes' if r['flat'] else 'no'} |"]
    threads = (f"{m['images_per_s'] / train_images_per_s_per_thread:.3g}"
               if train_images_per_s_per_thread else "–")
    lines += ["", f"| model alone (fake data, {m['image_size']} px) | batch | step ms "
              "[p10–p90] | images/s | compile s | train-transform threads to feed it |",
              "|---|---:|---:|---:|---:|---:|",
              f"| {m['model']} {m['dtype']} | {m['batch']} | {m['step_ms']:.1f} "
              f"[{m['step_p10_ms']:.1f}–{m['step_p90_ms']:.1f}] | {m['images_per_s']:.1f} | "
              f"{m['compile_s']:.1f} | {threads} |"]
    return "\n".join(lines)
