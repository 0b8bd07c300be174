"""The streamed input path end to end: device vs stream give the same steps (CIFAR-10 layout);
a streamed fake ImageNet trains, is SIGKILLed after a checkpoint, resumes to an uninterrupted
run's exact parameters and evaluates every validation image once."""

import signal
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from cli_runs import cli, wait_for_checkpoint

from normlab.config import apply_overrides, load_config
from normlab.data.datasets import prepare
from normlab.data.fake_cifar import write_fake_cifar10
from normlab.data.fake_imagenet import write_fake_imagenet
from normlab.train.loop import train
from normlab.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
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
    write_fake_cifar10(root / "archives", per_batch=24, test=30)
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


def _imagenet_overrides(root, *overrides) -> list[str]:
    return ["log_every_steps=1", "steps_per_call=1", "dataset=imagenet2012",
            f"tfds_dir={root / 'tfds'}", "data.image_size=32", "batch_size=8",
            "eval_batch_size=4", "evals.eval=validation", "checkpoint_every_steps=3",
            "eval_every_steps=6", "total_steps=12", *overrides]


def _imagenet_config(root, *overrides):
    c = load_config(MLP)
    apply_overrides(c, _imagenet_overrides(root, *overrides))
    return c


def _params(workdir, step):
    tree = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
    return jax.tree.leaves(tree["params"])


@pytest.mark.slow
def test_sigkilled_streamed_imagenet_resumes_exactly_and_counts_every_image(fake_imagenet,
                                                                            tmp_path):
    root, fake = fake_imagenet
    # 40 steps after the first checkpoint: the kill lands mid-run (a step takes milliseconds,
    # the poll 50 ms); one eval, at the end
    steps = ("total_steps=60", "checkpoint_every_steps=20", "eval_every_steps=60",
             "log_every_steps=5")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert train(_imagenet_config(root, *steps), whole, progress=False)["finished"]

    args = ["train", "--workdir", str(cut), "--config", f"{REPO}/{MLP}", "--no-progress",
            *(f"--config.{o}" for o in _imagenet_overrides(root, *steps))]
    victim = cli(args)
    wait_for_checkpoint(cut, victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (cut / "summary.json").exists()  # really killed mid-run
    assert read_metrics(cut)[-1]["step"] < 60
    # the rerun in this process: the same `train` as the CLI's, without a second start-up
    assert train(_imagenet_config(root, *steps), cut, progress=False)["finished"]

    for a, b in zip(_params(whole, 60), _params(cut, 60), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    records = read_metrics(cut)
    assert [r["train_loss"] for r in records] == [r["train_loss"] for r in read_metrics(whole)]
    assert records[-1]["eval_examples"] == len(fake.validation) == 5


def test_encoded_images_refuse_the_device_path_and_a_fitted_preprocessing(fake_imagenet,
                                                                          tmp_path):
    root, _ = fake_imagenet
    with pytest.raises(ValueError, match="data.pipeline='device' needs images of one fixed"):
        train(_imagenet_config(root, "data.pipeline=device"), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="preprocess.name='standardize' is fitted"):
        train(_imagenet_config(root, "preprocess.name=standardize"), tmp_path / "b",
              progress=False)
