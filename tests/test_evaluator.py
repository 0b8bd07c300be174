"""Whole-split evaluation counts every example exactly once, at any batch size: loss, accuracy,
top-5 accuracy (≥ 100 classes) and the example count against a float64 NumPy reference."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from normlab.train.evaluator import make_batch_evaluator, make_evaluator
from normlab.train.state import TrainState


class Logits(nn.Module):
    """The input is the logits: the evaluator alone is under test."""

    @nn.compact
    def __call__(self, x, train=False):
        return x


STATE = TrainState(step=np.int32(0), params={}, batch_stats={}, opt_state=(),
                   rng=jax.random.PRNGKey(0))


def _reference(logits, labels):
    z = logits.astype(np.float64)
    log_p = z - z.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    rank = (z > z[np.arange(len(labels)), labels][:, None]).sum(-1)  # logits above the label's
    return {"loss": -log_p[np.arange(len(labels)), labels].mean(),
            "accuracy": (z.argmax(-1) == labels).mean(), "top5_accuracy": (rank < 5).mean(),
            "examples": len(labels)}


@pytest.mark.parametrize("classes", [10, 120])
@pytest.mark.parametrize("batch", [1, 8, 37, 64])
def test_every_example_counts_once(classes, batch, rng):
    n = 37
    logits = rng.normal(size=(n, classes)).astype(np.float32)
    labels = rng.integers(0, classes, n).astype(np.int32)
    got = make_evaluator(Logits())(STATE, logits, labels, batch)
    want = _reference(logits, labels)
    if classes < 100:
        assert "top5_accuracy" not in got
        want.pop("top5_accuracy")
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-6), name


def test_padded_batches_give_the_same_metrics(rng):
    n, classes, batch = 29, 120, 8
    logits = rng.normal(size=(n, classes)).astype(np.float32)
    labels = rng.integers(0, classes, n).astype(np.int32)
    pad = -n % batch
    x = np.concatenate([logits, np.zeros((pad, classes), np.float32)]).reshape(-1, batch, classes)
    y = np.concatenate([labels, np.zeros(pad, np.int32)]).reshape(-1, batch)
    mask = np.concatenate([np.ones(n), np.zeros(pad)]).astype(np.float32).reshape(-1, batch)
    got = make_batch_evaluator(Logits())(STATE, zip(x, y, mask, strict=True))
    want = _reference(logits, labels)
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-6), name
