"""Ensembles (average of K models, snapshot schedule) and transfer learning (frozen backbone)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from normlab.models.ensemble import ensemble_logits, snapshot_schedule, stack_members
from normlab.models.mlp import MLP
from normlab.models.transfer import freeze_backbone_mask, replace_head, split_backbone_head

MODEL = MLP(depth=2, width=6, norm="layer", activation="tanh", num_classes=5)


def _apply(variables, x):
    return MODEL.apply(variables, x, train=False)


def _members(k, x):
    return [MODEL.init(jax.random.key(seed), x, train=False) for seed in range(k)]


def _np_softmax(logits):
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize(("k", "n"), [(1, 3), (3, 4), (5, 2)])
def test_ensemble_average_of_probabilities(k, n):
    x = jnp.asarray(np.random.default_rng(k).normal(size=(n, 7)), jnp.float32)
    members = _members(k, x)
    # members' logits scaled up so that their softmaxes differ clearly from each other
    members = [jax.tree.map(lambda p: 3.0 * p, m) for m in members]
    member_logits = [np.asarray(_apply(m, x)) for m in members]
    want_p = np.mean([_np_softmax(z) for z in member_logits], axis=0)
    want_logits = np.mean(np.asarray(member_logits, np.float64), axis=0)

    log_p = ensemble_logits(_apply, members, x, average="probs")
    assert log_p.shape == (n, 5)
    np.testing.assert_allclose(np.exp(np.asarray(log_p, np.float64)), want_p, rtol=1e-5,
                               atol=1e-7)
    mean_logits = ensemble_logits(_apply, members, x, average="logits")
    np.testing.assert_allclose(mean_logits, want_logits, rtol=1e-5, atol=1e-6)
    # an already-stacked pytree gives the same answer as the list
    stacked = stack_members(members)
    assert jax.tree.leaves(stacked)[0].shape[0] == k
    np.testing.assert_allclose(ensemble_logits(_apply, stacked, x), log_p, rtol=1e-6)


def test_ensemble_errors():
    x = jnp.ones((2, 7))
    members = _members(2, x)
    with pytest.raises(ValueError, match="average"):
        ensemble_logits(_apply, members, x, average="vote")
    with pytest.raises(ValueError, match="at least one"):
        ensemble_logits(_apply, [], x)
    other = MLP(depth=1, width=6, num_classes=5).init(jax.random.key(0), x, train=False)
    with pytest.raises(ValueError, match="architecture"):
        stack_members([members[0], other])
    bad = stack_members(members)
    bad["params"]["head"]["bias"] = bad["params"]["head"]["bias"][:1]
    with pytest.raises(ValueError, match="leading"):
        ensemble_logits(_apply, bad, x)


@pytest.mark.parametrize(("total", "m", "lr0"), [(300, 3, 0.1), (100, 7, 0.2), (10, 4, 1.0),
                                                 (17, 1, 0.05)])
def test_snapshot_schedule_matches_formula(total, m, lr0):
    schedule, steps = snapshot_schedule(total, m, lr0)
    t = np.arange(1, total + 1, dtype=np.float64)  # Huang et al.'s iterations t = 1..T
    c = math.ceil(total / m)
    want = lr0 / 2 * (np.cos(np.pi * np.mod(t - 1, c) / c) + 1)
    got = np.asarray([schedule(jnp.asarray(i)) for i in range(total)])  # optax count = t − 1
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert steps == [min(k * c, total) for k in range(1, m + 1)]
    # a snapshot is taken after the smallest step of its cycle, right before the restart
    for k, s in enumerate(steps):
        cycle = got[k * c : s]  # the learning rates of cycle k + 1 (the last may be shorter)
        assert got[s - 1] == cycle.min() and (len(cycle) == 1 or cycle.min() < lr0)
        if s < total:
            assert got[s] == pytest.approx(lr0)


def test_snapshot_schedule_drives_optax():
    schedule, _ = snapshot_schedule(6, 2, 0.5)
    tx = optax.sgd(schedule)
    params = {"w": jnp.zeros(())}
    state = tx.init(params)
    moves = []
    for _ in range(6):
        updates, state = tx.update({"w": jnp.ones(())}, state, params)
        moves.append(-float(updates["w"]))
    np.testing.assert_allclose(moves, [0.5, 0.375, 0.125, 0.5, 0.375, 0.125], rtol=1e-6)


@pytest.mark.parametrize(("args", "match"), [
    ((0, 1, 0.1), "total_steps"),
    ((10, 0, 0.1), "num_snapshots"),
    ((10, 2, 0.0), "peak_lr"),
    ((10, 6, 0.1), "empty"),
])
def test_snapshot_schedule_errors(args, match):
    with pytest.raises(ValueError, match=match):
        snapshot_schedule(*args)


# --------------------------------------------------------------------------- transfer


def test_split_replace_and_mask():
    x = jnp.ones((2, 7))
    params = MODEL.init(jax.random.key(0), x, train=False)["params"]
    backbone, head = split_backbone_head(params, "head")
    assert set(backbone) == set(params) - {"head"} and head is params["head"]
    new_head = {"kernel": jnp.zeros((6, 9)), "bias": jnp.zeros((9,))}
    replaced = replace_head(params, "head", new_head)
    assert replaced["head"] is new_head and replaced["layer_00"] is params["layer_00"]
    assert params["head"]["kernel"].shape == (6, 5)  # the input is not modified
    labels = freeze_backbone_mask(params, "head")
    assert jax.tree.structure(labels) == jax.tree.structure(params)
    assert set(jax.tree.leaves(labels["head"])) == {"trainable"}
    assert set(jax.tree.leaves(split_backbone_head(labels, "head")[0])) == {"frozen"}


@pytest.mark.parametrize("fn", [split_backbone_head, freeze_backbone_mask])
def test_transfer_errors(fn):
    with pytest.raises(ValueError, match="head_name='classifier'"):
        fn({"layer_00": {}, "head": {}}, "classifier")
    with pytest.raises(ValueError, match="mapping"):
        fn([1, 2], "head")


def test_replace_head_needs_a_mapping():
    with pytest.raises(ValueError, match="new_head_params"):
        replace_head({"head": {"kernel": jnp.ones(1)}}, "head", jnp.ones(3))


@pytest.mark.parametrize("inner", [optax.sgd(0.1, momentum=0.9), optax.adamw(1e-2)])
def test_frozen_backbone_is_unchanged_while_head_trains(inner):
    """The recipe: trained params → new 3-class head → freeze → retrain the head."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 7)), jnp.float32)
    labels = jnp.asarray(np.arange(8) % 3)
    trained = MODEL.init(jax.random.key(0), x, train=False)["params"]
    new_model = MLP(depth=2, width=6, norm="layer", activation="tanh", num_classes=3)
    fresh = new_model.init(jax.random.key(1), x, train=False)["params"]
    params = replace_head(trained, "head", fresh["head"])
    tx = optax.multi_transform({"trainable": inner, "frozen": optax.set_to_zero()},
                               freeze_backbone_mask(params, "head"))
    opt_state = tx.init(params)

    def loss_fn(p):
        logits = new_model.apply({"params": p}, x, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    start = params
    losses = []
    for _ in range(5):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    backbone, head = split_backbone_head(params, "head")
    for got, want in zip(jax.tree.leaves(backbone), jax.tree.leaves(split_backbone_head(
            start, "head")[0]), strict=True):
        np.testing.assert_array_equal(got, want)
    assert all(np.any(a != b) for a, b in zip(jax.tree.leaves(head),
                                              jax.tree.leaves(start["head"]), strict=True))
    assert losses[-1] < losses[0]
