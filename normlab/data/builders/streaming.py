"""The shared part of normlab's builders of variable-size image data sets (ImageNet, image
folders): encoded images streamed from the source into TFDS `array_record` shards, in a chosen
order, with no TensorFlow and bounded memory.

Features: `image` = `tfds.features.Image(shape=(None, None, 3))` holding encoded bytes (the
original file's whenever possible: `normlab.data.builders.image_bytes`), `label` = ClassLabel,
`file_name` = Text (the image's name in its archive, or its path in the folder).

How a split is written (why not `GeneratorBasedBuilder`: TFDS's writer buffers the split in
memory and, past 1 GB, spills through `tf.io.gfile`, i.e. needs TensorFlow):
1. *read*: the subclass's `_sources` yields (order key, example) while the source is read once,
   front to back; each example is appended to the on-disk bucket of its key
   (`normlab.data.builders.spill`), one bucket per ~`SHARD_BYTES` of source;
2. *write*: TFDS's `ShardBasedBuilder` writes one shard per non-empty bucket, its records sorted
   by key. The split's record order is therefore the key order (a seeded permutation, or the
   official order), whatever order the source came in.
Both phases show a progress line with ETA on stderr (`normlab.data.progress`).

An interrupted prepare leaves nothing that looks prepared: everything (buckets included) is
written into TFDS's temp folder `<name>/[<config>/]incomplete.XXXXXX_<version>/`, renamed to
`<version>/` only once every split and `dataset_info.json` are written. An exception removes the
temp folder; after a kill (SIGKILL, power loss) it stays behind, unread, and the next prepare of
the same data set deletes it. A rerun always starts over (no resume: the read phase is one pass
over the archive and dominates; resuming inside a tar stream is not possible). Prepares of one
data set are serialized by a lock file, so the cleanup never touches a live prepare.
"""

from __future__ import annotations

import abc
import dataclasses
import fcntl
import functools
import math
import shutil
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import tensorflow_datasets as tfds

from normlab.data.builders.spill import Spill
from normlab.data.catalog import CATALOG
from normlab.data.progress import Progress

Example = dict[str, Any]  # {"image": bytes, "label": int, "file_name": str}
_LABEL = struct.Struct("<qI")  # label, file-name length


@dataclasses.dataclass
class SplitSource:
    """One split as the subclass reads it.

    `examples` yields (key, example) with 0 <= key < `key_space`; records are written in key order
    (ties by file name). `num_bytes` is the size of what is read (progress total, bucket count);
    `position()` says how many of those bytes have been read so far.
    """

    examples: Iterable[tuple[int, Example]]
    key_space: int
    num_bytes: int
    position: Callable[[], int]


def _pack(example: Example) -> bytes:
    name = example["file_name"].encode()
    return _LABEL.pack(example["label"], len(name)) + name + example["image"]


def _unpack(record: bytes) -> Example:
    label, n = _LABEL.unpack_from(record)
    start = _LABEL.size
    return {
        "label": label,
        "file_name": record[start : start + n].decode(),
        "image": record[start + n :],
    }


class ImageBuilder(tfds.core.ShardBasedBuilder, skip_registration=True):
    """Base of the variable-size image builders; subclasses set the constants, `_label_feature`
    and `_sources`, and may add `self.extra_metadata` (saved in the info's metadata)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Built by normlab from the original files, without TensorFlow.",
    }
    DATASET: ClassVar[str] = ""  # the catalog name, if the data set is in the catalog
    ENCODING: ClassVar[str | None] = "jpeg"  # Image feature's encoding_format (None: mixed)
    SHARD_BYTES: ClassVar[int] = 256 << 20  # source bytes per bucket = per shard; bounds memory
    DESCRIPTION: ClassVar[str] = ""
    HOMEPAGE: ClassVar[str] = ""
    CITATION: ClassVar[str] = ""
    ORDER: ClassVar[str] = ""  # one sentence: the record order of each split

    @abc.abstractmethod
    def _label_feature(self) -> tfds.features.ClassLabel:
        """The `label` feature, with the class names."""

    @abc.abstractmethod
    def _sources(self, folder: Path) -> dict[str, SplitSource]:
        """{split: its source}, read from `folder` (the manual dir)."""

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format=self.ENCODING),
                "label": self._label_feature(),
                "file_name": tfds.features.Text(),
            }
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=features,
            supervised_keys=("image", "label"),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            disable_shuffling=True,  # the order is chosen (see ORDER) and must be kept
            metadata=tfds.core.MetadataDict(),
        )

    def download_and_prepare(self, *args: Any, **kwargs: Any) -> None:
        """TFDS's, under a per-data-set lock, after deleting temp folders of killed prepares."""
        parent = Path(self.data_dir).parent
        parent.mkdir(parents=True, exist_ok=True)
        with open(parent / ".prepare.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for stale in parent.glob(f"incomplete.*_{self.version}"):
                shutil.rmtree(stale, ignore_errors=True)
            super().download_and_prepare(*args, **kwargs)

    def _download_and_prepare(self, dl_manager: Any, download_config: Any = None) -> None:
        self.extra_metadata: dict[str, Any] = {}
        super()._download_and_prepare(dl_manager, download_config)
        shutil.rmtree(Path(self.data_dir) / "_spill", ignore_errors=True)
        counts = {split: info.num_examples for split, info in self.info.splits.items()}
        notes = [f"Record order: {self.ORDER}"] if self.ORDER else []
        partial = {}
        if self.DATASET in CATALOG:
            official = CATALOG[self.DATASET].splits
            partial = {
                split: f"{n:,} of {official[split]:,} official {split} images"
                for split, n in counts.items()
                if split in official and n < official[split]
            }
        if partial:
            notes.append(
                "PARTIAL SPLITS: " + "; ".join(f"{s}: {what}" for s, what in partial.items())
            )
        self.info.metadata.update({"partial_splits": partial, **self.extra_metadata})
        self.info.as_proto.description = "\n\n".join([self.DESCRIPTION, *notes])

    def _shard_iterators_per_split(self, dl_manager: Any) -> dict[str, list[Callable]]:
        spill_root = Path(self.data_dir) / "_spill"  # inside TFDS's incomplete.* temp folder
        shards = {}
        for split, source in self._sources(Path(dl_manager.manual_dir)).items():
            buckets = max(1, math.ceil(source.num_bytes / self.SHARD_BYTES))
            spill = Spill(spill_root / split, buckets, source.key_space)
            bar = Progress(f"{self.name} {split}: reading", source.num_bytes, "B")
            seen = 0
            for key, example in source.examples:
                spill.add(key, example["file_name"].encode(), _pack(example))
                now = source.position()
                bar.update(now - seen)
                seen = now
            bar.close()
            nonempty = spill.nonempty()
            if not nonempty:
                raise ValueError(f"{self.name}: split {split!r} has no images")
            writing = Progress(f"{self.name} {split}: writing", sum(spill.counts), "images")
            shards[split] = [
                functools.partial(self._shard, spill, b, writing, last=b == nonempty[-1])
                for b in nonempty
            ]
        return shards

    @staticmethod
    def _shard(
        spill: Spill, bucket: int, bar: Progress, last: bool
    ) -> Iterator[tuple[str, Example]]:
        for record in spill.take(bucket):
            example = _unpack(record)
            bar.update()
            yield example["file_name"], example
        if last:
            bar.close()
