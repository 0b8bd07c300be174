"""The shared part of normlab's TFDS builders: features, metadata, partial splits.

Each builder reads a dataset's original files from `dl_manager.manual_dir` (one folder per
dataset) and writes TFDS `array_record` files, which `tfds.data_source` reads with no TensorFlow.

Why `tfds.features.Tensor(uint8, encoding=BYTES)` and not `Image`: an `Image` feature stores a
PNG per example and decoding 60,000 PNGs with PIL costs seconds, whereas raw bytes decode with one
`np.frombuffer`; the images are tiny (784 or 3,072 bytes), so PNG saves little disk. BYTES rather
than the default encoding because the default stores every uint8 pixel as an int64 varint.

Examples keep the official order (`disable_shuffling=True`), so `train[45000:]` is the last 5,000
official training images, as in the papers that hold them out for validation.

A split with fewer examples than the official one is recorded in `info.metadata["partial_splits"]`
({split: "first 1,000 of 10,000 official test images"}) and in the description.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from normlab.data import archives
from normlab.data.catalog import CATALOG


class NormlabBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of normlab's builders; subclasses set the class constants and `_read_splits`.

    Usage (what `normlab.data.datasets.prepare` does):

        builder = NormlabMnist(data_dir="/tmp/tfds", file_format="array_record")
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir="/data/mnist"))
        src = tfds.data_source("normlab_mnist", split="train", data_dir="/tmp/tfds")
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Built by normlab from the original files, without TensorFlow.",
    }
    DATASET: ClassVar[str]  # the user-facing name ("mnist"): shape, classes, splits in CATALOG
    CLASS_NAMES: ClassVar[tuple[str, ...]] = ()  # empty: names come from the files, if at all
    DESCRIPTION: ClassVar[str]
    HOMEPAGE: ClassVar[str]
    CITATION: ClassVar[str] = ""

    def _extra_features(self) -> dict[str, Any]:
        return {}

    def _info(self) -> tfds.core.DatasetInfo:
        entry = CATALOG[self.DATASET]
        features = {
            "image": tfds.features.Tensor(
                shape=entry.image_shape, dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
            ),
            "label": (
                tfds.features.ClassLabel(names=self.CLASS_NAMES)
                if self.CLASS_NAMES
                else tfds.features.ClassLabel(num_classes=entry.num_classes)
            ),
            **self._extra_features(),
        }
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    @abc.abstractmethod
    def _read_splits(
        self, folder: Path, layout: archives.Layout
    ) -> tuple[dict[str, dict[str, np.ndarray]], set[str]]:
        """Reads the files of `layout` in `folder`.

        Returns ({split: {feature: array with one row per example}}, the splits whose rows are
        known to be the *first* rows of the official split).
        """

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        folder = Path(dl_manager.manual_dir)
        layout = archives.find_layout(self.DATASET, folder)
        if layout is None:
            raise archives.DatasetNotFoundError(
                f"no complete set of {self.DATASET} files in {folder}; expected one of:\n"
                + archives.expected_files(self.DATASET)
            )
        arrays, leading = self._read_splits(folder, layout)
        partial = {}
        for split, columns in arrays.items():
            n, official = len(columns["label"]), CATALOG[self.DATASET].splits[split]
            if n < official:
                first = "first " if split in leading else ""
                partial[split] = f"{first}{n:,} of {official:,} official {split} images"
        self.info.metadata["partial_splits"] = partial
        self.info.metadata["source_files"] = list(layout.files)
        notes = [f"Built by normlab from {', '.join(layout.files)} (official order)."]
        if partial:
            notes.append(
                "PARTIAL SPLITS: "
                + "; ".join(f"{split}: {what}" for split, what in partial.items())
                + ". Results on these splits are not comparable with full-split results."
            )
        self.info.as_proto.description = self.DESCRIPTION + "\n\n" + "\n".join(notes)
        return {split: self._generate_examples(columns) for split, columns in arrays.items()}

    def _generate_examples(
        self, columns: dict[str, np.ndarray]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        labels = {k: v.astype(np.int64).tolist() for k, v in columns.items() if k != "image"}
        images = columns["image"]
        for i in range(len(images)):
            yield i, {"image": images[i], **{k: v[i] for k, v in labels.items()}}


def chw_rows_to_hwc(rows: np.ndarray) -> np.ndarray:
    """CIFAR rows (N, 3072) = [R plane, G plane, B plane], each 32×32 row-major → (N, 32, 32, 3)."""
    return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
