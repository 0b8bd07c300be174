"""CIFAR-10 and CIFAR-100 from the original archives (python or binary version) or CIFAR-10's npz.

Every layout stores an image as a row of 3,072 bytes: the 32×32 red plane, then green, then blue,
each row-major; `chw_rows_to_hwc` makes it (32, 32, 3). Sources:

- python version: pickled dicts with b'data' (N, 3072) uint8 and b'labels' (CIFAR-10) or
  b'fine_labels' / b'coarse_labels' (CIFAR-100), read from the .tar.gz without extracting it, or
  from the extracted pickles. Unpickling admits only the NumPy array classes the official files
  use, so a tampered pickle cannot run code.
- binary version (what TFDS downloads): records of [label] + 3072 bytes (CIFAR-10) or
  [coarse label, fine label] + 3072 bytes (CIFAR-100).
- npz (CIFAR-10 only, `/work/shared/datasets/cifar10`): `data`, `labels` per official batch; the
  test file holds only the first 1,000 test images, which the builder records as a partial split.

    builder = NormlabCifar10(data_dir="/tmp/tfds", file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir="/work/shared/datasets/cifar10"))
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from normlab.data import archives
from normlab.data.builders.base import NormlabBuilder, chw_rows_to_hwc

_CITATION = """@techreport{krizhevsky2009learning, title={Learning multiple layers of features
from tiny images}, author={Krizhevsky, Alex}, institution={University of Toronto}, year={2009}}"""

_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes in protocol-2 pickles; harmless
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR pickle refers to {module}.{name}: not allowed")
        if module == "numpy.core.multiarray":  # NumPy 2 renamed the module; pickles keep the old
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _unpickle(data: bytes) -> dict[bytes, Any]:
    return _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()


def _members(
    folder: Path, layout: archives.Layout, required: list[str], optional: tuple[str, ...] = ()
) -> dict[str, bytes]:
    """{base name: bytes} of the `required` files and of those `optional` files that exist.

    A .tar.gz is read in one streaming pass, without extracting it; otherwise the files sit
    beside the layout's first file.
    """
    wanted = set(required) | set(optional)
    found = {}
    if layout.is_tar:
        with tarfile.open(folder / layout.files[0], "r:gz") as tar:
            for member in tar:
                base = PurePosixPath(member.name).name
                if member.isfile() and base in wanted:
                    found[base] = tar.extractfile(member).read()
    else:
        base_dir = (folder / layout.files[0]).parent
        found = {n: (base_dir / n).read_bytes() for n in wanted if (base_dir / n).is_file()}
    missing = set(required) - set(found)
    if missing:
        raise ValueError(f"{folder / layout.files[0]}: {sorted(missing)} not found")
    return found


def _binary_records(data: bytes, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    record = num_labels + 3072
    if len(data) % record:
        raise ValueError(f"CIFAR binary batch of {len(data)} bytes is not a multiple of {record}")
    rows = np.frombuffer(data, np.uint8).reshape(-1, record)
    return rows[:, num_labels:], rows[:, :num_labels]


class NormlabCifar10(NormlabBuilder):
    """CIFAR-10, 32×32×3 uint8, 50,000 train / 10,000 test (fewer if the files hold fewer)."""

    name = "normlab_cifar10"
    DATASET = "cifar10"
    CLASS_NAMES = (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    )
    DESCRIPTION = "CIFAR-10 (Krizhevsky 2009): 32x32 colour images in 10 classes."
    HOMEPAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
    CITATION = _CITATION
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put one of these sets of CIFAR-10 files in the manual dir:\n"
        + archives.expected_files("cifar10")
    )

    def _read_splits(self, folder: Path, layout: archives.Layout):
        train_names = [f"data_batch_{i}" for i in range(1, 6)]
        if layout.kind == "npz":
            batches = {}
            for name in (*train_names, "test_batch_first1000"):
                with np.load(folder / f"{name}.npz") as npz:
                    batches[name] = (npz["data"], npz["labels"])
            test, leading = batches["test_batch_first1000"], {"test"}
        elif layout.kind == "python":
            files = _members(folder, layout, [*train_names, "test_batch"])
            batches = {}
            for name in (*train_names, "test_batch"):
                d = _unpickle(files[name])
                batches[name] = (np.asarray(d[b"data"], np.uint8), np.asarray(d[b"labels"]))
            test, leading = batches["test_batch"], set()
        else:
            files = _members(folder, layout, [f"{n}.bin" for n in (*train_names, "test_batch")])
            batches = {}
            for name in (*train_names, "test_batch"):
                rows, labels = _binary_records(files[f"{name}.bin"], 1)
                batches[name] = (rows, labels[:, 0])
            test, leading = batches["test_batch"], set()
        train_rows = np.concatenate([batches[n][0] for n in train_names])
        train_labels = np.concatenate([batches[n][1] for n in train_names])
        return {
            "train": {"image": chw_rows_to_hwc(train_rows), "label": train_labels},
            "test": {"image": chw_rows_to_hwc(test[0]), "label": test[1]},
        }, leading


class NormlabCifar100(NormlabBuilder):
    """CIFAR-100, 32×32×3 uint8, fine `label` (100) and `coarse_label` (20 superclasses)."""

    name = "normlab_cifar100"
    DATASET = "cifar100"
    DESCRIPTION = (
        "CIFAR-100 (Krizhevsky 2009): 32x32 colour images; `label` is the fine class (100), "
        "`coarse_label` the superclass (20)."
    )
    HOMEPAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
    CITATION = _CITATION
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put one of these sets of CIFAR-100 files in the manual dir:\n"
        + archives.expected_files("cifar100")
    )

    def _extra_features(self) -> dict[str, Any]:
        return {"coarse_label": tfds.features.ClassLabel(num_classes=20)}

    def _read_splits(self, folder: Path, layout: archives.Layout):
        arrays = {}
        if layout.kind == "python":
            files = _members(folder, layout, ["train", "test"], ("meta",))
            for split in ("train", "test"):
                d = _unpickle(files[split])
                arrays[split] = {
                    "image": chw_rows_to_hwc(np.asarray(d[b"data"], np.uint8)),
                    "label": np.asarray(d[b"fine_labels"]),
                    "coarse_label": np.asarray(d[b"coarse_labels"]),
                }
            if "meta" in files:
                meta = _unpickle(files["meta"])
                fine = [n.decode() for n in meta[b"fine_label_names"]]
                coarse = [n.decode() for n in meta[b"coarse_label_names"]]
                self._set_names(fine, coarse)
        else:
            names = ("fine_label_names.txt", "coarse_label_names.txt")
            files = _members(folder, layout, ["train.bin", "test.bin"], names)
            for split in ("train", "test"):
                rows, labels = _binary_records(files[f"{split}.bin"], 2)
                arrays[split] = {
                    "image": chw_rows_to_hwc(rows),
                    "label": labels[:, 1],
                    "coarse_label": labels[:, 0],
                }
            if all(n in files for n in names):
                fine, coarse = (files[n].decode().split() for n in names)
                self._set_names(fine, coarse)
        return arrays, set()

    def _set_names(self, fine: list[str], coarse: list[str]) -> None:
        self.info.features["label"].names = fine
        self.info.features["coarse_label"].names = coarse
