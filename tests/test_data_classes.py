"""Class subsets (`config.classes`, `normlab.data.subset`): the examples of the listed classes,
in the split's order, relabelled 0..K-1 in the list's order, the split string slicing the
subset; the references are NumPy selections of the whole split. Then through the training
system: a K-class head, train and eval splits both restricted, a transfer from one subset to
another, and the errors for a bad class list."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from normlab.config import apply_overrides, load_config
from normlab.data.datasets import digits_split, load_arrays, open_split
from normlab.data.subset import parse_classes
from normlab.train.loop import train
from normlab.train.saved import load_saved
from normlab.train.validate import validate

REPO = Path(__file__).resolve().parents[1]


def _reference(split: str, classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The subset from the math: rows of the whole split with a label in `classes`, in order,
    label classes[i] → i."""
    x, y = digits_split(split)
    keep = np.flatnonzero(np.isin(y, classes))
    new = {c: i for i, c in enumerate(classes)}
    return x[keep], np.array([new[int(v)] for v in y[keep]], np.int32)


@pytest.mark.parametrize("classes", [(7, 2, 5), (0, 1), tuple(range(10))])
def test_subset_keeps_the_classes_in_order_and_relabels_them(classes):
    x, y = load_arrays("digits", "train", classes=classes)
    ref_x, ref_y = _reference("train", classes)
    np.testing.assert_array_equal(x, ref_x)
    np.testing.assert_array_equal(y, ref_y)
    assert y.dtype == np.int32 and set(y.tolist()) == set(range(len(classes)))


def test_split_strings_slice_the_subset():
    classes = (9, 4, 1)
    ref_x, ref_y = _reference("train", classes)
    for split, rows in (("train[:100]", slice(0, 100)), ("train[100:]", slice(100, None)),
                        ("train[:50%]", slice(0, round(len(ref_y) / 2))),
                        ("train[-7:]", slice(len(ref_y) - 7, None))):
        x, y = load_arrays("digits", split, classes=classes)
        np.testing.assert_array_equal(x, ref_x[rows], err_msg=split)
        np.testing.assert_array_equal(y, ref_y[rows], err_msg=split)
    assert len(load_arrays("digits", "train[:100]", classes=classes)[1]) == 100
    test_x, test_y = _reference("test", classes)
    np.testing.assert_array_equal(load_arrays("digits", "test", classes=classes)[1], test_y)


def test_reader_reads_any_rows_and_transforms_see_the_new_labels():
    classes = (3, 8)
    src = open_split("digits", "train", classes=classes)
    ref_x, ref_y = _reference("train", classes)
    assert len(src) == len(ref_y) and src.image_shape == (8, 8, 1) and not src.encoded
    rows = np.array([5, 0, len(ref_y) - 1, 5])
    batch = src.read(rows)
    np.testing.assert_array_equal(batch["image"], ref_x[rows])
    np.testing.assert_array_equal(batch["label"], ref_y[rows])
    seen = src.read(rows, transform=lambda e: {**e, "label": np.int32(10 * e["label"])})
    np.testing.assert_array_equal(seen["label"], 10 * ref_y[rows])


@pytest.mark.parametrize("spec, match", [
    ("a,b", "each entry must be a class index"),
    ("1,-2", "each entry must be a class index"),
    ("1,1", "names a class twice"),
    ("3", "at least 2 classes"),
    (5, "must be a string"),
])
def test_bad_class_lists_are_clear_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_classes(spec)


def test_classes_outside_the_data_set_and_concatenations_are_refused():
    with pytest.raises(ValueError, match=r"digits has classes 0\.\.9, not \[10\]"):
        load_arrays("digits", "train", classes=(0, 10))
    with pytest.raises(ValueError, match="not a concatenation"):
        load_arrays("digits", "train[:10]+test", classes=(0, 1))
    assert parse_classes("") == () and parse_classes(" 5, 6 ") == (5, 6)


def test_config_classes_is_validated_with_its_field(digits_config):
    with pytest.raises(ValueError, match="classes='2,2' names a class twice"):
        validate(digits_config("classes=2,2"))


def _relu_net(*overrides: str):
    """E12's ReLU MLP on digits without BN (100 steps: too few for BN's running statistics,
    which eval and a frozen backbone use, to settle)."""
    config = load_config(f"{REPO}/configs/e12_ensembles_transfer.py:dataset=digits,steps=100")
    apply_overrides(config, ["model.norm=none", "batch_size=32", *overrides])
    return config


def test_training_on_a_subset_and_transfer_to_another(tmp_path):
    """A 3-class source on digits 0-2, then its frozen backbone under a new 3-class head on
    digits 7, 8, 9 trained on the first 64 of their images: both heads are 3 wide, each run's
    train and eval splits hold only its classes (the eval counts are the subsets' sizes), and
    both learn their own labels (far above chance on their test digits); the streamed input
    path trains the source alike."""
    source = tmp_path / "source"
    train(_relu_net("classes=0,1,2"), source, progress=False)
    target = tmp_path / "target"
    train(_relu_net("classes=7,8,9", "train_split=train[:64]", f"init_from.workdir={source}",
                    "init_from.freeze_backbone=True"), target, progress=False)
    for workdir, classes in ((source, (0, 1, 2)), (target, (7, 8, 9))):
        final = json.loads((workdir / "summary.json").read_text())["final"]
        assert final["test_examples"] == len(_reference("test", classes)[1])
        assert final["test_accuracy"] > 0.6, final  # 3 classes: chance is 1/3
    # the streamed input path reads the same subset: the same run, loss for loss
    streamed = tmp_path / "streamed"
    train(_relu_net("classes=0,1,2", "data.pipeline=stream"), streamed, progress=False)
    losses = [[r["train_loss"] for r in map(json.loads, (w / "metrics.jsonl").open())
               if "train_loss" in r] for w in (source, streamed)]
    assert len(losses[0]) >= 1
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    heads = [load_saved(w).state.params["head"] for w in (source, target)]
    assert all(jax.tree.leaves(h)[0].shape[-1] == 3 for h in heads)
    with pytest.raises(ValueError, match=r"digits has classes 0\.\.9, not \[12\]"):
        train(_relu_net("classes=0,12"), tmp_path / "bad", progress=False)
