"""The host side of the streaming pipeline (normlab.data.stream): the rows of every step are
EpochSampler's, in its order, for 1 and 2 (simulated) processes; augmentation keys depend on
(seed, step, global slot) only; prefetch runs ahead in order and restarts on an out-of-order
request; evaluation counts every example exactly once with the same batch count everywhere;
close() leaves no thread."""

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from normlab.data.loader import ArraySplit, EpochSampler
from normlab.data.stream import THREAD_PREFIX, StreamSource, array_read, eval_batches
from normlab.data.transforms import EvalTransform, TrainTransform, example_rng

N = 37


def _indexed_images(n):
    """Image i holds i in its pixels (i mod 256, i // 256): a row names the example it came from."""
    images = np.zeros((n, 2, 3, 1), np.uint8)
    images[:, 0] = (np.arange(n) % 256)[:, None, None]
    images[:, 1] = (np.arange(n) // 256)[:, None, None]
    return images


def _index_of(x):
    return x[..., 0, 0, 0].astype(np.int64) + 256 * x[..., 1, 0, 0].astype(np.int64)


@pytest.fixture(scope="module")
def arrays():
    return ArraySplit(_indexed_images(N), (np.arange(N) * 7 % 10).astype(np.int32))


@pytest.fixture(scope="module")
def jpegs():
    """Encoded images of varying sizes (bytes) and their labels: a stand-in for read_encoded."""
    rng = np.random.default_rng(0)
    blobs = []
    for i in range(12):
        image = rng.integers(0, 256, (14 + i, 20 - i % 5, 3), np.uint8)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())
    return blobs, np.arange(12, dtype=np.int32) + 100


def _read_jpegs(jpegs):
    blobs, labels = jpegs
    return lambda indices: ([blobs[i] for i in indices], labels[np.asarray(indices)])


def _no_stream_threads():
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]:
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("process_count", [1, 2])
def test_rows_are_epoch_samplers_for_every_step_and_process(arrays, process_count):
    k, batch = 3, 8
    steps = range(0, 4 * k, k)  # 12 steps: past the end of epoch 0 (37 // 8 = 4 steps)
    global_rows = {}
    for p in range(process_count):
        sampler = EpochSampler(N, batch, seed=5, process_index=p, process_count=process_count)
        with StreamSource(array_read(arrays), sampler, prefetch=2) as source:
            for start in steps:
                x, labels = source.local_batches(start, k)
                assert x.shape == (k, batch // process_count, 2, 3, 1) and x.dtype == np.uint8
                assert labels.shape == (k, batch // process_count) and labels.dtype == np.int32
                for i in range(k):
                    expected = sampler.local_batch_indices(start + i)
                    np.testing.assert_array_equal(_index_of(x[i]), expected)
                    np.testing.assert_array_equal(labels[i], arrays.labels[expected])
                    global_rows.setdefault(start + i, []).append(_index_of(x[i]))
    reference = EpochSampler(N, batch, seed=5)
    for step, rows in global_rows.items():
        np.testing.assert_array_equal(np.concatenate(rows), reference.batch_indices(step))


def test_augmentation_keys_are_seed_step_and_global_slot(jpegs):
    transform = TrainTransform(8)
    blobs, labels = jpegs
    by_process = []
    for p in range(2):
        sampler = EpochSampler(12, 4, seed=1, process_index=p, process_count=2)
        with StreamSource(_read_jpegs(jpegs), sampler, transform=transform, seed=9,
                          num_threads=2) as source:
            x, y = source.local_batches(4, 2)
        assert x.shape == (2, 2, 8, 8, 3)
        for i, step in enumerate((4, 5)):
            for j, index in enumerate(sampler.local_batch_indices(step)):
                expected = transform(blobs[index], example_rng(9, step, 2 * p + j))
                np.testing.assert_array_equal(x[i, j], expected)
                assert y[i, j] == labels[index]
        by_process.append(x)
    with StreamSource(_read_jpegs(jpegs), EpochSampler(12, 4, seed=1), transform=transform,
                      seed=9) as source:
        x, _ = source.local_batches(4, 2)
    np.testing.assert_array_equal(x, np.concatenate(by_process, axis=1))  # 1 process = 2


class _LoggedRead:
    """array_read that records which step each read was for (reads happen on the prefetch
    thread, so the log shows how far ahead it runs)."""

    def __init__(self, arrays, sampler, steps):
        self.read = array_read(arrays)
        self.step_of = {tuple(sampler.local_batch_indices(s)): s for s in steps}
        self.steps: list[int] = []

    def __call__(self, indices):
        if len(indices) > 1:  # StreamSource's one-example read of the shape is not a step
            self.steps.append(self.step_of[tuple(indices)])
        return self.read(indices)


def test_prefetch_runs_ahead_in_order_and_restarts_out_of_order(arrays):
    sampler = EpochSampler(N, 4, seed=2)  # 9 steps per epoch: distinct batches within 0..8
    read = _LoggedRead(arrays, sampler, range(30))
    k = 2
    with StreamSource(read, sampler, prefetch=2) as source:
        for start in (0, 2):
            x, _ = source.local_batches(start, k)
            np.testing.assert_array_equal(_index_of(x), [sampler.local_batch_indices(start + i)
                                                         for i in range(k)])
        deadline = time.monotonic() + 5  # two chunks queued + one built behind them: step 9
        while len(read.steps) < 2 * k + 3 * k and time.monotonic() < deadline:
            time.sleep(0.01)
        assert read.steps[: 2 * k + 2 * k] == list(range(8))  # in order, ahead of the requests
        del read.steps[:]
        x, _ = source.local_batches(1, 3)  # a resume: another step and another k
        np.testing.assert_array_equal(_index_of(x), [sampler.local_batch_indices(s)
                                                     for s in (1, 2, 3)])
        assert read.steps[:3] == [1, 2, 3]
        x, _ = source.local_batches(4, 3)  # in order again
        np.testing.assert_array_equal(_index_of(x), [sampler.local_batch_indices(s)
                                                     for s in (4, 5, 6)])
        assert read.steps[:6] == [1, 2, 3, 4, 5, 6]
    assert _no_stream_threads()


def test_errors_are_raised_not_hung_and_close_leaves_no_thread(jpegs):
    blobs, labels = jpegs

    def read(indices):
        return [b"not an image" if i == 3 else blobs[i] for i in indices], labels[indices]

    source = StreamSource(read, EpochSampler(12, 12, seed=0, shuffle=False),
                          transform=TrainTransform(8), num_threads=2)
    with pytest.raises(OSError, match="cannot identify image file"):
        source.local_batches(0, 1)
    assert [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]
    source.close()
    source.close()
    assert _no_stream_threads()
    with pytest.raises(RuntimeError, match="after close"):
        source.local_batches(0, 1)
    with pytest.raises(ValueError, match="drop_remainder=True"):
        StreamSource(read, EpochSampler(12, 5, seed=0, drop_remainder=False))


@pytest.mark.parametrize("batch,process_count", [(6, 2), (8, 4), (40, 1)])
def test_eval_covers_every_example_once(arrays, batch, process_count):
    seen, counts = [], []
    for p in range(process_count):
        batches = list(eval_batches(array_read(arrays), N, batch, process_index=p,
                                    process_count=process_count, prefetch=2))
        counts.append(len(batches))
        for x, labels, mask in batches:
            b = batch // process_count
            assert x.shape == (b, 2, 3, 1) and labels.shape == mask.shape == (b,)
            assert mask.dtype == bool
            np.testing.assert_array_equal(labels[mask], arrays.labels[_index_of(x[mask])])
            assert not x[~mask].any() and not labels[~mask].any()
            seen.append(_index_of(x[mask]))
    assert counts == [-(-N // batch)] * process_count
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(N))


def test_eval_transform_in_threads_and_closing_early_joins_them(jpegs):
    blobs, labels = jpegs
    transform = EvalTransform(8)
    it = eval_batches(_read_jpegs(jpegs), 12, 10, transform=transform, process_index=1,
                      process_count=2, num_threads=2)
    x, y, mask = next(it)  # process 1 of batch 0: examples 5..9
    np.testing.assert_array_equal(y, labels[5:10])
    for j, index in enumerate(range(5, 10)):
        np.testing.assert_array_equal(x[j], transform(blobs[index]))
    x, y, mask = next(it)  # batch 1: examples 15..19 do not exist
    assert not mask.any() and not x.any()
    it.close()
    assert _no_stream_threads()
