"""Your own images, `DIR/<split>/<class>/<image>`, as a named data set (no TensorFlow; TFDS's
`tfds.ImageFolder` lists folders with `tf.io.gfile` and serves `tf.data` only).

    normlab data prepare image_folder --from DIR --name flowers [--skip-bad]
    then: --config.dataset=flowers   (dataset_info("flowers"), open_split("flowers", "train"))

Layout: every sub-folder of DIR is a split (`train`, `validation`, `test`, ...; files directly in
DIR, e.g. a README, are ignored); every sub-folder of a split is a class. Class names are the
folder names, sorted (label i = i-th name), written into the data set's ClassLabel; every split
must have the same classes, else an error names the difference. Hidden files and folders
(".DS_Store", ".git") are ignored; any other file in a split folder must be in a class folder.

Every image is decoded once while preparing (Pillow), so a truncated or non-image file is never
silently trained on: it is an error naming the file and why, or, with `skip_bad`, left out and
counted (per split, in the data set's metadata and marker file; `normlab data prepare` prints
it). Stored bytes (`normlab.data.builders.image_bytes`, `png="keep"`): JPEGs (RGB or grayscale)
and PNGs (RGB or grayscale) as the original bytes; CMYK JPEGs as RGB JPEG quality 100; anything
else (RGBA or palette PNG, BMP, GIF, TIFF, WebP) as RGB PNG, lossless. PNGs are kept rather than
made JPEGs because a user's images may be ones where JPEG artefacts matter; decoders must
therefore accept PNG as well as JPEG (the `Image` feature has no single encoding).

Record order: within each split, sorted by blake2b-64(f"{SEED}/{split}/{class}/{file}"), a
seeded random permutation, so a holdout like `train[90%:]` is a random subset with every class,
not the last class. Prepared into `<tfds dir>/normlab_image_folder/<NAME>/1.0.0/` (catalog:
`image_folder_path`), with `normlab_dataset.json` (classes, split sizes, skipped counts, source)
written inside the temp folder that becomes it, so it exists only for complete data sets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from normlab.data.builders.image_bytes import BadImageError, stored_bytes
from normlab.data.builders.streaming import Example, ImageBuilder, SplitSource
from normlab.data.catalog import (
    CATALOG,
    IMAGE_FOLDER_MARKER,
    IMAGE_FOLDER_VERSION,
    IMAGE_FOLDERS,
    image_folder_path,
)

SEED = 0  # of the record order
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_SPLIT = re.compile(r"[A-Za-z0-9_]+")


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


@dataclasses.dataclass(frozen=True)
class Listing:
    """The images of an image folder: {split: [(class index, path)]}, the sorted class names."""

    root: Path
    classes: tuple[str, ...]
    files: dict[str, list[tuple[int, Path]]]

    @property
    def num_bytes(self) -> dict[str, int]:
        return {s: sum(p.stat().st_size for _, p in fs) for s, fs in self.files.items()}


def scan(root: str | Path) -> Listing:
    """Lists `root/<split>/<class>/<file>`; raises ValueError on a malformed layout."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist or is not a directory")
    splits = sorted(p for p in root.iterdir() if p.is_dir() and _visible(p))
    if not splits:
        raise ValueError(f"image folder {root}: no split folders; expected {root}/<split>/<class>/")
    classes: dict[str, list[str]] = {}
    for split in splits:
        if not _SPLIT.fullmatch(split.name):
            raise ValueError(
                f"image folder {root}: split folder {split.name!r} must be letters, digits, _"
            )
        strays = [p for p in split.iterdir() if p.is_file() and _visible(p)]
        if strays:
            raise ValueError(f"{strays[0]}: a file outside any class folder of split {split.name}")
        classes[split.name] = sorted(p.name for p in split.iterdir() if p.is_dir() and _visible(p))
        if not classes[split.name]:
            raise ValueError(f"image folder {split}: no class folders")
    first, names = splits[0].name, classes[splits[0].name]
    for split, found in classes.items():
        if found != names:
            missing, extra = sorted(set(names) - set(found)), sorted(set(found) - set(names))
            raise ValueError(
                f"image folder {root}: split {split!r} has different classes from {first!r}: "
                f"missing {missing or 'none'}, extra {extra or 'none'} (every split must have the "
                "same class folders)"
            )
    files = {
        split.name: [
            (label, path)
            for label, name in enumerate(names)
            for path in sorted((split / name).rglob("*"))
            if path.is_file() and all(_visible(p) for p in path.relative_to(split).parents)
            and _visible(path)
        ]
        for split in splits
    }
    return Listing(root, tuple(names), files)


def order_key(relative: str, seed: int = SEED) -> int:
    """Records of a split are written in increasing key of '<split>/<class>/<file>'."""
    digest = hashlib.blake2b(f"{seed}/{relative}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class NormlabImageFolder(ImageBuilder):
    """An image folder prepared under the name `dataset` (one BuilderConfig per name)."""

    name = IMAGE_FOLDERS
    VERSION = tfds.core.Version(IMAGE_FOLDER_VERSION)
    ENCODING = None  # JPEG and PNG bytes are both kept
    HOMEPAGE = ""
    ORDER = f"each split sorted by blake2b-64('{SEED}/<split>/<class>/<file>') (seeded random)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = "The manual dir is the image folder, DIR/<split>/<class>/."

    def __init__(self, *, dataset: str, source: str | Path, skip_bad: bool = False, **kwargs: Any):
        if not _NAME.fullmatch(dataset) or dataset in CATALOG:
            raise ValueError(
                f"image folder name {dataset!r}: must match [a-z][a-z0-9_]* and not be one of "
                f"normlab's data sets ({', '.join(CATALOG)})"
            )
        self.listing = scan(source)
        self.skip_bad = skip_bad
        self.DESCRIPTION = f"Image folder {self.listing.root} prepared by normlab as {dataset!r}."
        config = tfds.core.BuilderConfig(name=dataset, version=IMAGE_FOLDER_VERSION)
        super().__init__(config=config, **kwargs)

    def _label_feature(self) -> tfds.features.ClassLabel:
        return tfds.features.ClassLabel(names=list(self.listing.classes))

    def _sources(self, folder: Path) -> dict[str, SplitSource]:
        self.skipped: dict[str, list[str]] = {}
        sizes = self.listing.num_bytes
        sources = {}
        for split, files in self.listing.files.items():
            done = [0]
            sources[split] = SplitSource(
                self._examples(split, files, done), 2**64, sizes[split], lambda d=done: d[0]
            )
        return sources

    def _examples(
        self, split: str, files: list[tuple[int, Path]], done: list[int]
    ) -> Iterator[tuple[int, Example]]:
        self.skipped[split] = []
        for label, path in files:
            relative = path.relative_to(self.listing.root).as_posix()
            data = path.read_bytes()
            done[0] += len(data)
            try:
                image = stored_bytes(data, png="keep", check_pixels=True)
            except BadImageError as err:
                if not self.skip_bad:
                    raise BadImageError(
                        f"{path}: {err}; remove or fix it, or pass --skip-bad to leave it out "
                        "(counted)"
                    ) from None
                self.skipped[split].append(relative)
                continue
            yield order_key(relative), {"image": image, "label": label, "file_name": relative}

    def _download_and_prepare(self, dl_manager: Any, download_config: Any = None) -> None:
        super()._download_and_prepare(dl_manager, download_config)
        skipped = {split: len(names) for split, names in self.skipped.items()}
        self.info.metadata.update(
            {"skipped": skipped, "skipped_files": self.skipped, "source": str(self.listing.root)}
        )
        marker = {
            "kind": "image_folder",
            "name": self.builder_config.name,
            "class_names": list(self.listing.classes),
            "splits": {s: i.num_examples for s, i in self.info.splits.items()},
            "skipped": skipped,
            "source": str(self.listing.root),
        }
        (Path(self.data_dir) / IMAGE_FOLDER_MARKER).write_text(json.dumps(marker, indent=1))


def prepare_image_folder(
    source: str | Path,
    name: str,
    tfds_dir: str | Path,
    *,
    skip_bad: bool = False,
    force: bool = False,
) -> Path:
    """Prepares `source` as data set `name` under the TFDS dir `tfds_dir`; returns its folder.

    Already prepared and not `force`: returns it untouched.
    """
    target = image_folder_path(name, tfds_dir)
    if (target / IMAGE_FOLDER_MARKER).is_file() and not force:
        return target
    builder = NormlabImageFolder(
        dataset=name, source=source, skip_bad=skip_bad, data_dir=str(tfds_dir),
        file_format="array_record",
    )
    mode = tfds.download.GenerateMode
    config = tfds.download.DownloadConfig(
        manual_dir=str(builder.listing.root),
        download_mode=mode.FORCE_REDOWNLOAD if force else mode.REUSE_DATASET_IF_EXISTS,
    )
    builder.download_and_prepare(
        download_dir=str(Path(tfds_dir) / "downloads" / IMAGE_FOLDERS / name),
        download_config=config,
    )
    return target
