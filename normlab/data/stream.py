"""The host side of the streaming input pipeline: this process's rows of each training step's
global batch, read, decoded and augmented by worker threads and prefetched in the background;
and padded, masked evaluation batches that count every example exactly once.

    source = StreamSource(split.read_encoded, EpochSampler(len(split), 256, seed, process_index=p,
                          process_count=P), transform=TrainTransform(224), num_threads=8)
    with source:
        x, labels = source.local_batches(step, k)  # uint8 (k, 256/P, 224, 224, 3), (k, 256/P)
    for x, labels, mask in eval_batches(split.read_encoded, len(split), 500,
                                        transform=EvalTransform(224), process_index=p,
                                        process_count=P): ...

`read(indices) -> (images, labels)`: images a sequence of encoded bytes (JPEG data sets: a split
reader's `read_encoded`) or one uint8 array (n, H, W, C) (fixed-size data sets: `array_read`
adapts `split.read`). With `transform=None` the images are used as read ("identity decode"), so
CIFAR or MNIST streamed give exactly EpochSampler's rows, in its order.

Training rows: step s holds `sampler.local_batch_indices(s)`; the example in row j of process p
has global slot p·B/P + j and draws its augmentation from `example_rng(seed, s, slot)`
(`normlab.data.transforms`), so its crop does not depend on the process count or on a resume.

Why a thread pool and not grain: the loop asks for chunks of K whole steps, in order, and an
out-of-order request (a resume) must restart at that step. With a `concurrent.futures` pool, a
step's indices are read in one batched lookup on the prefetch thread and each example is one task
writing into the chunk's preallocated array. grain's index-addressed form, a `MapDataset` of
(step, slot) elements → `map(read + transform)` → `to_iter_dataset(ReadOptions(num_threads))`,
needs one read per example, a stacking pass per chunk, and a rebuilt iterator on a restart; it
measured 10-15% slower (`normlab bench --input`, 224 px, batch 32: 398 vs 357 images/s with one
thread, 449 vs 392 with two, on the loaded 2-core CPU of BENCHMARKS.md). Decoding and resizing
(simplejpeg, Pillow, OpenCV) release the GIL, so worker threads can run on separate cores.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from normlab.data.loader import EpochSampler
from normlab.data.transforms import example_rng

Read = Callable[[np.ndarray], tuple[Sequence[Any] | np.ndarray, np.ndarray]]
Transform = Callable[[Any, np.random.Generator | None], np.ndarray]
THREAD_PREFIX = "normlab-stream"
_POLL_S = 0.1  # how often a blocked put/get re-checks that it should stop


def array_read(split: Any) -> Read:
    """`read` for a split whose `read(indices)` gives {"image": uint8 (n, ...), "label": (n,)}
    (`ArraySplit`, `TfdsSplit` of normlab's fixed-size builders)."""

    def read(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = split.read(indices)
        return batch["image"], batch["label"]

    return read


def _check_count(owner: str, name: str, value: int, low: int) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
        raise ValueError(f"{owner}: {name} must be an integer >= {low}, got {name}={value!r}")


def _example_shape(read: Read, transform: Transform | None) -> tuple[int, ...]:
    if transform is not None:
        return tuple(transform.output_shape)
    images, _ = read(np.zeros(1, np.int64))
    return tuple(np.asarray(images).shape[1:])


def _fill(out: np.ndarray, transform: Transform, item: Any, rng: np.random.Generator | None):
    out[...] = transform(item, rng)


@dataclasses.dataclass
class _Chunk:
    step: int
    x: np.ndarray | None = None
    labels: np.ndarray | None = None
    futures: list[concurrent.futures.Future] = dataclasses.field(default_factory=list)
    error: BaseException | None = None


def _cancel(chunk: _Chunk) -> None:
    for future in chunk.futures:
        future.cancel()


class _Prefetcher:
    """One background thread producing the chunks [start + i·k, start + (i+1)·k) in order into a
    queue of `depth` chunks; stopped (and joined) by `stop()`."""

    def __init__(self, make_chunk: Callable[[int, int], _Chunk], start: int, k: int, depth: int):
        self.start, self.k = start, k
        self.queue: queue.Queue[_Chunk] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._make_chunk = make_chunk
        self.thread = threading.Thread(target=self._run, name=f"{THREAD_PREFIX}-prefetch",
                                       daemon=True)
        self.thread.start()

    def _run(self) -> None:
        step = self.start
        while not self._stop.is_set():
            try:
                chunk = self._make_chunk(step, self.k)
            except BaseException as err:  # handed to the consumer, which raises it
                chunk = _Chunk(step, error=err)
            while not self._stop.is_set():
                try:
                    self.queue.put(chunk, timeout=_POLL_S)
                    break
                except queue.Full:
                    continue
            else:  # stopped before anyone could take it
                _cancel(chunk)
            if chunk.error is not None:
                return
            step += self.k

    def get(self) -> _Chunk:
        while True:
            try:
                return self.queue.get(timeout=_POLL_S)
            except queue.Empty:
                if not self.thread.is_alive():
                    raise RuntimeError("StreamSource: the prefetch thread stopped") from None

    def stop(self) -> None:
        self._stop.set()
        self.thread.join()
        while not self.queue.empty():  # chunks nobody will take: drop their pending work
            _cancel(self.queue.get_nowait())


class StreamSource:
    """This process's rows of the global training batches, prefetched in a background thread.

    Args:
      read: `read(indices) -> (images, labels)` (module doc).
      sampler: the training `EpochSampler` (drop_remainder=True: fixed shapes); its
        process_index / process_count say which rows this process reads.
      transform: `transform(image, rng) -> uint8 array of transform.output_shape` (e.g.
        `TrainTransform(224)`), run per example in the worker threads; None: images as read.
      seed: the augmentation keys' seed (default: the sampler's).
      num_threads: worker threads for `transform`.
      prefetch: chunks prepared ahead of the one asked for.

    `local_batches(step, k)` returns the chunk of steps [step, step + k); asking for
    (step + k, k) next is served from the prefetch buffer, anything else restarts the prefetch at
    the new step. `close()` (or leaving a `with` block) stops and joins every thread.
    """

    def __init__(
        self,
        read: Read,
        sampler: EpochSampler,
        *,
        transform: Transform | None = None,
        seed: int | None = None,
        num_threads: int = 2,
        prefetch: int = 2,
    ):
        _check_count("StreamSource", "num_threads", num_threads, 1)
        _check_count("StreamSource", "prefetch", prefetch, 1)
        if not sampler.drop_remainder:
            raise ValueError("StreamSource: the sampler must have drop_remainder=True (every "
                             "step's batch the same shape); got drop_remainder=False")
        self.read, self.sampler, self.transform = read, sampler, transform
        self.seed = sampler.seed if seed is None else int(seed)
        self.prefetch = prefetch
        self.example_shape = _example_shape(read, transform)
        self._pool = (concurrent.futures.ThreadPoolExecutor(num_threads, THREAD_PREFIX)
                      if transform is not None else None)
        self._prefetcher: _Prefetcher | None = None
        self._next: tuple[int, int] | None = None  # the (step, k) the prefetch has ready next
        self._closed = False

    def _make_chunk(self, start: int, k: int) -> _Chunk:
        b = self.sampler.local_batch_size
        chunk = _Chunk(start, np.empty((k, b, *self.example_shape), np.uint8),
                       np.empty((k, b), np.int32))
        first_slot = self.sampler.process_index * b
        for i in range(k):
            step = start + i
            images, labels = self.read(self.sampler.local_batch_indices(step))
            chunk.labels[i] = labels
            if self.transform is None:
                chunk.x[i] = images
                continue
            for j in range(b):
                rng = example_rng(self.seed, step, first_slot + j)
                chunk.futures.append(self._pool.submit(_fill, chunk.x[i, j], self.transform,
                                                       images[j], rng))
        return chunk

    def start(self, step: int, k: int) -> None:
        """Starts (or restarts) the prefetch at the chunk [step, step + k)."""
        if self._closed:
            raise RuntimeError("StreamSource: start() after close()")
        _check_count("StreamSource.start", "step", step, 0)
        _check_count("StreamSource.start", "k", k, 1)
        if self._prefetcher is not None:
            self._prefetcher.stop()
        self._prefetcher = _Prefetcher(self._make_chunk, int(step), int(k), self.prefetch)
        self._next = (int(step), int(k))

    def local_batches(self, step: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(x uint8 (k, B/P, *example_shape), labels int32 (k, B/P)): this process's rows of the
        global batches of steps [step, step + k)."""
        if self._closed:
            raise RuntimeError("StreamSource: local_batches() after close()")
        if self._next != (step, k):
            self.start(step, k)
        chunk = self._prefetcher.get()
        self._next = None  # until this chunk is complete: a failed request restarts
        if chunk.error is not None:
            raise chunk.error
        for future in chunk.futures:
            future.result()
        self._next = (step + k, k)
        return chunk.x, chunk.labels

    def close(self) -> None:
        """Stops the prefetch thread and the worker threads, waiting for them; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._prefetcher is not None:
            self._prefetcher.stop()
            self._prefetcher = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> StreamSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def eval_batches(
    read: Read,
    num_examples: int,
    batch_size: int,
    *,
    transform: Transform | None = None,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 1,
    prefetch: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """This process's padded evaluation batches: (x uint8 (B/P, ...), labels int32 (B/P,),
    mask bool (B/P,)).

    Global batch i holds examples [i·B, (i+1)·B), process p its contiguous slice
    [i·B + p·B/P, i·B + (p+1)·B/P); positions ≥ N are padding (zeros, label 0, mask False). Every
    process yields ceil(N / B) batches, and over all processes every example appears exactly once
    with mask True. `transform(image, None)` (e.g. `EvalTransform(224)`) runs in `num_threads`
    worker threads, `prefetch` batches ahead; closing the generator (or exhausting it) joins them.
    """
    _check_count("eval_batches", "num_examples", num_examples, 1)
    _check_count("eval_batches", "batch_size", batch_size, 1)
    _check_count("eval_batches", "process_count", process_count, 1)
    _check_count("eval_batches", "num_threads", num_threads, 1)
    _check_count("eval_batches", "prefetch", prefetch, 0)
    if not 0 <= process_index < process_count:
        raise ValueError(f"eval_batches: process_index must be in [0, {process_count}), got "
                         f"process_index={process_index}")
    if batch_size % process_count:
        raise ValueError(f"eval_batches: batch_size must be divisible by process_count, got "
                         f"batch_size={batch_size}, process_count={process_count}")
    b = batch_size // process_count
    shape = _example_shape(read, transform)
    num_batches = -(-num_examples // batch_size)

    def submit(pool: concurrent.futures.Executor | None, i: int) -> tuple:
        first = i * batch_size + process_index * b
        indices = np.arange(first, min(first + b, num_examples), dtype=np.int64)
        x, labels, mask = np.zeros((b, *shape), np.uint8), np.zeros(b, np.int32), np.zeros(b, bool)
        futures = []
        if len(indices):
            images, read_labels = read(indices)
            labels[: len(indices)] = read_labels
            mask[: len(indices)] = True
            if transform is None:
                x[: len(indices)] = images
            else:
                futures = [pool.submit(_fill, x[j], transform, images[j], None)
                           for j in range(len(indices))]
        return x, labels, mask, futures

    pool = (concurrent.futures.ThreadPoolExecutor(num_threads, THREAD_PREFIX)
            if transform is not None else None)
    pending: deque[tuple] = deque()

    def finish() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, labels, mask, futures = pending.popleft()
        for future in futures:
            future.result()
        return x, labels, mask

    try:
        for i in range(num_batches):
            pending.append(submit(pool, i))
            if len(pending) > prefetch:
                yield finish()
        while pending:
            yield finish()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
