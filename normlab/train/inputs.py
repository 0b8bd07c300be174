"""From a config's data fields to arrays on the devices: `DeviceData`.

Images become float32 in [0, 1], optionally zero-padded to `pad_to` (Fashion-MNIST 28→32 for the
CIFAR-style ResNets), then go through the fitted preprocessing (fitted on the train split only).
Every split fits in host memory for the data sets normlab ships builders for; the run then
holds them on the device and sends only indices per step (one process), or sends each step's
rows from the host (several processes: each only the rows its devices hold).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from normlab.data.datasets import dataset_info, load_arrays, open_split
from normlab.data.loader import EpochSampler
from normlab.data.preprocess import Preprocessor, from_state_dict, make_preprocessor
from normlab.parallel.mesh import replicated
from normlab.parallel.plan import ParallelPlan


@dataclass
class Split:
    """One split's images (uint8 NHWC, as stored) and int32 labels."""

    name: str
    images: np.ndarray
    labels: np.ndarray


def to_float(images: np.ndarray, pad_to: int = 0) -> np.ndarray:
    """uint8 NHWC → float32 in [0, 1], zero-padded symmetrically to `pad_to`×`pad_to`."""
    x = images.astype(np.float32) / 255.0
    if pad_to:
        h, w = x.shape[1:3]
        if pad_to < h or pad_to < w:
            raise ValueError(f"pad_to={pad_to} is smaller than the images ({h}×{w})")
        top, left = (pad_to - h) // 2, (pad_to - w) // 2
        x = np.pad(x, ((0, 0), (top, pad_to - h - top), (left, pad_to - w - left), (0, 0)))
    return x


def open_config_split(config: ConfigDict, split: str):
    """Random access to one split of the config's data set (`normlab.data.datasets.open_split`)."""
    return open_split(
        config.dataset, split, data_dir=config.data_dir or None, tfds_dir=config.tfds_dir or None
    )


def load_split(config: ConfigDict, split: str, name: str | None = None) -> Split:
    """One split (a TFDS split string) of the config's data set."""
    kwargs = {"data_dir": config.data_dir or None, "tfds_dir": config.tfds_dir or None}
    return Split(name or split, *load_arrays(config.dataset, split, **kwargs))


def load_splits(config: ConfigDict, *, evals: bool = True) -> tuple[Split, dict[str, Split]]:
    """The train split and (unless `evals=False`) the named eval splits (`config.evals`: metric
    prefix → split)."""
    train = load_split(config, config.train_split, "train")
    named = config.evals.items() if evals else ()
    return train, {prefix: load_split(config, split, prefix) for prefix, split in named}


def num_classes(config: ConfigDict) -> int:
    """Classes of the config's data set (known before the data is prepared)."""
    return dataset_info(config.dataset, prepare=False).num_classes


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

    Training examples are preprocessed once on the host; step k's batch is
    `EpochSampler.batch_indices(k)` (a pure function of the seed and the step, so a resumed run
    sees the same batches). Eval splits are loaded, preprocessed and placed on first use.
    """

    def __init__(
        self,
        config: ConfigDict,
        plan: ParallelPlan,
        preprocessor: Preprocessor,
        train_x: np.ndarray,
        train_labels: np.ndarray,
    ):
        self.config, self.plan, self.preprocessor = config, plan, preprocessor
        self.per_process = jax.process_count() > 1
        self.train_x = transform(preprocessor, train_x)
        self.train_y = np.asarray(train_labels, np.int32)
        self.input_shape = tuple(self.train_x.shape[1:])
        self.sampler = EpochSampler(len(self.train_x), config.batch_size, config.seed)
        self._on_device: tuple[jax.Array, jax.Array] | None = None
        self._evals: dict[tuple[str, str], tuple[jax.Array, jax.Array]] = {}
        self._diag: jax.Array | None = None

    prepare = None  # the model's input is made on the host (StepConfig.prepare)

    def example(self) -> np.ndarray:
        """One model input (for initializing the model)."""
        return self.train_x[:1]

    def chunk_args(self, step: int, k: int) -> tuple:
        """The data arguments of the chunk of steps [step, step + k)."""
        idx_KB = np.stack([self.sampler.batch_indices(s) for s in range(step, step + k)])
        if self.per_process:
            plan = self.plan
            return plan.host_batches(self.train_x, idx_KB), plan.host_batches(self.train_y, idx_KB)
        if self._on_device is None:
            self._on_device = (self.plan.put_train(self.train_x), self.plan.put_train(self.train_y))
        return (*self._on_device, jnp.asarray(idx_KB, jnp.int32))

    def eval_arrays(self, splits: dict[str, str] | None = None) -> dict[str, tuple]:
        """{prefix: (x, labels)} on the devices (replicated) for `splits` (prefix → split
        string; default `config.evals`)."""
        splits = dict(self.config.evals) if splits is None else splits
        out = {}
        for prefix, split in splits.items():
            if (prefix, split) not in self._evals:
                loaded = load_split(self.config, split, prefix)
                x = transform(self.preprocessor, to_float(loaded.images, self.config.pad_to))
                put = lambda a: jax.device_put(a, replicated(self.plan.mesh))  # noqa: E731
                self._evals[prefix, split] = (put(x), put(loaded.labels.astype(np.int32)))
            out[prefix] = self._evals[prefix, split]
        return out

    def close(self) -> None:
        """Nothing to stop: the data sits on the devices (the interface of `StreamData`)."""

    def diag_batch(self) -> jax.Array:
        """The fixed training batch diagnostics are measured on."""
        if self._diag is None:
            self._diag = jax.device_put(
                self.train_x[: self.config.diag_batch_size], replicated(self.plan.mesh)
            )
        return self._diag
