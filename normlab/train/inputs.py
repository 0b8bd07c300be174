"""From a config's data fields to float arrays ready for the device.

Images become float32 in [0, 1], optionally zero-padded to `pad_to` (Fashion-MNIST 28→32 for the
CIFAR-style ResNets), then go through the fitted preprocessing (fitted on the train split only).
Every split fits in host memory for the data sets normlab ships builders for; the loop then
holds them on the device and sends only indices per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ml_collections import ConfigDict

from normlab.data.datasets import dataset_info, load_arrays
from normlab.data.preprocess import Preprocessor, from_state_dict, make_preprocessor


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


def load_splits(config: ConfigDict) -> tuple[Split, dict[str, Split]]:
    """The train split and the named eval splits (`config.evals`: metric prefix → split)."""
    kwargs = {"data_dir": config.data_dir or None, "tfds_dir": config.tfds_dir or None}
    train = Split("train", *load_arrays(config.dataset, config.train_split, **kwargs))
    evals = {
        prefix: Split(prefix, *load_arrays(config.dataset, split, **kwargs))
        for prefix, split in config.evals.items()
    }
    return train, evals


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
