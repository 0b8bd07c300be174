"""The streamed input path end to end: device vs stream give the same steps (CIFAR-10 layout),
a streamed fake ImageNet trains, resumes exactly and evaluates every validation image once."""

import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from normlab.config import apply_overrides, load_config
from normlab.data.datasets import prepare
from normlab.data.fake_imagenet import write_fake_imagenet
from normlab.train.loop import train
from normlab.train.metrics import read_metrics

MLP = "configs/mnist_mlp.py:runlocal"


def _config(*overrides):
    c = load_config(MLP)
    apply_overrides(c, ["log_every_steps=1", "steps_per_call=1", *overrides])
    return c


@pytest.fixture(scope="module")
def cifar10_dirs(tmp_path_factory):
    """A small CIFAR-10 (random pixels) in the .npz layout of ../shared/datasets/cifar10,
    prepared by normlab's own builder."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "archives" / "cifar10"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}", 24) for i in range(1, 6)), ("test_batch_first1000", 30)]:
        np.savez_compressed(folder / f"{name}.npz",
                            data=rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                            labels=rng.integers(0, 10, n).astype(np.uint8))
    prepare("cifar10", source=root / "archives", tfds_dir=root / "tfds", verify=False,
            quiet=True)
    return root


@pytest.mark.slow
def test_device_and_stream_give_the_same_steps(cifar10_dirs, tmp_path):
    # same indices, same augmentation keys, same preprocessing: the same per-step loss
    common = ("dataset=cifar10", f"tfds_dir={cifar10_dirs / 'tfds'}", "total_steps=12",
              "batch_size=16", "eval_batch_size=8", "eval_every_steps=6",
              "checkpoint_every_steps=6", "preprocess.name=standardize")
    records = {}
    for pipeline in ("device", "stream"):
        c = _config(*common, f"data.pipeline={pipeline}")
        c.augment = {"flip": {}, "crop": {"pad": 4}}
        train(c, tmp_path / pipeline, progress=False)
        records[pipeline] = read_metrics(tmp_path / pipeline)
    device, stream = records["device"], records["stream"]
    assert [r["step"] for r in device] == [r["step"] for r in stream] == list(range(1, 13))
    # the two chunk programs differ (a gather on the device vs batches sent in), so XLA may sum
    # in another order: float32 rounding (~1e-7 relative). Other rows, or other crops/flips,
    # move a step's loss by ~1e-1.
    np.testing.assert_allclose([r["train_loss"] for r in device],
                               [r["train_loss"] for r in stream], rtol=1e-6)
    assert device[0]["train_loss"] == stream[0]["train_loss"]  # same init, same first batch
    assert "input_wait_s" in stream[-1] and "input_wait_s" not in device[-1]
    for r in (device[-1], stream[-1]):
        assert r["eval_examples"] == 30  # 30 test images, batches of 8: each counted once
    assert device[-1]["eval_accuracy"] == stream[-1]["eval_accuracy"]


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    fake = write_fake_imagenet(root / "archives", classes=3, train_per_class=6, val=5)
    prepare("imagenet2012", source=root / "archives", tfds_dir=root / "tfds", verify=False,
            quiet=True)
    return root, fake


def _imagenet_config(root, *overrides):
    return _config("dataset=imagenet2012", f"tfds_dir={root / 'tfds'}", "data.image_size=32",
                   "batch_size=8", "eval_batch_size=4", "evals.eval=validation",
                   "checkpoint_every_steps=3", "eval_every_steps=6", "total_steps=12",
                   *overrides)


def _params(workdir, step):
    tree = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
    return jax.tree.leaves(tree["params"])


@pytest.mark.slow
def test_streamed_imagenet_resumes_exactly_and_counts_every_image(fake_imagenet, tmp_path):
    root, fake = fake_imagenet
    whole = tmp_path / "whole"
    summary = train(_imagenet_config(root), whole, progress=False)
    assert summary["finished"]
    last = read_metrics(whole)[-1]
    assert last["eval_examples"] == len(fake.validation) == 5
    assert np.isfinite(last["train_loss"])
    # a run killed right after its checkpoint at step 6: later checkpoints and records gone
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    for step in (9, 12):
        shutil.rmtree(cut / "checkpoints" / str(step))
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    (cut / "metrics.jsonl").write_text(
        "".join(line + "\n" for line in lines if json.loads(line)["step"] <= 6))
    (cut / "summary.json").unlink()
    train(_imagenet_config(root), cut, progress=False)
    for a, b in zip(_params(whole, 12), _params(cut, 12), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [r["train_loss"] for r in read_metrics(cut)] == [
        r["train_loss"] for r in read_metrics(whole)]


def test_encoded_images_refuse_the_device_path_and_a_fitted_preprocessing(fake_imagenet,
                                                                          tmp_path):
    root, _ = fake_imagenet
    with pytest.raises(ValueError, match="data.pipeline='device' needs images of one fixed"):
        train(_imagenet_config(root, "data.pipeline=device"), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="preprocess.name='standardize' is fitted"):
        train(_imagenet_config(root, "preprocess.name=standardize"), tmp_path / "b",
              progress=False)
