"""ImageNet without TensorFlow: a fake ILSVRC2012 in the original tar layout (with the real
archive's quirks) → prepare → every record read back through `tfds.data_source` and the fast
`read_encoded` path; labels from TFDS's label files; the seeded train order (minival); an
interrupted prepare; the size check; the on-disk bucket sort and the progress line.
"""

import io
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from normlab.data import datasets
from normlab.data.builders import imagenet
from normlab.data.builders.spill import Spill
from normlab.data.catalog import CATALOG
from normlab.data.datasets import ChecksumError, dataset_info, open_split, prepare, tfds_source
from normlab.data.fake_imagenet import class_color, write_fake_imagenet
from normlab.data.progress import Progress, format_eta

CLASSES, PER_CLASS, VAL = 3, 8, 6


def _labels_file(name: str) -> list[str]:
    import tensorflow_datasets as tfds

    return (tfds.core.tfds_path("datasets/imagenet2012") / name).read_text().split()


def _tar_images(path, nested: bool) -> dict[str, bytes]:
    """{file name: bytes} read with tarfile's random-access mode (not the builder's stream)."""
    found = {}
    where = {"fileobj": path} if isinstance(path, io.BytesIO) else {"name": path}
    with tarfile.open(**where) as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()
            if nested:
                found.update(_tar_images(io.BytesIO(data), nested=False))
            else:
                found[member.name] = data
    return found


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return write_fake_imagenet(
        tmp_path_factory.mktemp("raw"), classes=CLASSES, train_per_class=PER_CLASS, val=VAL
    )


@pytest.fixture(scope="module")
def tfds_dir(fake, tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    prepare("imagenet2012", source=fake.folder, tfds_dir=root, verify=False, quiet=True)
    return root


def _records(split, tfds_dir):
    source = tfds_source("imagenet2012", split, tfds_dir=tfds_dir)
    return [source[i] for i in range(len(source))]


def test_every_record_read_with_the_label_of_tfds_label_files(fake, tfds_dir):
    wnids, val_wnids = _labels_file("labels.txt"), _labels_file("validation_labels.txt")
    train, val = _records("train", tfds_dir), _records("validation", tfds_dir)
    assert len(train) == CLASSES * PER_CLASS and len(val) == VAL
    train_names = {r["file_name"].decode() for r in train}
    assert train_names == set(fake.train)
    for r in train:  # train: the WNID's position in labels.txt
        assert r["label"] == wnids.index(r["file_name"].decode().split("_")[0])
    for r in val:  # validation: line n of validation_labels.txt for ILSVRC2012_val_<n>
        n = int(r["file_name"].decode()[-13:-5])
        assert r["label"] == wnids.index(val_wnids[n - 1]) == fake.validation[
            r["file_name"].decode()]
    for r in train + val:  # every image (quirks included) decodes to RGB in its class colour
        image = r["image"]
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert min(image.shape[:2]) < 224
        name = r["file_name"].decode()
        color = np.array(class_color(int(r["label"])), np.float64)
        if name == fake.quirks["gray"]:  # ITU-R 601 luma, as JPEG grayscale conversion uses
            color = np.full(3, color @ [0.299, 0.587, 0.114])
            assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
        np.testing.assert_allclose(image.reshape(-1, 3).mean(0), color, atol=6)
    info = dataset_info("imagenet2012", tfds_dir=tfds_dir)
    assert info.num_classes == 1000 and info.image_shape == (None, None, 3)
    assert info.splits == {"train": CLASSES * PER_CLASS, "validation": VAL}
    assert "24 of 1,281,167" in info.partial_splits["train"]


def test_read_encoded_gives_the_original_jpeg_bytes(fake, tfds_dir):
    originals = _tar_images(fake.folder / imagenet.TRAIN_TAR, nested=True)
    originals.update(_tar_images(fake.folder / imagenet.VAL_TAR, nested=False))
    for split in ("train", "validation"):
        names = [r["file_name"].decode() for r in _records(split, tfds_dir)]
        split_reader = open_split("imagenet2012", split, tfds_dir=tfds_dir)
        images, labels = split_reader.read_encoded(np.arange(len(split_reader))[::-1])
        images, labels = images[::-1], labels[::-1]
        assert labels.dtype == np.int32
        expected = {**fake.train, **fake.validation}
        assert labels.tolist() == [expected[n] for n in names]
        for name, data in zip(names, images, strict=True):
            if name in (fake.quirks["cmyk"], fake.quirks["png"]):
                assert data != originals[name] and data[:2] == b"\xff\xd8"  # now a JPEG
                with Image.open(io.BytesIO(data)) as image:
                    assert (image.format, image.mode) == ("JPEG", "RGB")
            else:
                assert data == originals[name]  # grayscale included: kept as it is


def test_read_encoded_refuses_fixed_shape_pixels():
    from normlab.data.reader import TfdsSplit

    class Tensor:
        shape = (8, 8, 1)

    class Source:
        dataset_info = type("Info", (), {"supervised_keys": None, "features": {"image": Tensor()}})

    with pytest.raises(ValueError, match=r"a Tensor of shape \(8, 8, 1\), not encoded images"):
        TfdsSplit(Source(), fast=True).read_encoded([0])


def test_train_order_is_the_seeded_permutation_and_minival_spreads_classes(fake, tfds_dir):
    train = _records("train", tfds_dir)
    names = [r["file_name"].decode() for r in train]
    assert names == sorted(fake.train, key=imagenet.train_order_key)  # the documented order
    labels = [int(r["label"]) for r in train]
    assert labels != sorted(labels)
    holdout = tfds_source("imagenet2012", "train[75%:]", tfds_dir=tfds_dir)
    held_labels = {int(holdout[i]["label"]) for i in range(len(holdout))}
    assert len(holdout) == 6 and len(held_labels) >= 2  # not the last class's tail
    val_names = [r["file_name"].decode() for r in _records("validation", tfds_dir)]
    assert val_names == sorted(fake.validation)  # official order, though the tar was shuffled
    assert list(_tar_images(fake.folder / imagenet.VAL_TAR, nested=False)) != val_names


def test_interrupted_prepare_leaves_nothing_prepared_and_a_rerun_succeeds(
    fake, tmp_path, monkeypatch
):
    calls = []

    def failing(path, member, data):
        calls.append(member)
        if len(calls) == 5:
            raise RuntimeError("simulated interruption")
        return data

    monkeypatch.setattr(imagenet, "_image", failing)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        prepare("imagenet2012", source=fake.folder, tfds_dir=tmp_path, verify=False, quiet=True)
    assert datasets.prepared_dir("imagenet2012", tmp_path) is None
    assert not list(tmp_path.rglob("dataset_info.json"))
    assert not list(tmp_path.rglob("*.array_record*"))
    # what a SIGKILL leaves: a temp folder, never read, removed by the next prepare
    stale = tmp_path / "normlab_imagenet2012" / "incomplete.KILLED_1.0.0"
    stale.mkdir(parents=True)
    (stale / "dataset_info.json").write_text("{}")
    assert datasets.prepared_dir("imagenet2012", tmp_path) is None
    monkeypatch.undo()
    folder = prepare(
        "imagenet2012", source=fake.folder, tfds_dir=tmp_path, verify=False, quiet=True
    )
    assert folder == datasets.prepared_dir("imagenet2012", tmp_path)
    assert not stale.exists()
    assert dataset_info("imagenet2012", tfds_dir=tmp_path).splits["train"] == CLASSES * PER_CLASS


def test_a_too_small_archive_is_refused_before_any_work(fake, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(fake.folder, raw)
    train_tar = raw / imagenet.TRAIN_TAR
    size = train_tar.stat().st_size
    with pytest.raises(ChecksumError, match=r"ILSVRC2012_img_train.tar: .* bytes, smaller than "
                       r"the official 147,897,477,120: a truncated copy"):
        prepare("imagenet2012", source=raw, tfds_dir=tmp_path / "tfds", quiet=True)
    assert not (tmp_path / "tfds").exists()
    assert size < CATALOG["imagenet2012"].splits["train"]  # the fake is not the real tar


def test_spill_returns_every_record_in_key_order(rng):
    n, space = 500, 1000
    keys = rng.integers(0, space, n)
    ties = [f"{i % 7}".encode() for i in range(n)]
    records = [rng.bytes(int(rng.integers(0, 40))) for _ in range(n)]
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        spill = Spill(folder, num_buckets=6, key_space=space, buffer_bytes=512)
        for k, t, r in zip(keys, ties, records, strict=True):
            spill.add(int(k), t, r)
        got = [rec for b in spill.nonempty() for rec in spill.take(b)]
    order = sorted(range(n), key=lambda i: (keys[i], ties[i]))
    assert got == [records[i] for i in order]
    with pytest.raises(ValueError, match="outside"):
        Spill(folder, 2, space).add(space, b"", b"")


def test_progress_line_rate_and_eta():
    now = [0.0]
    stream = io.StringIO()
    bar = Progress("job", total=100, unit="images", stream=stream, clock=lambda: now[0])
    now[0] = 5.0
    bar.update(25)  # 25 in 5 s: 5/s, 75 left → 15 s
    assert bar.line() == "job: 25 images/100 images (25%), 5 images/s, ETA 0:00:15"
    assert format_eta(3725) == "1:02:05"
    now[0] = 20.0
    bar.update(75)
    bar.close()
    assert stream.getvalue().splitlines()[-1].endswith("(100%), 5 images/s, done in 0:00:20")


def test_cli_prepare_prints_the_partial_splits(fake, tmp_path, capsys):
    from normlab import cli

    argv = ["data", "prepare", "imagenet2012", "--from", str(fake.folder), "--no-verify"]
    assert cli.main([*argv, "--tfds-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "imagenet2012: 1000 classes, images ?x?x3" in out
    assert "PARTIAL train: 24 of 1,281,167 official train images" in out
    assert cli.main([*argv, "--tfds-dir", str(tmp_path), "--name", "x"]) == 1
    assert "--name and --skip-bad are for image_folder" in capsys.readouterr().err
