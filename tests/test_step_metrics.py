"""A chunk's per-step norms (grad_norm, update_norm, param_norm) come from its last step only:
every step of the chunk reports the last step's values, which match float64 NumPy norms of that
step's parameters and update; skipping them on the other steps changes nothing else."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normlab.bench.models import step_config
from normlab.train.state import init_state
from normlab.train.step import NORM_METRICS, train_chunk_from_batches, train_step

K, B, IN, CLASSES = 3, 8, 12, 10


def _norm64(tree):
    return np.sqrt(sum(np.sum(np.asarray(a, np.float64) ** 2) for a in jax.tree.leaves(tree)))


@pytest.fixture(scope="module")
def chunk_and_steps():
    cfg = step_config("mlp", "batch", "float32", 8, CLASSES,
                      {"depth": 2, "width": 16, "activation": "relu"})
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((K, B, IN)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, CLASSES, (K, B)), jnp.int32)
    state = init_state(cfg.model, cfg.tx, jax.random.key(0), x[0, :2])
    chunk_state, chunk_metrics = jax.jit(functools.partial(train_chunk_from_batches, cfg))(
        state, x, labels)
    step = jax.jit(functools.partial(train_step, cfg))
    states, metrics = [state], []
    for k in range(K):
        new_state, m = step(states[-1], x[k], labels[k])
        states.append(new_state)
        metrics.append(m)
    return chunk_state, chunk_metrics, states, metrics


def test_chunk_reports_the_last_steps_norms_at_every_step(chunk_and_steps):
    chunk_state, chunk_metrics, states, metrics = chunk_and_steps
    before, after = states[-2].params, states[-1].params
    update = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                          after, before)
    expected = {"param_norm": _norm64(after), "update_norm": _norm64(update),
                "grad_norm": float(metrics[-1]["grad_norm"])}
    for name in NORM_METRICS:
        assert chunk_metrics[name].shape == (K,)
        np.testing.assert_allclose(np.asarray(chunk_metrics[name]), expected[name], rtol=1e-5)
    # the gradient's norm differs from step to step: the chunk's are all the last step's
    assert float(metrics[0]["grad_norm"]) != pytest.approx(expected["grad_norm"], rel=1e-3)


def test_skipping_the_norms_changes_nothing_else(chunk_and_steps):
    chunk_state, chunk_metrics, states, metrics = chunk_and_steps
    for name in ("train_loss", "train_accuracy", "lr"):
        np.testing.assert_allclose(np.asarray(chunk_metrics[name]),
                                   [float(m[name]) for m in metrics], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(chunk_state.params), jax.tree.leaves(states[-1].params),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
