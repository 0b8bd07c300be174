"""`normlab bench --input`: how fast the host turns JPEG bytes into training batches.

On fake JPEGs of ImageNet-like sizes (500×375, 375×500, 500×333, 400×300; q90, held in memory,
so no storage is measured):

- decode alone, one thread, per decoder (simplejpeg, Pillow);
- the training transform (decode + inception crop + resize + flip, `TrainTransform`) and the
  eval transform, images/s by worker-thread count and per thread;
- `StreamSource` end to end (read from memory, transform in its pool, chunks of k steps through
  its prefetch thread), images/s by thread count; and, for the design choice, the same work
  through grain (`MapDataset` of (step, slot) elements → `map` → `to_iter_dataset(ReadOptions(
  num_threads))`);
- what feeding a real run costs (`normlab.bench.feeds`): CIFAR ResNet-20 fed by the stream vs
  device-resident (interleaved), host RSS over a long streamed run, and a ResNet-50 step alone
  on fake data (the input rate it needs).

The transform timings are interleaved repeats (`harness.time_interleaved`), the stream's are
steady-state rates over consecutive chunks after a warm-up chunk.
"""

from __future__ import annotations

import concurrent.futures
import io
import time
from typing import Any

import numpy as np

from normlab.bench import feeds as feeds_bench
from normlab.bench.harness import time_interleaved
from normlab.data.loader import EpochSampler
from normlab.data.stream import StreamSource
from normlab.data.transforms import (
    EvalTransform,
    TrainTransform,
    decode,
    default_decoder,
    default_resizer,
    example_rng,
)

SHAPES = ((375, 500), (500, 375), (333, 500), (300, 400))  # (H, W)


def fake_jpegs(n: int, seed: int = 0, quality: int = 90) -> list[bytes]:
    """`n` JPEGs of ImageNet-like sizes and content (smooth colour fields plus pixel noise:
    ~80 KB each at q90, near ImageNet's average file)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    blobs = []
    for i in range(n):
        h, w = SHAPES[i % len(SHAPES)]
        base = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), np.uint8)
        image = np.asarray(Image.fromarray(base).resize((w, h), Image.BICUBIC), np.int16)
        image = np.clip(image + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
        blobs.append(buf.getvalue())
    return blobs


def _stream_rate(make_iter: Any, images_per_chunk: int, chunks: int) -> float:
    """Images/s over `chunks` consecutive chunks, after one warm-up chunk."""
    get = make_iter()
    get()
    start = time.perf_counter()
    for _ in range(chunks):
        get()
    return images_per_chunk * chunks / (time.perf_counter() - start)


def _own_stream(blobs, labels, transform, threads, batch, k, prefetch):
    sampler = EpochSampler(len(blobs), batch, seed=0)
    read = lambda indices: ([blobs[i] for i in indices], labels[indices])
    source = StreamSource(read, sampler, transform=transform, num_threads=threads,
                          prefetch=prefetch)
    state = {"step": 0}

    def get():
        source.local_batches(state["step"], k)
        state["step"] += k

    return source, get


def _grain_stream(blobs, labels, transform, threads, batch, k, prefetch):
    import grain

    sampler = EpochSampler(len(blobs), batch, seed=0)

    def load(i: int) -> tuple[np.ndarray, np.int32]:
        step, slot = divmod(i, batch)
        index = sampler.local_batch_indices(step)[slot]  # one read per element
        return transform(blobs[index], example_rng(0, step, slot)), labels[index]

    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch * k * batch)
    it = iter(grain.MapDataset.range(0, 2**40).map(load).to_iter_dataset(options))

    def get():
        rows = [next(it) for _ in range(k * batch)]
        np.stack([r[0] for r in rows]).reshape(k, batch, *transform.output_shape)

    return it, get


def bench_input(
    *,
    size: int,
    threads: list[int],
    images: int,
    batch: int,
    steps_per_call: int,
    chunks: int,
    repeats: int,
    min_sample_s: float,
    grain: bool = True,
    quick: bool = False,
    feeds: bool = True,
) -> dict[str, Any]:
    """The input benchmark's rows (module doc); JSON-able. `quick`: the training-side
    measurements on a tiny MLP (`feeds.QUICK`); `feeds=False` skips them."""
    blobs = fake_jpegs(images)
    labels = np.arange(images, dtype=np.int32) % 1000
    train, evaluate = TrainTransform(size), EvalTransform(size)
    decoders = ["pillow"] + (["simplejpeg"] if default_decoder() == "simplejpeg" else [])
    fns = {f"decode {d}": (lambda d=d: [decode(b, d) for b in blobs]) for d in decoders}
    pools = {t: concurrent.futures.ThreadPoolExecutor(t) for t in threads}
    for t, pool in pools.items():
        fns[f"train {t}"] = lambda pool=pool: list(pool.map(
            lambda i: train(blobs[i], example_rng(0, 0, i)), range(images)))
        fns[f"eval {t}"] = lambda pool=pool: list(pool.map(evaluate, blobs))
    try:
        timings = time_interleaved(fns, repeats=repeats, min_sample_s=min_sample_s)
    finally:
        for pool in pools.values():
            pool.shutdown()
    rows = []
    for name, timing in timings.items():
        what, arg = name.split(" ")
        t = int(arg) if arg.isdigit() else 1
        rate = images / (timing.median_ms / 1e3)
        rows.append({"what": what, "decoder": arg if what == "decode" else default_decoder(),
                     "resizer": None if what == "decode" else default_resizer(), "threads": t,
                     "images_per_s": rate, "images_per_s_per_thread": rate / t,
                     "ms_per_image_per_thread": 1e3 * t / rate, **timing.summary()})
    streams = []
    kinds = {"StreamSource": _own_stream} | ({"grain": _grain_stream} if grain else {})
    for t in threads:
        for kind, make in kinds.items():
            holder: dict[str, Any] = {}

            def make_iter(make=make, t=t, holder=holder):
                holder["owner"], get = make(blobs, labels, train, t, batch, steps_per_call, 2)
                return get

            try:
                rate = _stream_rate(make_iter, batch * steps_per_call, chunks)
            finally:
                owner = holder.get("owner")
                if hasattr(owner, "close"):
                    owner.close()
            streams.append({"pipeline": kind, "threads": t, "batch": batch,
                            "steps_per_call": steps_per_call, "chunks": chunks,
                            "images_per_s": rate, "images_per_s_per_thread": rate / t})
    sizes = [len(b) for b in blobs]
    out = {"size": size, "images": images, "mean_jpeg_bytes": float(np.mean(sizes)),
           "shapes": [list(s) for s in SHAPES], "transforms": rows, "streams": streams}
    if feeds:
        out["feeds"] = feeds_bench.bench_feeds(quick=quick, repeats=repeats,
                                               min_sample_s=min_sample_s)
    return out


def markdown(result: dict[str, Any]) -> str:
    """The input benchmark as two Markdown tables."""
    lines = [f"{result['images']} fake JPEGs (q90, mean {result['mean_jpeg_bytes'] / 1e3:.0f} KB,"
             f" sizes {', '.join(f'{w}x{h}' for h, w in result['shapes'])}) → {result['size']} px",
             "", "| what | decoder / resizer | threads | images/s | images/s per thread | "
             "ms/image per thread [p10–p90 of the batch] |", "|---|---|---:|---:|---:|---:|"]
    for r in result["transforms"]:
        tool = r["decoder"] + (f" / {r['resizer']}" if r["resizer"] else "")
        scale = r["threads"] / result["images"]
        lines.append(f"| {r['what']} | {tool} | {r['threads']} | {r['images_per_s']:.0f} | "
                     f"{r['images_per_s_per_thread']:.0f} | {r['ms_per_image_per_thread']:.2f} "
                     f"[{r['p10_ms'] * scale:.2f}–{r['p90_ms'] * scale:.2f}] |")
    lines += ["", "| pipeline | threads | batch × steps per call | images/s | per thread |",
              "|---|---:|---:|---:|---:|"]
    for r in result["streams"]:
        lines.append(f"| {r['pipeline']} | {r['threads']} | {r['batch']} × "
                     f"{r['steps_per_call']} | {r['images_per_s']:.0f} | "
                     f"{r['images_per_s_per_thread']:.0f} |")
    if "feeds" in result:
        one = [r["images_per_s"] for r in result["transforms"]
               if r["what"] == "train" and r["threads"] == 1]
        lines += ["", feeds_bench.markdown(result["feeds"], one[0] if one else None)]
    return "\n".join(lines)
