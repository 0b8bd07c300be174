"""The data sets normlab knows by name, in one table: `CATALOG` (name → `DatasetInfo`).

Everything else reads it: the registry's `dataset` names (`normlab.data.datasets`), config
validation, `normlab data info/prepare`, the original-file layouts (`normlab.data.archives`),
the TFDS builders (`normlab.data.builders`: classes, image shape and official split sizes come
from here) and the loaders. Adding a data set = one entry here (+ its builder and file layouts).

This module imports nothing heavy (no TFDS): builders are named as "module:Class" and imported
only when needed (`DatasetInfo.builder_cls`).

    CATALOG["cifar10"].image_shape      # (32, 32, 3)
    CATALOG["mnist"].builder_cls()      # NormlabMnist, the TFDS builder that prepares it
    image_folder_info("flowers", "/tmp/tfds")   # a prepared image folder's entry, or None

`image_shape` has None for the height and width of data sets whose images vary in size
(imagenet2012, image folders): their records hold encoded images (`TfdsSplit.read_encoded`).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a training run needs to know about a data set, and what a report must say about it.

    `splits` maps split name → number of examples; `partial_splits` maps the splits that hold
    fewer examples than the official ones to a sentence saying so (print it in every report).
    `builder` ("module:Class") is normlab's TFDS builder that prepares it from its original
    files, of the family `archives` ("idx", "cifar", "imagenet": `normlab.data.archives`); both
    are empty for data sets normlab does not build. `prepare` says how to get the data.
    """

    name: str
    num_classes: int
    image_shape: tuple[int | None, ...]
    splits: dict[str, int]
    partial_splits: dict[str, str] = dataclasses.field(default_factory=dict)
    description: str = ""
    builder: str = ""
    archives: str = ""
    prepare: str = ""

    def builder_cls(self) -> Any:
        """normlab's TFDS builder class of this data set (imports TFDS), or None."""
        if not self.builder:
            return None
        module, _, name = self.builder.partition(":")
        return getattr(importlib.import_module(module), name)


def _from_files(name: str) -> str:
    return f"normlab data prepare {name} --from DIR (offline) or without --from (downloads)"


CATALOG: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "mnist",
            10,
            (28, 28, 1),
            {"train": 60_000, "test": 10_000},
            description="MNIST handwritten digits, official split and order.",
            builder="normlab.data.builders.mnist:NormlabMnist",
            archives="idx",
            prepare=_from_files("mnist"),
        ),
        DatasetInfo(
            "fashion_mnist",
            10,
            (28, 28, 1),
            {"train": 60_000, "test": 10_000},
            description="Fashion-MNIST (Zalando), official split and order.",
            builder="normlab.data.builders.mnist:NormlabFashionMnist",
            archives="idx",
            prepare=_from_files("fashion_mnist"),
        ),
        DatasetInfo(
            "cifar10",
            10,
            (32, 32, 3),
            {"train": 50_000, "test": 10_000},
            description="CIFAR-10, official split and order (sizes of the full dataset; "
            "the prepared data may have a partial test split: see dataset_info).",
            builder="normlab.data.builders.cifar:NormlabCifar10",
            archives="cifar",
            prepare=_from_files("cifar10"),
        ),
        DatasetInfo(
            "cifar100",
            100,
            (32, 32, 3),
            {"train": 50_000, "test": 10_000},
            description="CIFAR-100, fine labels (coarse labels as `coarse_label`).",
            builder="normlab.data.builders.cifar:NormlabCifar100",
            archives="cifar",
            prepare=_from_files("cifar100"),
        ),
        DatasetInfo(
            "imagenet2012",
            1000,
            (None, None, 3),
            {"train": 1_281_167, "validation": 50_000},
            description="ImageNet ILSVRC2012 (1000 classes, TFDS's labels.txt order), original "
            "JPEG bytes, images of any size. train is stored in a seeded random order (not by "
            "class), so train[:99%] / train[99%:] is a random minival split (~12,800 images, "
            "like big_vision's); validation in official order (record i = "
            "ILSVRC2012_val_{i+1:08d}.JPEG).",
            builder="normlab.data.builders.imagenet:NormlabImagenet2012",
            archives="imagenet",
            prepare="normlab data prepare imagenet2012 --from DIR, DIR holding "
            "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from image-net.org, which "
            "needs a login: no download)",
        ),
        DatasetInfo(
            "digits",
            10,
            (8, 8, 1),
            {"train": 1_500, "test": 297},
            description="scikit-learn's 8x8 digits (UCI), train = first 1,500, test = last "
            "297; pixels 0..16 mapped to 0..255 by round(v*255/16).",
            prepare="bundled with scikit-learn: nothing to prepare",
        ),
    )
}

# the data sets normlab prepares from original files (the others are bundled)
BUILT: tuple[str, ...] = tuple(name for name, info in CATALOG.items() if info.builder)

# Image folders (`normlab data prepare image_folder --from DIR --name NAME`) are data sets named
# by their user, not in the table above: each is prepared into IMAGE_FOLDERS/NAME/<version>/ of
# the TFDS dir, with a marker file the functions below read (no TFDS import).
IMAGE_FOLDERS = "normlab_image_folder"
IMAGE_FOLDER_VERSION = "1.0.0"
IMAGE_FOLDER_MARKER = "normlab_dataset.json"
IMAGE_FOLDER_BUILDER = "normlab.data.builders.image_folder:NormlabImageFolder"


def image_folder_path(name: str, tfds_root: str | os.PathLike) -> Path:
    """Where image folder `name` is (or would be) prepared under the TFDS dir `tfds_root`."""
    return Path(tfds_root) / IMAGE_FOLDERS / name / IMAGE_FOLDER_VERSION


def image_folder_info(name: str, tfds_root: str | os.PathLike) -> DatasetInfo | None:
    """The `DatasetInfo` of the prepared image folder `name`, or None if there is none.

    Its marker is written last, inside the temp folder that is renamed into place, so a marker
    means a complete data set.
    """
    marker = image_folder_path(name, tfds_root) / IMAGE_FOLDER_MARKER
    if not marker.is_file():
        return None
    meta = json.loads(marker.read_text())
    skipped = sum(meta["skipped"].values())
    return DatasetInfo(
        name,
        len(meta["class_names"]),
        (None, None, 3),
        dict(meta["splits"]),
        description=f"image folder {meta['source']}: {len(meta['class_names'])} classes"
        + (f", {skipped} unreadable files skipped" if skipped else ""),
        builder=IMAGE_FOLDER_BUILDER,
        prepare=f"normlab data prepare image_folder --from {meta['source']} --name {name}",
    )
