"""Data sets by name: the names of `normlab.data.catalog.CATALOG`, or any prepared TFDS name.

Where data lives:
- original files ("archives"): the `data_dir` argument, else $NORMLAB_DATA_DIR, else
  `~/.cache/normlab/archives`; one sub-folder per dataset (`mnist/`, `cifar10/`, ...), possibly
  read-only (see `normlab.data.archives`);
- prepared TFDS data (array_record, written once): the `tfds_dir` argument, else
  $NORMLAB_TFDS_DIR, else `~/.cache/normlab/tfds`.

Loading a dataset that is not prepared but whose archives are found prepares it (one log line);
otherwise `DatasetNotFoundError` says how to get it. Reading goes through `tfds.data_source`
(array_record), so no TensorFlow is needed. `digits` is scikit-learn's bundled 8×8 digits (1,797
images, no network): train = the first 1,500, test = the last 297; pixel values 0..16 are mapped
to 0..255 by round(v·255/16) (lossless) so every dataset is uint8 on the same scale.

    x_NHWC, y_N = load_arrays("mnist", "train[:55000]", data_dir="/work/shared/datasets")
    info = dataset_info("cifar10")       # info.partial_splits: {"test": "first 1,000 of ..."}
    src = open_split("mnist", "test")    # random access: src.read(indices)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import os
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from normlab.data import archives
from normlab.data.archives import ChecksumError, DatasetNotFoundError, resolve_data_dir
from normlab.data.catalog import (
    BUILT,
    CATALOG,
    IMAGE_FOLDER_MARKER,
    DatasetInfo,
    image_folder_info,
    image_folder_path,
)
from normlab.data.reader import ArraySplit, TfdsSplit
from normlab.data.subset import ClassSubset, class_subset
from normlab.registry import DATASETS

__all__ = [
    "ChecksumError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "dataset_info",
    "digits_split",
    "ensure_prepared",
    "load_arrays",
    "open_split",
    "prepare",
    "prepared_dir",
    "resolve_data_dir",
    "resolve_tfds_dir",
    "tfds_source",
]

log = logging.getLogger("normlab.data")


for _info in CATALOG.values():  # the registry's `dataset` names are the catalog's
    DATASETS.register(_info.name)(_info)


def resolve_tfds_dir(tfds_dir: str | os.PathLike | None = None) -> Path:
    """Prepared TFDS data: `tfds_dir`, else $NORMLAB_TFDS_DIR, else ~/.cache/normlab/tfds."""
    if tfds_dir is None:
        tfds_dir = os.environ.get("NORMLAB_TFDS_DIR") or Path.home() / ".cache/normlab/tfds"
    return Path(tfds_dir).expanduser()


def _builder_cls(name: str):
    info = CATALOG.get(name)
    return info.builder_cls() if info is not None else None


def _image_folder_dir(name: str, tfds_dir: str | os.PathLike | None) -> Path | None:
    """The folder of image folder `name` prepared under the TFDS dir, or None."""
    if name in CATALOG:
        return None
    path = image_folder_path(name, resolve_tfds_dir(tfds_dir))
    return path if (path / IMAGE_FOLDER_MARKER).is_file() else None


def prepared_dir(name: str, tfds_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder of `name`'s prepared TFDS data (one of normlab's builders or a prepared image
    folder), or None."""
    cls = _builder_cls(name)
    if cls is None:
        return _image_folder_dir(name, tfds_dir)
    path = resolve_tfds_dir(tfds_dir) / cls.name / str(cls.VERSION)
    return path if (path / "dataset_info.json").is_file() else None


@contextlib.contextmanager
def _quiet_tfds(progress_bars: bool) -> Iterator[None]:
    """Silences TFDS's stdout banner ("Unknown size"), INFO logs and maybe its progress bars."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.utils import tqdm_utils

    was_active = getattr(tqdm_utils, "_active", True)
    absl_logger = logging.getLogger("absl")
    absl_level = absl_logger.level
    tfds.display_progress_bar(progress_bars and was_active)
    absl_logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(was_active)
        absl_logger.setLevel(absl_level)


def prepare(
    name: str,
    *,
    source: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    tfds_dir: str | os.PathLike | None = None,
    verify: bool = True,
    force: bool = False,
    download: bool = True,
    quiet: bool = False,
) -> Path:
    """Builds `name`'s TFDS data from its original files; returns the prepared folder.

    Archives come from `source` (a folder holding them, or holding `name/`), copied into
    `data_dir/name` first if `data_dir` is given; else from `resolve_data_dir(data_dir)/name`,
    downloaded there (sha256-checked) if absent and `download`. `verify` checks known sha256;
    `force` rebuilds prepared data (e.g. after getting CIFAR-10's full test set); `quiet` hides
    TFDS's progress bars.

        prepare("mnist", source="/work/shared/datasets", tfds_dir="/tmp/tfds")
    """
    import tensorflow_datasets as tfds

    cls = _builder_cls(name)
    if cls is None:
        raise ValueError(
            f"prepare: normlab builds only {', '.join(BUILT)}, got {name!r}; "
            + (
                f"{name} needs no preparation ({CATALOG[name].prepare})"
                if name in CATALOG
                else "prepare other TFDS datasets with TFDS itself (see dataset_info's error)"
            )
        )
    if source is not None:
        folder = archives.dataset_folder(name, source)
        if folder is None:
            raise DatasetNotFoundError(
                f"no complete set of {name} files in {source} (nor in {Path(source) / name}); "
                f"expected one of:\n{archives.expected_files(name)}"
            )
        if data_dir is not None:
            folder = archives.fetch_archives(name, Path(data_dir) / name, folder, verify=verify)
        elif verify:
            archives.verify_archives(name, folder)
    else:
        folder = resolve_data_dir(data_dir) / name
        if archives.find_layout(name, folder) is None:
            downloadable = any(layout.downloadable for layout in archives.layouts(name))
            if not download or not downloadable:
                raise DatasetNotFoundError(_missing_message(name, folder, tfds_dir))
            archives.fetch_archives(name, folder)
        elif verify:
            archives.verify_archives(name, folder)
    tfds_root = resolve_tfds_dir(tfds_dir)
    builder = cls(data_dir=str(tfds_root), file_format="array_record")
    mode = tfds.download.GenerateMode
    config = tfds.download.DownloadConfig(
        manual_dir=str(folder),
        download_mode=mode.FORCE_REDOWNLOAD if force else mode.REUSE_DATASET_IF_EXISTS,
    )
    # One download dir per dataset: a shared one is how Fashion-MNIST ends up built from MNIST.
    downloads = tfds_root / "downloads" / name
    try:
        with _quiet_tfds(progress_bars=not quiet):
            builder.download_and_prepare(download_dir=str(downloads), download_config=config)
    except Exception:
        if force or prepared_dir(name, tfds_root) is None:
            raise  # else another process prepared it at the same time: use theirs
    return prepared_dir(name, tfds_root)


def _missing_message(name: str, folder: Path, tfds_dir: str | os.PathLike | None) -> str:
    tfds_arg = f" --tfds-dir {tfds_dir}" if tfds_dir is not None else ""
    return (
        f"dataset {name!r} is not prepared in {resolve_tfds_dir(tfds_dir)} and its original "
        f"files are not in {folder}.\n"
        f"Expected files (one line per accepted set):\n{archives.expected_files(name)}\n"
        "Get it in one of these ways:\n"
        f"  - from a folder holding these files:\n"
        f"      normlab data prepare {name} --from /path/to/folder/with/the/archives{tfds_arg}\n"
        + (
            f"  - on a machine with internet access (downloads and checks sha256):\n"
            f"      normlab data prepare {name}{tfds_arg}\n"
            if any(layout.downloadable for layout in archives.layouts(name))
            else f"  ({CATALOG[name].prepare})\n"
        )
        + f"  - or set NORMLAB_DATA_DIR to a folder holding one sub-folder per dataset "
        f"({name}/ with the files above), e.g. export NORMLAB_DATA_DIR=/work/shared/datasets\n"
        + "".join(
            f"(`{other}` needs no files: {info.prepare}.)"
            for other, info in CATALOG.items()
            if not info.builder
        )
    )


def ensure_prepared(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    tfds_dir: str | os.PathLike | None = None,
) -> Path:
    """`prepared_dir(name)`, preparing it first from `data_dir/name` if needed (one log line).

    Raises `DatasetNotFoundError` saying how to get the files when they are not there either.
    """
    found = prepared_dir(name, tfds_dir)
    if found is not None:
        return found
    folder = resolve_data_dir(data_dir) / name
    if archives.find_layout(name, folder) is None:
        raise DatasetNotFoundError(_missing_message(name, folder, tfds_dir))
    log.info("preparing %s from %s into %s (once)", name, folder, resolve_tfds_dir(tfds_dir))
    return prepare(name, source=folder, tfds_dir=tfds_dir, quiet=True)


def _tfds_builder(name: str, tfds_dir):
    """A TFDS builder for a name normlab does not build itself, if it is prepared in tfds_dir."""
    import tensorflow_datasets as tfds

    try:
        tfds.builder_cls(name.split("/")[0].split(":")[0])
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"unknown dataset {name!r}; valid names: {', '.join(DATASETS.names())}, or any TFDS "
            f"dataset prepared as array_record in {resolve_tfds_dir(tfds_dir)}"
        ) from None
    builder = tfds.builder(name, data_dir=str(resolve_tfds_dir(tfds_dir)))
    if not builder.is_prepared():
        raise DatasetNotFoundError(
            f"TFDS dataset {name!r} is not prepared in {resolve_tfds_dir(tfds_dir)}. normlab "
            "reads any TFDS dataset prepared in the array_record format, but TFDS's own builders "
            "need TensorFlow to build it. On a machine with TensorFlow run:\n"
            f"  tfds build {name} --data_dir {resolve_tfds_dir(tfds_dir)} "
            "--file_format array_record [--manual_dir /path/to/archives]\n"
            "then copy the result here (or point NORMLAB_TFDS_DIR at it)."
        )
    return builder


def _info_from_tfds(name: str, info: Any) -> DatasetInfo:
    image_key, label_key = info.supervised_keys or ("image", "label")
    return DatasetInfo(
        name=name,
        num_classes=info.features[label_key].num_classes,
        image_shape=tuple(info.features[image_key].shape),
        splits={split: info.splits[split].num_examples for split in info.splits},
        partial_splits=dict((info.metadata or {}).get("partial_splits", {})),
        description=info.description,
    )


def dataset_info(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    tfds_dir: str | os.PathLike | None = None,
    prepare: bool = True,
) -> DatasetInfo:
    """The `DatasetInfo` of `name`, with the split sizes of the data actually prepared.

    Not prepared but archives found: prepares them if `prepare`. Nothing found: the registry's
    nominal entry (official sizes), so models can be built before the data exists.

        dataset_info("cifar10").partial_splits   # {"test": "first 1,000 of 10,000 ..."}
    """
    if name not in CATALOG:
        folder = _image_folder_dir(name, tfds_dir)
        if folder is not None:
            import tensorflow_datasets as tfds

            entry = image_folder_info(name, resolve_tfds_dir(tfds_dir))
            info = _info_from_tfds(name, tfds.builder_from_directory(str(folder)).info)
            return dataclasses.replace(info, description=entry.description, prepare=entry.prepare)
        return _info_from_tfds(name, _tfds_builder(name, tfds_dir).info)
    if not CATALOG[name].builder:
        return CATALOG[name]
    folder = prepared_dir(name, tfds_dir)
    if folder is None and prepare:
        with contextlib.suppress(DatasetNotFoundError):
            folder = ensure_prepared(name, data_dir=data_dir, tfds_dir=tfds_dir)
    if folder is None:
        return CATALOG[name]
    import tensorflow_datasets as tfds

    return _info_from_tfds(name, tfds.builder_from_directory(str(folder)).info)


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    return images, digits.target.astype(np.int32)


def digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, 8, 8, 1), labels int32) of a digits split, TFDS split syntax.

    train = the first 1,500 of scikit-learn's 1,797 digits, test = the last 297.

        x, y = digits_split("train[:1000]")
    """
    import tensorflow_datasets as tfds

    images, labels = _digits()
    n_train = CATALOG["digits"].splits["train"]
    bounds = {"train": (0, n_train), "test": (n_train, len(labels))}
    infos = {s: types.SimpleNamespace(num_examples=b - a) for s, (a, b) in bounds.items()}
    parts = [
        np.arange(*bounds[instr.splitname])[instr.from_ : instr.to]
        for instr in tfds.core.ReadInstruction.from_spec(split).to_absolute(infos)
    ]
    indices = np.concatenate(parts)
    return images[indices], labels[indices]


def tfds_source(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    tfds_dir: str | os.PathLike | None = None,
) -> Any:
    """`tfds.data_source` of `split` (TFDS split syntax), preparing normlab's datasets if needed.

        src = tfds_source("mnist", "train[:45000]")
        example = src[0]                    # {"image": uint8 (28, 28, 1), "label": int64}
    """
    import tensorflow_datasets as tfds

    if _builder_cls(name) is None:
        folder = _image_folder_dir(name, tfds_dir)
        if folder is None:
            return _tfds_builder(name, tfds_dir).as_data_source(split=split)
    else:
        folder = ensure_prepared(name, data_dir=data_dir, tfds_dir=tfds_dir)
    # From the directory, not the registered class: the description on disk (which names any
    # partial split) is the one to keep.
    return tfds.builder_from_directory(str(folder)).as_data_source(split=split)


def open_split(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    tfds_dir: str | os.PathLike | None = None,
    classes: Sequence[int] = (),
) -> ArraySplit | TfdsSplit | ClassSubset:
    """Random access to `split` of `name`; TFDS split syntax ("train[:45000]", "train[90%:]").
    `classes`: only the examples of these classes, relabelled 0..K-1 in this order, the split
    string slicing that subset (`normlab.data.subset`).

        src = open_split("mnist", "test")
        batch = src.read(np.arange(128))    # {"image": (128, 28, 28, 1) uint8, "label": ...}
        src = open_split("cifar10", "train[:100]", classes=(5, 6, 7, 8, 9))
    """
    if classes:
        num_classes = dataset_info(name, data_dir=data_dir, tfds_dir=tfds_dir).num_classes
        return class_subset(lambda whole: open_split(name, whole, data_dir=data_dir,
                                                     tfds_dir=tfds_dir),
                            split, classes, num_classes, name)
    if name == "digits":
        return ArraySplit(*digits_split(split))
    source = tfds_source(name, split, data_dir=data_dir, tfds_dir=tfds_dir)
    fast = name in BUILT or _image_folder_dir(name, tfds_dir) is not None
    return TfdsSplit(source, fast=fast)


def load_arrays(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    tfds_dir: str | os.PathLike | None = None,
    classes: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """The whole split in memory: (images uint8 (N, H, W, C), labels int32 (N,)); `classes` as
    in `open_split`.

    For datasets that fit in memory; prepares the TFDS data from the archives if needed.

        x_NHWC, y_N = load_arrays("cifar10", "train[45000:]")    # the last 5,000, official order
    """
    src = open_split(name, split, data_dir=data_dir, tfds_dir=tfds_dir, classes=classes)
    batch = src.read(np.arange(len(src)))
    return batch["image"], batch["label"]
