"""ImageNet ILSVRC2012 from the two original tars, without TensorFlow (TFDS's own builder needs it:
`/work/shared/design/DATA.md` §3.1).

Input: the manual dir (TFDS's layout) holds `ILSVRC2012_img_train.tar` (1000 inner tars
`<wnid>.tar` of `<wnid>_<k>.JPEG`) and `ILSVRC2012_img_val.tar` (flat, 50,000
`ILSVRC2012_val_<8 digits>.JPEG`, not in sorted order). Both are *streamed*
(`tarfile.open(mode="r|")`, each inner tar from the outer stream): nothing is extracted to disk
and no class is held in memory.

Records: `image` = the original JPEG bytes (`Image(encoding_format="jpeg")`), except the
archive's quirks, found from the bytes: CMYK JPEGs (22) and the PNG named .JPEG (1) become RGB
JPEGs of quality 100 with Pillow, as TFDS's builder makes them; grayscale JPEGs are kept (decoders
repeat the channel). `label` = the WNID's line in TFDS's `labels.txt` (train: the inner tar's
name; validation: line `n - 1` of TFDS's `validation_labels.txt` for `ILSVRC2012_val_<n>`, i.e.
the sorted-name order TFDS uses), both read from the installed TFDS package
(`tfds.core.tfds_path`). `file_name` = the member's name.

Record order (decided here, recorded in the data set's description):
- train: sorted by blake2b-64(f"{SEED}/{file_name}"), a seeded random permutation that does not
  depend on the tar's order. Classes are spread evenly, so `train[:99%]` / `train[99%:]` is a
  random 99/1 split: the minival (big_vision's `train[99%:]`), not the last ten classes.
- validation: the official order, record i = `ILSVRC2012_val_{i+1:08d}.JPEG`.

Preparing needs ~1x the tars' size for the records plus, transiently, their size again for the
on-disk buckets of the order (`normlab.data.builders.streaming`; each bucket is deleted as its
shard is written). An interrupted prepare leaves nothing that looks prepared; a rerun starts over.

    normlab data prepare imagenet2012 --from /data/imagenet    # or datasets.prepare(...)
    src = tfds.data_source("normlab_imagenet2012", split="validation", data_dir=TFDS_DIR)
"""

from __future__ import annotations

import functools
import hashlib
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import tensorflow_datasets as tfds

from normlab.data.builders.image_bytes import BadImageError, stored_bytes
from normlab.data.builders.streaming import Example, ImageBuilder, SplitSource

LABELS = "datasets/imagenet2012/labels.txt"
VALIDATION_LABELS = "datasets/imagenet2012/validation_labels.txt"
TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
SEED = 0  # of the train order; changing it changes which images are the minival
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")


@functools.cache
def wnids() -> tuple[str, ...]:
    """The 1000 WordNet IDs in label order (TFDS's labels.txt; n01440764 = 0)."""
    return tuple(tfds.core.tfds_path(LABELS).read_text().split())


@functools.cache
def validation_wnids() -> tuple[str, ...]:
    """WNID of ILSVRC2012_val_<n>.JPEG at position n - 1 (TFDS's validation_labels.txt)."""
    return tuple(tfds.core.tfds_path(VALIDATION_LABELS).read_text().split())


def train_order_key(file_name: str, seed: int = SEED) -> int:
    """The sort key of a train image: records are written in increasing key order."""
    digest = hashlib.blake2b(f"{seed}/{file_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class _TarReader:
    """Streams the images of a tar (recursing into inner tars), tracking bytes read."""

    def __init__(self, path: Path):
        self.path = path
        self.file = None

    def position(self) -> int:
        return self.file.tell() if self.file is not None else 0

    def members(self, nested: bool) -> Iterator[tuple[str, str, bytes]]:
        """(outer member name, image name, bytes); `nested`: members are tars of images."""
        with open(self.path, "rb") as self.file, tarfile.open(fileobj=self.file, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = PurePosixPath(member.name).name
                data = tar.extractfile(member)
                if not nested:
                    yield name, name, data.read()
                    continue
                with tarfile.open(fileobj=data, mode="r|") as inner:
                    for image in inner:
                        if image.isfile():
                            image_name = PurePosixPath(image.name).name
                            yield name, image_name, inner.extractfile(image).read()


def _image(path: Path, member: str, data: bytes) -> bytes:
    try:
        return stored_bytes(data, png="jpeg")
    except BadImageError as err:
        raise BadImageError(f"{path}: {member}: {err}") from None


class NormlabImagenet2012(ImageBuilder):
    """ImageNet ILSVRC2012: 1,281,167 train and 50,000 validation images of any size."""

    name = "normlab_imagenet2012"
    DATASET = "imagenet2012"
    ENCODING = "jpeg"
    DESCRIPTION = (
        "ImageNet ILSVRC2012 (Russakovsky et al. 2015): 1000 classes, original JPEG bytes "
        "(CMYK and PNG images re-encoded to RGB JPEG, quality 100)."
    )
    HOMEPAGE = "https://image-net.org/"
    CITATION = """@article{ILSVRC15, author={Olga Russakovsky and Jia Deng and Hao Su and
Jonathan Krause and Sanjeev Satheesh and Sean Ma and Zhiheng Huang and Andrej Karpathy and
Aditya Khosla and Michael Bernstein and Alexander C. Berg and Li Fei-Fei}, title={{ImageNet
Large Scale Visual Recognition Challenge}}, journal={IJCV}, year={2015}}"""
    ORDER = (
        f"train sorted by blake2b-64('{SEED}/<file_name>') (a seeded random permutation: "
        "train[99%:] is a random minival); validation in official order "
        "(record i = ILSVRC2012_val_{i+1:08d}.JPEG)."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Put {TRAIN_TAR} and {VAL_TAR} (from https://image-net.org/download-images, which "
        "needs a login) in the manual dir."
    )

    def _label_feature(self) -> tfds.features.ClassLabel:
        return tfds.features.ClassLabel(names_file=tfds.core.tfds_path(LABELS))

    def _sources(self, folder: Path) -> dict[str, SplitSource]:
        train, val = _TarReader(folder / TRAIN_TAR), _TarReader(folder / VAL_TAR)
        return {
            "train": SplitSource(
                self._train(train), 2**64, train.path.stat().st_size, train.position
            ),
            "validation": SplitSource(
                self._validation(val), len(validation_wnids()), val.path.stat().st_size,
                val.position,
            ),
        }

    def _train(self, reader: _TarReader) -> Iterator[tuple[int, Example]]:
        label_of = {wnid: i for i, wnid in enumerate(wnids())}
        for tar_name, name, data in reader.members(nested=True):
            wnid = tar_name.removesuffix(".tar")
            if wnid not in label_of:
                raise ValueError(
                    f"{reader.path}: member {tar_name} is not <wnid>.tar of one of the 1000 "
                    "ILSVRC2012 classes (TFDS's labels.txt)"
                )
            example = {"image": _image(reader.path, name, data), "label": label_of[wnid]}
            yield train_order_key(name), {**example, "file_name": name}

    def _validation(self, reader: _TarReader) -> Iterator[tuple[int, Example]]:
        label_of = {wnid: i for i, wnid in enumerate(wnids())}
        truth = validation_wnids()
        for _, name, data in reader.members(nested=False):
            match = _VAL_NAME.fullmatch(name)
            if match is None or not 1 <= int(match[1]) <= len(truth):
                raise ValueError(
                    f"{reader.path}: member {name} is not ILSVRC2012_val_<n>.JPEG with "
                    f"1 <= n <= {len(truth):,}"
                )
            n = int(match[1])
            image = _image(reader.path, name, data)
            yield n - 1, {"image": image, "label": label_of[truth[n - 1]], "file_name": name}
