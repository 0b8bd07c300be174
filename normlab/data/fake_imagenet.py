"""A tiny fake ImageNet in the original tar layout, for tests and `runlocal` configs (no network).

`write_fake_imagenet(dir)` writes `dir/ILSVRC2012_img_train.tar` (one inner `<wnid>.tar` per
class, the first `classes` WNIDs of TFDS's labels.txt) and `dir/ILSVRC2012_img_val.tar` (flat,
members not in sorted order), a few KB each, with the real archive's quirks: one CMYK JPEG, one
PNG named .JPEG, one grayscale JPEG, every image smaller than 224 px and of varied aspect ratio.

Each image is one flat colour per class (+ a little noise and a gradient), so labels can be
checked from the decoded pixels and a small model learns the classes in a few steps. Validation
images are the val numbers whose official label (TFDS's validation_labels.txt) is one of the
fake classes, so their labels are the real ones.

    fake = write_fake_imagenet(tmp_path, classes=3, train_per_class=4, val=6)
    fake.train["n01440764_0.JPEG"]   # 0, its label;  fake.quirks["cmyk"]: a CMYK file's name
    # then: normlab data prepare imagenet2012 --from tmp_path --no-verify (sizes are not real)
"""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_SIZES = ((64, 48), (50, 90), (120, 40), (80, 80), (33, 57))  # (width, height), < 224


@dataclasses.dataclass(frozen=True)
class FakeImagenet:
    """What was written: {file name: label} per split, the RGB colour of each label, and the
    file names of the quirks ("cmyk", "png", "gray")."""

    folder: Path
    train: dict[str, int]
    validation: dict[str, int]
    colors: dict[int, tuple[int, int, int]]
    quirks: dict[str, str]


def class_color(label: int) -> tuple[int, int, int]:
    """A colour per class, far apart for the first few classes."""
    rng = np.random.default_rng(label)
    return tuple(int(v) for v in rng.integers(30, 226, 3))


def _image(label: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    width, height = size
    pixels = np.empty((height, width, 3), np.float64)
    pixels[:] = class_color(label)
    pixels += np.linspace(-10, 10, width)[None, :, None]  # mild gradient: not a constant image
    pixels += rng.normal(0, 3, pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _encode(pixels: np.ndarray, kind: str) -> bytes:
    image = Image.fromarray(pixels)
    out = io.BytesIO()
    if kind == "cmyk":
        image.convert("CMYK").save(out, format="JPEG", quality=95)
    elif kind == "png":
        image.save(out, format="PNG")
    elif kind == "gray":
        image.convert("L").save(out, format="JPEG", quality=95)
    else:
        image.save(out, format="JPEG", quality=95)
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    tar.addfile(member, io.BytesIO(data))


def write_fake_imagenet(
    folder: str | os.PathLike,
    *,
    classes: int = 2,
    train_per_class: int = 3,
    val: int = 4,
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    seed: int = 0,
) -> FakeImagenet:
    """Writes the two tars into `folder` (created); returns what they hold.

    `classes` (1..1000) first WNIDs, `train_per_class` images each, `val` validation images
    (at most ~50 per class exist), sizes cycling through `sizes` (width, height). The quirks are
    train images 0 (CMYK), 1 (PNG) and 2 (grayscale) of the first class; fewer images give fewer
    quirks.
    """
    from normlab.data.builders.imagenet import TRAIN_TAR, VAL_TAR, validation_wnids, wnids

    if not 1 <= classes <= 1000:
        raise ValueError(f"write_fake_imagenet: classes must be in 1..1000, got {classes}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = wnids()[:classes]
    kinds = dict(enumerate(("cmyk", "png", "gray")))
    train, quirks, k = {}, {}, 0
    with tarfile.open(folder / TRAIN_TAR, "w") as outer:
        for label, wnid in enumerate(names):
            inner_bytes = io.BytesIO()
            with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
                for i in range(train_per_class):
                    name = f"{wnid}_{i}.JPEG"
                    kind = kinds.get(i, "rgb") if label == 0 else "rgb"
                    if kind != "rgb":
                        quirks[kind] = name
                    pixels = _image(label, sizes[k % len(sizes)], rng)
                    _add(inner, name, _encode(pixels, kind))
                    train[name] = label
                    k += 1
            _add(outer, f"{wnid}.tar", inner_bytes.getvalue())
    label_of = {wnid: i for i, wnid in enumerate(names)}
    numbers = [n + 1 for n, wnid in enumerate(validation_wnids()) if wnid in label_of][:val]
    if len(numbers) < val:
        raise ValueError(
            f"write_fake_imagenet: only {len(numbers)} validation images belong to the first "
            f"{classes} classes, asked for {val}"
        )
    validation = {}
    with tarfile.open(folder / VAL_TAR, "w") as tar:
        for n in rng.permutation(numbers).tolist():  # the real tar is not in sorted order either
            name = f"ILSVRC2012_val_{n:08d}.JPEG"
            label = label_of[validation_wnids()[n - 1]]
            _add(tar, name, _encode(_image(label, sizes[k % len(sizes)], rng), "rgb"))
            validation[name] = label
            k += 1
    colors = {label: class_color(label) for label in range(classes)}
    return FakeImagenet(folder, train, validation, colors, quirks)
