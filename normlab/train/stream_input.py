"""The streamed input path: each step's examples read (and decoded, augmented) on the host.

`config.data.pipeline` chooses how a run is fed (`choose_pipeline`):

    "device"  the whole split on the devices, indices per step (`normlab.train.inputs.DeviceData`)
    "stream"  rows read per step from the prepared data set (`StreamData`, this module)
    "auto"    device when the split's uint8 images (as stored, unpadded: what the device path
              holds) fit `data.device_budget_mb`, else stream; data sets of encoded images of
              varying size (ImageNet, image folders) always stream

Both give the same batches: step s's examples are `EpochSampler.batch_indices(s)` (a pure
function of the seed and the step), each process reads only the rows its devices hold
(`normlab.data.stream.StreamSource`, worker threads and a prefetch buffer), and the global batch
is assembled from them (`jax.make_array_from_callback`), so a resumed run sees the same data on
either path. Both send uint8 and make the model's input on the device with the same function
(`inputs.make_prepare`: scale, pad, the fitted preprocessing; `StepConfig.prepare`), so the two
paths feed the model the same floats, with 4× less traffic than float32. Encoded images (JPEG)
are decoded, cropped and flipped on the host first (`normlab.data.transforms`, keyed by (seed,
step, slot)).

The time the loop waits for its input is accumulated in `wait_seconds` and logged per log line
as `input_wait_s`; a warning says when the input is the bottleneck.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import jax
import numpy as np
from ml_collections import ConfigDict

from normlab.data.loader import EpochSampler
from normlab.data.preprocess import Preprocessor
from normlab.parallel.mesh import replicated
from normlab.parallel.plan import ParallelPlan
from normlab.train import inputs

log = logging.getLogger(__name__)

PIPELINES = ("auto", "device", "stream")


def encoded_images(image_shape: tuple) -> bool:
    """Whether a data set stores encoded images of varying size (no fixed image shape)."""
    return any(d is None for d in image_shape)


def choose_pipeline(config: ConfigDict, image_shape: tuple, num_examples: int) -> str:
    """"device" or "stream" for `config.data.pipeline` (see the module docstring): "auto" counts
    the split's uint8 bytes as stored, N·H·W·C, against `data.device_budget_mb` (MiB)."""
    wanted = config.data.pipeline
    if encoded_images(image_shape):
        if wanted == "device":
            raise ValueError(
                f"data.pipeline='device' needs images of one fixed shape; {config.dataset!r} "
                "stores encoded images of varying size: use data.pipeline='stream' (or 'auto')"
            )
        return "stream"
    if wanted != "auto":
        return wanted
    h, w, c = image_shape
    megabytes = num_examples * h * w * c / 2**20  # uint8: padding happens in `prepare`
    return "device" if megabytes <= config.data.device_budget_mb else "stream"


class StreamData:
    """The run's data, streamed; the interface of `DeviceData` (`chunk_args`, `diag_batch`,
    `input_shape`), with evaluation by padded batches (`eval_batches`) instead of whole splits.

    `encoded`: the split holds encoded images (decoded and augmented here); otherwise fixed-size
    uint8 images, sent as read. Either way uint8 goes to the devices and `prepare` (the device
    path's `inputs.make_prepare`) makes the model's float input there.
    """

    per_process = True  # the chunk takes assembled batches (`chunk_body(from_batches=True)`)

    def __init__(self, config: ConfigDict, plan: ParallelPlan, preprocessor: Preprocessor):
        from normlab.data.stream import StreamSource, array_read
        from normlab.data.transforms import EvalTransform, TrainTransform

        self.config, self.plan, self.preprocessor = config, plan, preprocessor
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        self.reader = inputs.open_config_split(config, config.train_split)
        self.encoded = bool(getattr(self.reader, "encoded", False))
        if self.encoded:
            size = config.data.image_size
            self.read = self.reader.read_encoded
            self.train_transform, self.eval_transform = TrainTransform(size), EvalTransform(size)
        else:
            self.read = array_read(self.reader)
            self.train_transform = self.eval_transform = None
        self.prepare: inputs.Prepare = inputs.make_prepare(preprocessor, config.pad_to)
        self.sampler = EpochSampler(
            len(self.reader), config.batch_size, config.seed,
            process_index=self.process_index, process_count=self.process_count,
        )
        self.source = StreamSource(
            self.read, self.sampler, transform=self.train_transform,
            num_threads=config.data.threads, prefetch=config.data.prefetch,
        )
        self.input_shape = self.example().shape[1:]
        self.wait_seconds = 0.0
        self._diag: jax.Array | None = None

    def __len__(self) -> int:
        return len(self.reader)

    def example(self) -> np.ndarray:
        """One model input (for initializing the model): float32, as the model sees it."""
        return np.asarray(self.prepare(self._first(1)))

    def _first(self, n: int) -> np.ndarray:
        """The first n training examples as the eval transform gives them (no augmentation)."""
        images, _ = self.read(np.arange(n))
        if not self.encoded:
            return np.asarray(images)
        return np.stack([self.eval_transform(image) for image in images])

    def chunk_args(self, step: int, k: int) -> tuple[jax.Array, jax.Array]:
        """Global (x_KB, labels_KB) of steps [step, step + k), this process's rows read here."""
        t0 = time.perf_counter()
        x, labels = self.source.local_batches(step, k)
        self.wait_seconds += time.perf_counter() - t0
        labels = np.asarray(labels, np.int32)
        return self.plan.from_local_rows(x, 1), self.plan.from_local_rows(labels, 1)

    def eval_batches(self, split: str) -> Iterator[tuple[jax.Array, jax.Array, jax.Array]]:
        """Global (x, labels, mask) batches of `split`, padded to `eval_batch_size` (rounded up
        to a multiple of the data axis, over which they are sharded): every example in exactly
        one unmasked row over all processes."""
        from normlab.data.stream import array_read, eval_batches

        reader = inputs.open_config_split(self.config, split)
        read = reader.read_encoded if self.encoded else array_read(reader)
        data = self.plan.data_size
        batch = -(-self.config.eval_batch_size // data) * data
        for x, labels, mask in eval_batches(
            read, len(reader), batch, transform=self.eval_transform,
            process_index=self.process_index, process_count=self.process_count,
            num_threads=self.config.data.threads,
        ):
            yield (
                self.plan.from_local_rows(x, 0),
                self.plan.from_local_rows(np.asarray(labels, np.int32), 0),
                self.plan.from_local_rows(np.asarray(mask, np.float32), 0),
            )

    def diag_batch(self) -> jax.Array:
        """The fixed batch diagnostics are measured on: the first training examples (uint8,
        `prepare` applies)."""
        if self._diag is None:
            n = min(self.config.diag_batch_size, len(self.reader))
            self._diag = jax.device_put(self._first(n), replicated(self.plan.mesh))
        return self._diag

    def close(self) -> None:
        """Stops the reader threads."""
        self.source.close()
