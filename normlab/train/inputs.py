"""From a config's data fields to arrays on the devices: `DeviceData`, and the model's input.

The devices hold the images as stored, uint8 (N, H, W, C), and make the model's input there,
inside the compiled step, evaluator and diagnostics (`make_prepare`): float32 in [0, 1],
optionally zero-padded to `pad_to` (Fashion-MNIST 28→32 for the CIFAR-style ResNets), then the
fitted preprocessing (fitted on the train split only). uint8 is 4× less device memory than the
float32 split (CIFAR-10's 50,000 training images: 614 MB → 154 MB) and 4× less host→device
traffic on the streamed and multi-process paths, which send the same uint8 rows. Every split
fits in host memory for the data sets normlab ships builders for; the run then holds the
training split on every device and sends only indices per step (one process), or sends each
step's rows from the host (several processes: each only the rows its devices hold).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from normlab.data.datasets import dataset_info, load_arrays, open_split
from normlab.data.loader import EpochSampler
from normlab.data.preprocess import Preprocessor, from_state_dict, make_preprocessor
from normlab.data.subset import check_classes, parse_classes
from normlab.parallel.mesh import batch_sharded, replicated
from normlab.parallel.plan import ParallelPlan
from normlab.train.evaluator import padded_batches

Prepare = Callable[[jax.Array], jax.Array]


@dataclass
class Split:
    """One split's images (uint8 NHWC, as stored) and int32 labels."""

    name: str
    images: np.ndarray
    labels: np.ndarray


def _pad_widths(shape: tuple[int, ...], pad_to: int) -> list[tuple[int, int]]:
    """The symmetric zero padding of NHWC images to `pad_to`×`pad_to` (none for pad_to=0)."""
    h, w = shape[1:3]
    if not pad_to:
        return [(0, 0)] * len(shape)
    if pad_to < h or pad_to < w:
        raise ValueError(f"pad_to={pad_to} is smaller than the images ({h}×{w})")
    top, left = (pad_to - h) // 2, (pad_to - w) // 2
    return [(0, 0), (top, pad_to - h - top), (left, pad_to - w - left), (0, 0)]


def to_float(images: np.ndarray, pad_to: int = 0) -> np.ndarray:
    """uint8 NHWC → float32 in [0, 1], zero-padded symmetrically to `pad_to`×`pad_to` (host)."""
    x = images.astype(np.float32) / 255.0
    return np.pad(x, _pad_widths(x.shape, pad_to)) if pad_to else x


# Each uint8 value's float32 x / 255 as NumPy rounds it. On the device a table lookup, not a
# division: XLA rewrites x / 255 as x · (1/255), which rounds 126 of the 256 values differently.
_UNIT = np.arange(256, dtype=np.float32) / np.float32(255)


def to_unit(x_u8: jax.Array) -> jax.Array:
    """uint8 → float32 in [0, 1] on the device, bit for bit the host's `to_float`."""
    return jnp.asarray(_UNIT)[x_u8]


def make_prepare(preprocessor: Preprocessor, pad_to: int = 0) -> Prepare:
    """The model's input from uint8 NHWC images, on the device (jittable):
    `preprocessor(pad(x / 255))`, the same floats as `transform(preprocessor, to_float(x))`."""

    def prepare(x_u8: jax.Array) -> jax.Array:
        x = to_unit(x_u8)
        return preprocessor(jnp.pad(x, _pad_widths(x.shape, pad_to)) if pad_to else x)

    return prepare


def data_kwargs(config: ConfigDict) -> dict:
    """The config's data folders and class subset, as `open_split` / `load_arrays` take them."""
    return {"data_dir": config.data_dir or None, "tfds_dir": config.tfds_dir or None,
            "classes": parse_classes(config.classes)}


def open_config_split(config: ConfigDict, split: str):
    """Random access to one split of the config's data set (`normlab.data.datasets.open_split`)."""
    return open_split(config.dataset, split, **data_kwargs(config))


def load_split(config: ConfigDict, split: str, name: str | None = None) -> Split:
    """One split (a TFDS split string) of the config's data set."""
    return Split(name or split, *load_arrays(config.dataset, split, **data_kwargs(config)))


def load_splits(config: ConfigDict, *, evals: bool = True) -> tuple[Split, dict[str, Split]]:
    """The train split and (unless `evals=False`) the named eval splits (`config.evals`: metric
    prefix → split)."""
    train = load_split(config, config.train_split, "train")
    named = config.evals.items() if evals else ()
    return train, {prefix: load_split(config, split, prefix) for prefix, split in named}


def num_classes(config: ConfigDict) -> int:
    """Classes of the config's data set (known before the data is prepared), or of its class
    subset (`config.classes`, checked against the data set's)."""
    total = dataset_info(config.dataset, prepare=False).num_classes
    classes = parse_classes(config.classes)
    check_classes(classes, total, config.dataset)
    return len(classes) or total


def fit_preprocessor(config: ConfigDict, train_x: np.ndarray) -> Preprocessor:
    """The config's preprocessing, fitted on the (float, padded) training images."""
    options = {k: v for k, v in config.preprocess.items() if k != "name"}
    return make_preprocessor(config.preprocess.name, **options).fit(train_x)


def split_state(preprocessor: Preprocessor) -> tuple[dict[str, np.ndarray], dict]:
    """The preprocessing state as (arrays for orbax, JSON-able rest for the metadata)."""
    state = preprocessor.state_dict()
    arrays = {k: np.asarray(v) for k, v in state.items() if isinstance(v, np.ndarray)}
    rest = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    return arrays, rest


def join_state(arrays: dict[str, np.ndarray], rest: dict) -> Preprocessor:
    """Inverse of `split_state`."""
    return from_state_dict({**rest, **arrays})


def transform(preprocessor: Preprocessor, x: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Applies the fitted preprocessing in chunks (bounded memory for whitening)."""
    parts = [np.asarray(preprocessor(x[i : i + chunk])) for i in range(0, len(x), chunk)]
    return np.concatenate(parts) if parts else x


class DeviceData:
    """The run's data as the step, the evaluator and the diagnostics take it.

    The training split sits on the devices as uint8 (`device_arrays`, replicated: any row can be
    in any device's part of a batch); step k's batch is `EpochSampler.batch_indices(k)` (a pure
    function of the seed and the step, so a resumed run sees the same batches), and `prepare`
    makes the model's input from the gathered rows inside the step. Eval splits are loaded on
    first use, cut into padded batches and placed as uint8 sharded over the data axis.
    """

    def __init__(
        self,
        config: ConfigDict,
        plan: ParallelPlan,
        preprocessor: Preprocessor,
        train_images: np.ndarray,
        train_labels: np.ndarray,
    ):
        if train_images.dtype != np.uint8:
            raise TypeError(f"DeviceData holds uint8 images as stored, got {train_images.dtype}")
        self.config, self.plan, self.preprocessor = config, plan, preprocessor
        self.per_process = jax.process_count() > 1
        self.train_images = train_images
        self.train_y = np.asarray(train_labels, np.int32)
        self.prepare: Prepare = make_prepare(preprocessor, config.pad_to)
        model_input = jax.eval_shape(self.prepare, jax.ShapeDtypeStruct(
            (1, *train_images.shape[1:]), np.uint8))
        self.input_shape = tuple(model_input.shape[1:])
        self.sampler = EpochSampler(len(train_images), config.batch_size, config.seed)
        self._on_device: tuple[jax.Array, jax.Array] | None = None
        self._evals: dict[tuple[str, str], tuple[jax.Array, jax.Array]] = {}
        self._diag: jax.Array | None = None

    def example(self) -> np.ndarray:
        """One model input (float32, as the model sees it; for initializing the model)."""
        return np.asarray(self.prepare(self.train_images[:1]))

    def device_arrays(self) -> tuple[jax.Array, jax.Array]:
        """The training (images uint8 NHWC, labels int32) on the devices, placed once."""
        if self._on_device is None:
            self._on_device = (self.plan.put_train(self.train_images),
                               self.plan.put_train(self.train_y))
        return self._on_device

    def chunk_args(self, step: int, k: int) -> tuple:
        """The data arguments of the chunk of steps [step, step + k)."""
        idx_KB = np.stack([self.sampler.batch_indices(s) for s in range(step, step + k)])
        if self.per_process:
            plan = self.plan
            return (plan.host_batches(self.train_images, idx_KB),
                    plan.host_batches(self.train_y, idx_KB))
        return (*self.device_arrays(), jnp.asarray(idx_KB, jnp.int32))

    def eval_arrays(self, splits: dict[str, str] | None = None) -> dict[str, tuple]:
        """{prefix: (x_KB, labels_KB)} on the devices for `splits` (prefix → split string;
        default `config.evals`): uint8 images cut into padded batches of `eval_batch_size`
        (rounded up to a multiple of the data axis, over which each batch is sharded), label -1
        on the padding (`evaluator.padded_batches`)."""
        splits = dict(self.config.evals) if splits is None else splits
        data = self.plan.data_size
        batch = -(-self.config.eval_batch_size // data) * data
        sharding = batch_sharded(self.plan.mesh, leading_axes=1)
        out = {}
        for prefix, split in splits.items():
            if (prefix, split) not in self._evals:
                loaded = load_split(self.config, split, prefix)
                x, y = padded_batches(loaded.images, loaded.labels.astype(np.int32), batch)
                # every process holds the whole split and gives each of its devices its rows
                self._evals[prefix, split] = tuple(
                    jax.make_array_from_callback(a.shape, sharding, lambda i, a=a: a[i])
                    for a in (x, y))
            out[prefix] = self._evals[prefix, split]
        return out

    def close(self) -> None:
        """Nothing to stop: the data sits on the devices (the interface of `StreamData`)."""

    def diag_batch(self) -> jax.Array:
        """The fixed training batch diagnostics are measured on (uint8, `prepare` applies)."""
        if self._diag is None:
            self._diag = jax.device_put(
                self.train_images[: self.config.diag_batch_size], replicated(self.plan.mesh)
            )
        return self._diag
