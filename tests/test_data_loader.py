"""Loading: `normlab data` commands, split slicing, digits, EpochSampler, the grain pipeline.

MNIST is prepared once per session through `normlab data prepare mnist --from <shared datasets>`
(conftest's `mnist_tfds`; env NORMLAB_SHARED_DATASETS overrides the folder); the grain tests use
digits when it is absent.

The sampler is checked for the properties the training loop relies on, not against itself:
every example at most once per epoch (exactly once without drop_remainder), batches a pure
function of (seed, step) whatever was asked before, per-process slices disjoint and covering the
global batch, a resumed run equal to the uninterrupted one from any step.
"""

import argparse

import numpy as np
import pytest

from normlab.data import command
from normlab.data.datasets import dataset_info, load_arrays
from normlab.data.loader import EpochSampler, TfdsSplit, grain_batches, open_split


def cli(argv):
    parser = argparse.ArgumentParser(prog="normlab")
    command.add_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_prepare_and_info_commands(mnist_tfds, shared_datasets, capsys, tmp_path):
    assert (mnist_tfds / "normlab_mnist" / "1.0.0" / "dataset_info.json").is_file()
    info = ["data", "info", "mnist", "--tfds-dir", str(mnist_tfds)]
    assert cli([*info, "--data-dir", str(shared_datasets)]) == 0
    out = capsys.readouterr().out
    assert "splits: train 60,000, test 10,000" in out
    assert f"prepared: {mnist_tfds}" in out and str(shared_datasets / "mnist") in out
    # `info` on everything shows what is where and prepares nothing.
    everything = ["data", "info", "--tfds-dir", str(tmp_path)]
    assert cli([*everything, "--data-dir", str(shared_datasets)]) == 0
    out = capsys.readouterr().out
    assert "digits: 10 classes, images 8x8x1" in out and "cifar100:" in out
    assert "prepared: no" in out and "test_batch_first1000.npz" in out
    assert (
        cli(["data", "prepare", "mnist", "--from", str(tmp_path), "--tfds-dir", str(tmp_path)]) == 1
    )
    assert "no complete set of mnist files" in capsys.readouterr().err


def test_split_slicing_follows_tfds(mnist_tfds):
    # the test split (10,000) holds every case the slicing has; train[45000:] its size only
    x, y = load_arrays("mnist", "test", tfds_dir=mnist_tfds)
    x_head, y_head = load_arrays("mnist", "test[:7500]", tfds_dir=mnist_tfds)
    x_tail, y_tail = load_arrays("mnist", "test[7500:]", tfds_dir=mnist_tfds)
    assert len(y_head) == 7_500 and len(y_tail) == 2_500
    np.testing.assert_array_equal(np.concatenate([x_head, x_tail]), x)
    np.testing.assert_array_equal(np.concatenate([y_head, y_tail]), y)
    _, y_pct = load_arrays("mnist", "test[90%:]", tfds_dir=mnist_tfds)
    np.testing.assert_array_equal(y_pct, y[9000:])
    assert len(load_arrays("mnist", "train[45000:]", tfds_dir=mnist_tfds)[1]) == 15_000


def test_batched_proto_parsing_matches_tfds_decoding(mnist_tfds):
    src = open_split("mnist", "test[:3000]", tfds_dir=mnist_tfds)
    idx = np.random.default_rng(0).permutation(3000)[:2500]  # unordered, crosses read chunks
    ours = src.read(idx)
    theirs = TfdsSplit(src.source, fast=False).read(idx)  # TFDS's own per-record decoder
    np.testing.assert_array_equal(ours["image"], theirs["image"])
    np.testing.assert_array_equal(ours["label"], theirs["label"])
    assert ours["label"].dtype == theirs["label"].dtype == np.int32


def test_digits_splits_and_values():
    from sklearn.datasets import load_digits

    ref = load_digits()
    x_train, y_train = load_arrays("digits", "train")
    x_test, y_test = load_arrays("digits", "test")
    assert x_train.shape == (1500, 8, 8, 1) and x_test.shape == (297, 8, 8, 1)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int32
    scaled = np.floor(ref.images * 255.0 / 16.0 + 0.5)  # 0..16 → 0..255, round half up
    np.testing.assert_array_equal(x_train[..., 0], scaled[:1500])
    np.testing.assert_array_equal(x_test[..., 0], scaled[1500:])
    np.testing.assert_array_equal(np.concatenate([y_train, y_test]), ref.target)
    assert len(np.unique(x_train)) == 17  # the map is one-to-one: lossless
    _, y_slice = load_arrays("digits", "train[-10:]+test[:5]")
    np.testing.assert_array_equal(y_slice, ref.target[1490:1505])
    info = dataset_info("digits")
    assert info.splits == {"train": 1500, "test": 297} and info.image_shape == (8, 8, 1)
    with pytest.raises(ValueError, match="Unknown split"):
        load_arrays("digits", "validation")


def _epoch(sampler, epoch):
    """The concatenated batches of one epoch, in step order."""
    n = sampler.steps_per_epoch
    return np.concatenate([sampler.batch_indices(epoch * n + i) for i in range(n)])


@pytest.mark.parametrize(("n", "b"), [(103, 10), (64, 8), (7, 7)])
def test_sampler_every_example_once_per_epoch(n, b):
    kept = EpochSampler(n, b, seed=7, drop_remainder=False)
    dropped = EpochSampler(n, b, seed=7)
    assert kept.steps_per_epoch == -(-n // b) and dropped.steps_per_epoch == n // b
    for epoch in range(3):
        # without drop_remainder an epoch is a permutation of the whole split...
        np.testing.assert_array_equal(np.sort(_epoch(kept, epoch)), np.arange(n))
        # ...with it, n // b full batches of distinct examples (the n mod b left out vary)
        order = _epoch(dropped, epoch)
        assert len(order) == (n // b) * b and len(np.unique(order)) == len(order)
        assert order.min() >= 0 and order.max() < n
        assert all(len(dropped.batch_indices(epoch * (n // b) + i)) == b for i in range(n // b))


def test_sampler_shuffles_each_epoch_and_seed_differently():
    a = EpochSampler(103, 10, seed=7)
    epochs = [_epoch(a, e) for e in range(3)]
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    assert not np.array_equal(epochs[0], _epoch(EpochSampler(103, 10, seed=8), 0))
    ordered = EpochSampler(103, 10, seed=7, shuffle=False, drop_remainder=False)
    np.testing.assert_array_equal(_epoch(ordered, 0), np.arange(103))  # evaluation order
    np.testing.assert_array_equal(ordered.batch_indices(10), [100, 101, 102])
    np.testing.assert_array_equal(ordered.batch_indices(11), np.arange(10))


def test_sampler_positions_are_uniform():
    # a uniform random permutation puts each example first with probability 1/n; over 4,000
    # epochs the counts are Binomial(4000, 1/5): mean 800, sd 25.3, so ±130 is over 5 sd
    n, epochs = 5, 4000
    sampler = EpochSampler(n, 1, seed=3)
    firsts = np.bincount([sampler.batch_indices(e * n)[0] for e in range(epochs)], minlength=n)
    assert np.all(np.abs(firsts - epochs / n) < 130), firsts


def test_sampler_is_a_pure_function_of_seed_and_step():
    steps = np.random.default_rng(0).permutation(60)  # epochs visited out of order, back and forth
    run = EpochSampler(103, 10, seed=7)
    sequential = [run.batch_indices(s) for s in range(60)]
    visited = EpochSampler(103, 10, seed=7)
    for s in steps:
        # one long-lived sampler (its epoch cache hit and missed) and a new one agree
        np.testing.assert_array_equal(visited.batch_indices(int(s)), sequential[s])
        np.testing.assert_array_equal(EpochSampler(103, 10, 7).batch_indices(int(s)),
                                      sequential[s])


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_sampler_process_slices_are_disjoint_and_cover_the_batch(drop_remainder):
    n, b = 100, 24
    for p in (1, 2, 4, 8):
        procs = [EpochSampler(n, b, 3, drop_remainder=drop_remainder, process_index=i,
                              process_count=p) for i in range(p)]
        whole = EpochSampler(n, b, 3, drop_remainder=drop_remainder)
        for step in range(2 * whole.steps_per_epoch):  # every batch of 2 epochs, the last too
            local = [s.local_batch_indices(step) for s in procs]
            batch = whole.batch_indices(step)
            sizes = [len(x) for x in local]
            assert sum(sizes) == len(batch) and max(sizes) - min(sizes) <= 1
            if len(batch) == b:
                assert sizes == [b // p] * p
            joined = np.concatenate(local)  # contiguous slices in process order
            assert len(np.unique(joined)) == len(joined)  # disjoint
            np.testing.assert_array_equal(joined, batch)  # covering, in the batch's order


def test_sampler_resumes_at_any_step():
    n, b = 50, 8
    run = EpochSampler(n, b, 3)
    uninterrupted = [run.batch_indices(s) for s in range(30)]
    for start in range(30):
        resumed = EpochSampler(n, b, 3)  # a restarted process that only knows the saved step
        for s in range(start, 30):
            np.testing.assert_array_equal(resumed.batch_indices(s), uninterrupted[s])
    tail = EpochSampler(
        10, 4, 0, shuffle=False, drop_remainder=False, process_index=1, process_count=2
    ).local_batch_indices(2)
    np.testing.assert_array_equal(tail, [9])  # the last batch [8, 9] split across 2 processes


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(num_examples=0, batch_size=1, seed=0), "num_examples=0"),
        (dict(num_examples=10, batch_size=0, seed=0), "batch_size=0"),
        (dict(num_examples=10, batch_size=2, seed=-1), "seed=-1"),
        (dict(num_examples=10, batch_size=20, seed=0), "batch_size=20 > num_examples=10"),
        (dict(num_examples=10, batch_size=3, seed=0, process_count=2), "divisible"),
        (dict(num_examples=10, batch_size=4, seed=0, process_count=0), "process_count=0"),
        (
            dict(num_examples=10, batch_size=4, seed=0, process_index=2, process_count=2),
            "process_index=2, process_count=2",
        ),
    ],
)
def test_sampler_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EpochSampler(**kwargs)


def test_sampler_bad_step():
    with pytest.raises(ValueError, match="step=-1"):
        EpochSampler(10, 2, 0).batch_indices(-1)


@pytest.fixture(scope="module")
def grain_dataset(request, shared_datasets):
    """(name, tfds_dir): MNIST through TFDS when the archives exist, else digits."""
    if (shared_datasets / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        return "mnist", request.getfixturevalue("mnist_tfds")
    return "digits", None


def test_grain_batches_match_the_sampler_and_resume(grain_dataset):
    name, tfds_dir = grain_dataset
    x, y = load_arrays(name, "test", tfds_dir=tfds_dir)
    sampler = EpochSampler(len(y), 128, seed=5)
    full = list(
        grain_batches(
            name, "test", 128, 5, num_steps=sampler.steps_per_epoch + 2, tfds_dir=tfds_dir
        )
    )
    for step, batch in enumerate(full):  # crosses an epoch boundary
        idx = sampler.batch_indices(step)
        assert batch["image"].dtype == np.uint8 and batch["label"].dtype == np.int32
        np.testing.assert_array_equal(batch["image"], x[idx])
        np.testing.assert_array_equal(batch["label"], y[idx])
    start = sampler.steps_per_epoch - 1
    resumed = list(
        grain_batches(name, "test", 128, 5, start_step=start, num_steps=3, tfds_dir=tfds_dir)
    )
    for got, want in zip(resumed, full[start:], strict=True):
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])


def test_grain_per_process_batches_tile_the_global_batch(grain_dataset):
    name, tfds_dir = grain_dataset
    parts = [
        list(
            grain_batches(
                name,
                "train[:500]",
                64,
                1,
                num_steps=3,
                process_index=i,
                process_count=2,
                tfds_dir=tfds_dir,
            )
        )
        for i in range(2)
    ]
    whole = list(grain_batches(name, "train[:500]", 64, 1, num_steps=3, tfds_dir=tfds_dir))
    for step in range(3):
        assert len(parts[0][step]["label"]) == 32
        np.testing.assert_array_equal(
            np.concatenate([parts[0][step]["image"], parts[1][step]["image"]]),
            whole[step]["image"],
        )


def test_grain_transform_is_applied_per_example(grain_dataset):
    name, tfds_dir = grain_dataset

    def flip(example):
        return {"image": example["image"][:, ::-1], "label": example["label"] + 100}

    plain, flipped = (
        next(grain_batches(name, "test", 16, 2, transform=t, tfds_dir=tfds_dir))
        for t in (None, flip)
    )
    np.testing.assert_array_equal(flipped["image"], plain["image"][:, :, ::-1])
    np.testing.assert_array_equal(flipped["label"], plain["label"] + 100)


def test_grain_and_sampler_bad_steps():
    with pytest.raises(ValueError, match="epoch=-1"):
        EpochSampler(10, 2, 0).epoch_permutation(-1)
    with pytest.raises(ValueError, match="start_step=-3"):
        grain_batches("digits", "train", 8, 0, start_step=-3)
    with pytest.raises(ValueError, match="num_steps=0"):
        grain_batches("digits", "train", 8, 0, num_steps=0)
