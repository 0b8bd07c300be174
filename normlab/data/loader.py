"""Batches as a pure function of the step: resumable, identical across restarts and process counts.

`open_split(name, split)` (from `normlab.data.datasets`, re-exported here) gives random access to
a split: `len(src)`, `src.read(indices)` → {"image": uint8 (n, H, W, C), "label": int32 (n,)},
one batched array_record lookup per call (`normlab.data.reader`).

`EpochSampler` says which examples form the global batch at step s:

    epoch = s // steps_per_epoch,  i = s % steps_per_epoch
    perm_epoch = a permutation of range(N) drawn from NumPy's PCG64 seeded by (seed, epoch)
                 (the identity when shuffle=False)
    batch(s) = perm_epoch[i·B : (i+1)·B]
    local(s) = batch(s)[p·B/P : (p+1)·B/P]     for process p of P

Because a batch depends on (seed, step) only, the data position a checkpoint must save is the
step itself, and the global batch does not depend on the number of processes: each process reads
its contiguous slice of the same global batch (per-process sharding for multi-host runs, to be
assembled with `jax.make_array_from_process_local_data`).

`grain_batches` streams those same batches from TFDS array_record data through grain, for
datasets that do not fit in memory; started at `start_step`, it yields exactly the batches an
uninterrupted run yields from that step on.

    sampler = EpochSampler(60_000, 128, seed=0)
    x_BHWC = images_NHWC[sampler.batch_indices(step)]
    for batch in grain_batches("mnist", "train", 128, seed=0, start_step=step): ...
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from normlab.data.datasets import open_split
from normlab.data.reader import ArraySplit, TfdsSplit

__all__ = ["ArraySplit", "EpochSampler", "TfdsSplit", "grain_batches", "open_split"]


def _check_int(owner: str, name: str, value: Any, low: int) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
        raise ValueError(f"{owner}: {name} must be an integer >= {low}, got {name}={value!r}")


class EpochSampler:
    """Indices of the examples in each step's batch; a pure function of (seed, step).

    Args:
      num_examples: N, the size of the split.
      batch_size: B, the global batch size (all processes together).
      seed: seeds every epoch's permutation (with the epoch number).
      shuffle: a new permutation each epoch; False keeps the dataset order (evaluation).
      drop_remainder: drop the last N mod B examples of each epoch (fixed batch shape); else
        the epoch's last batch is smaller and is split across processes by `np.array_split`.
      process_index, process_count: this process's slice of the global batch.

    Usage:

        sampler = EpochSampler(50_000, 256, seed=0, process_index=1, process_count=2)
        idx_128 = sampler.local_batch_indices(step)       # process 1's half of step's batch
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        seed: int,
        *,
        shuffle: bool = True,
        drop_remainder: bool = True,
        process_index: int = 0,
        process_count: int = 1,
    ):
        _check_int("EpochSampler", "num_examples", num_examples, 1)
        _check_int("EpochSampler", "batch_size", batch_size, 1)
        _check_int("EpochSampler", "seed", seed, 0)
        _check_int("EpochSampler", "process_count", process_count, 1)
        _check_int("EpochSampler", "process_index", process_index, 0)
        if process_index >= process_count:
            raise ValueError(
                f"EpochSampler: process_index must be < process_count, got "
                f"process_index={process_index}, process_count={process_count}"
            )
        if batch_size % process_count:
            raise ValueError(
                f"EpochSampler: batch_size must be divisible by process_count, got "
                f"batch_size={batch_size}, process_count={process_count}"
            )
        if drop_remainder and batch_size > num_examples:
            raise ValueError(
                f"EpochSampler: batch_size={batch_size} > num_examples={num_examples} with "
                "drop_remainder=True leaves no batch in an epoch"
            )
        self.num_examples = int(num_examples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_remainder = drop_remainder
        self.process_index = int(process_index)
        self.process_count = int(process_count)
        self._cached: tuple[int, np.ndarray] | None = None

    @property
    def steps_per_epoch(self) -> int:
        """N // B with drop_remainder, else ceil(N / B)."""
        if self.drop_remainder:
            return self.num_examples // self.batch_size
        return -(-self.num_examples // self.batch_size)

    @property
    def local_batch_size(self) -> int:
        """B / P: the rows of a (full) batch that this process reads."""
        return self.batch_size // self.process_count

    def epoch_permutation(self, epoch: int) -> np.ndarray:
        """The order of the examples in `epoch` (int64, length N)."""
        _check_int("EpochSampler.epoch_permutation", "epoch", epoch, 0)
        cached = self._cached  # one read: grain's threads may replace it concurrently
        if cached is not None and cached[0] == epoch:
            return cached[1]
        if self.shuffle:
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
            perm = rng.permutation(self.num_examples)
        else:
            perm = np.arange(self.num_examples, dtype=np.int64)
        self._cached = (int(epoch), perm)
        return perm

    def batch_indices(self, step: int) -> np.ndarray:
        """The global batch's example indices at `step`."""
        _check_int("EpochSampler.batch_indices", "step", step, 0)
        epoch, i = divmod(int(step), self.steps_per_epoch)
        return self.epoch_permutation(epoch)[i * self.batch_size : (i + 1) * self.batch_size]

    def local_batch_indices(self, step: int) -> np.ndarray:
        """This process's contiguous slice of `batch_indices(step)`."""
        batch = self.batch_indices(step)
        if len(batch) == self.batch_size:
            b = self.local_batch_size
            return batch[self.process_index * b : (self.process_index + 1) * b]
        return np.array_split(batch, self.process_count)[self.process_index]


_ENDLESS = 2**62


def grain_batches(
    name: str,
    split: str,
    batch_size: int,
    seed: int,
    *,
    start_step: int = 0,
    num_steps: int | None = None,
    shuffle: bool = True,
    drop_remainder: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    data_dir: str | os.PathLike | None = None,
    tfds_dir: str | os.PathLike | None = None,
    transform: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
    num_threads: int = 2,
    prefetch: int = 4,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's batches from `start_step` on, streamed by grain from `tfds.data_source`.

    Yields {"image": uint8 (B/P, H, W, C), "label": int32 (B/P,)} (after `transform`, applied
    to each example dict before stacking) for steps start_step, start_step + 1, ... (endless
    unless `num_steps`). Batch s holds the examples `EpochSampler(len(split), batch_size, seed,
    ...).local_batch_indices(s)`, read in one batched array_record lookup; grain's threads
    (`num_threads`, `prefetch` batches ahead) overlap reading with training.

        it = grain_batches("cifar10", "train", 256, seed=0, start_step=restored_step,
                           process_index=jax.process_index(), process_count=jax.process_count())
    """
    import grain

    _check_int("grain_batches", "start_step", start_step, 0)
    if num_steps is not None:
        _check_int("grain_batches", "num_steps", num_steps, 1)
    reader = open_split(name, split, data_dir=data_dir, tfds_dir=tfds_dir)
    sampler = EpochSampler(
        len(reader),
        batch_size,
        seed,
        shuffle=shuffle,
        drop_remainder=drop_remainder,
        process_index=process_index,
        process_count=process_count,
    )

    def load(step: int) -> dict[str, np.ndarray]:
        return reader.read(sampler.local_batch_indices(step), transform)

    stop = _ENDLESS if num_steps is None else start_step + num_steps
    steps = grain.MapDataset.range(start_step, stop).map(load)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(steps.to_iter_dataset(options))
