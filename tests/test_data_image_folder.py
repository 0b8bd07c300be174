"""`normlab data prepare image_folder`: DIR/<split>/<class>/<image> → a named data set found later
by name (dataset_info, open_split); original bytes kept for JPEG and PNG; a broken file is named
in the error or skipped and counted with --skip-bad; splits with different classes are refused.
"""

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from normlab import cli
from normlab.data.builders.image_bytes import BadImageError
from normlab.data.builders.image_folder import order_key, prepare_image_folder
from normlab.data.catalog import IMAGE_FOLDER_MARKER
from normlab.data.datasets import dataset_info, open_split, prepared_dir, tfds_source

CLASSES = ("cat", "ant", "bee")  # not sorted on purpose: labels follow the sorted names
COLORS = {"ant": (200, 40, 40), "bee": (40, 200, 40), "cat": (40, 40, 200)}


def _encode(pixels: np.ndarray, fmt: str, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, format=fmt, quality=95)
    return out.getvalue()


def _write_tree(root, rng) -> dict[str, bytes]:
    """train: 3 images per class, validation: 2; one RGB PNG, one RGBA PNG, one grayscale JPEG."""
    files = {}
    for split, n in (("train", 3), ("validation", 2)):
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
                pixels = np.clip(rng.normal(COLORS[cls], 4, (h, w, 3)), 0, 255).astype(np.uint8)
                fmt, mode, ext = "JPEG", "RGB", "jpg"
                if (split, cls, i) == ("train", "ant", 0):
                    fmt, ext = "PNG", "png"
                elif (split, cls, i) == ("train", "bee", 1):
                    fmt, mode, ext = "PNG", "RGBA", "png"
                elif (split, cls, i) == ("validation", "cat", 0):
                    mode = "L"
                relative = f"{split}/{cls}/img{i}.{ext}"
                files[relative] = _encode(pixels, fmt, mode)
                (root / relative).write_bytes(files[relative])
    (root / "train" / "ant" / ".DS_Store").write_bytes(b"\0junk")  # hidden: ignored
    (root / "README.txt").write_text("not a split")  # top-level file: ignored
    return files


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return root, _write_tree(root, np.random.default_rng(0))


@pytest.fixture(scope="module")
def prepared(tree, tmp_path_factory):
    root, files = tree
    tfds_dir = tmp_path_factory.mktemp("tfds")
    argv = ["data", "prepare", "image_folder", "--from", str(root), "--name", "toy"]
    assert cli.main([*argv, "--tfds-dir", str(tfds_dir)]) == 0
    return tfds_dir


def test_round_trip_by_name(tree, prepared, monkeypatch):
    root, files = tree
    monkeypatch.setenv("NORMLAB_TFDS_DIR", str(prepared))  # found by name alone, as a config does
    info = dataset_info("toy")
    assert info.num_classes == 3 and info.splits == {"train": 9, "validation": 6}
    names = sorted(CLASSES)
    source = tfds_source("toy", "train")
    assert source.dataset_info.features["label"].names == names
    for split, n in info.splits.items():
        records = [tfds_source("toy", split)[i] for i in range(n)]
        images, labels = open_split("toy", split).read_encoded(np.arange(n))
        for record, data, label in zip(records, images, labels, strict=True):
            relative = record["file_name"].decode()
            cls = relative.split("/")[1]
            assert label == record["label"] == names.index(cls)
            decoded = record["image"]
            assert decoded.dtype == np.uint8 and decoded.shape[2] == 3
            expected = np.array(COLORS[cls], np.float64)
            if relative == "validation/cat/img0.jpg":  # grayscale: ITU-R 601 luma, 3 channels
                expected = np.full(3, expected @ [0.299, 0.587, 0.114])
            np.testing.assert_allclose(decoded.reshape(-1, 3).mean(0), expected, atol=6)
            if relative == "train/bee/img1.png":  # RGBA → re-encoded as an RGB PNG
                assert data != files[relative]
                with Image.open(io.BytesIO(data)) as image:
                    assert (image.format, image.mode) == ("PNG", "RGB")
            else:  # JPEG (grayscale too) and RGB PNG: the original file's bytes
                assert data == files[relative]
        # the documented seeded order, not the class-sorted listing
        relatives = [r["file_name"].decode() for r in records]
        assert relatives == sorted(relatives, key=order_key)
        assert relatives != sorted(relatives)


def test_broken_file_is_named_or_skipped_and_counted(tree, tmp_path, capsys):
    root = tmp_path / "images"
    shutil.copytree(tree[0], root)
    broken = root / "train" / "cat" / "broken.jpg"
    broken.write_bytes(_encode(np.zeros((30, 30, 3), np.uint8), "JPEG")[:200])  # truncated
    with pytest.raises(BadImageError, match=rf"{broken}: not a readable image .*--skip-bad"):
        prepare_image_folder(root, "toy", tmp_path / "tfds")
    assert prepared_dir("toy", tmp_path / "tfds") is None
    argv = ["data", "prepare", "image_folder", "--from", str(root), "--name", "toy"]
    assert cli.main([*argv, "--tfds-dir", str(tmp_path / "tfds")]) == 1
    assert str(broken) in capsys.readouterr().err
    assert cli.main([*argv, "--tfds-dir", str(tmp_path / "tfds"), "--skip-bad"]) == 0
    assert "1 unreadable files skipped" in capsys.readouterr().out
    folder = prepared_dir("toy", tmp_path / "tfds")
    marker = json.loads((folder / IMAGE_FOLDER_MARKER).read_text())
    assert marker["skipped"] == {"train": 1, "validation": 0}
    info = tfds_source("toy", "train", tfds_dir=tmp_path / "tfds").dataset_info
    assert info.metadata["skipped_files"]["train"] == ["train/cat/broken.jpg"]
    assert dataset_info("toy", tfds_dir=tmp_path / "tfds").splits["train"] == 9


def test_splits_with_different_classes_are_refused(tree, tmp_path):
    root = tmp_path / "images"
    shutil.copytree(tree[0], root)
    shutil.rmtree(root / "validation" / "bee")
    (root / "validation" / "dog").mkdir()
    with pytest.raises(ValueError, match=r"split 'validation' has different classes from "
                       r"'train': missing \['bee'\], extra \['dog'\]"):
        prepare_image_folder(root, "toy", tmp_path / "tfds")
    assert not (tmp_path / "tfds").exists()
    with pytest.raises(ValueError, match="must match"):
        prepare_image_folder(tree[0], "mnist", tmp_path / "tfds")
