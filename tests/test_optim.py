"""Optimizers, schedules and clipping (SPEC §1.6) against float64 NumPy written from their
definitions (normlab.train.optim's docstrings, the papers), with hyperparameters chosen so that
each convention is visible: ε comparable to √s (where it sits in the denominator matters),
β's far from their defaults (bias correction matters), schedules applied through the optimizer
(which step's rate each update uses)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normlab.registry import OPTIMIZERS, SCHEDULES
from normlab.train.optim import build_optimizer, build_schedule, snapshot_steps

ETA = 0.05


def _run(optimizer, grads_seq, w0, *, schedule=None, total_steps=100, clip=None,
         decoupled=0.0, decay_mask=None):
    """normlab's transformation applied to a fixed gradient sequence; float64 weights after."""
    tx, _ = build_optimizer(optimizer, schedule or {"name": "constant"}, ETA, total_steps,
                            clip=clip, decoupled_weight_decay=decoupled, decay_mask=decay_mask)
    w = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), w0)
    state = tx.init(w)
    update = jax.jit(tx.update)
    for g in grads_seq:
        updates, state = update(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), g), state, w)
        w = jax.tree.map(lambda a, u: a + u, w, updates)
    return jax.tree.map(lambda a: np.asarray(a, np.float64), w)


def _reference(name, kw, grads_seq, w0, lr=lambda t: ETA, decoupled=0.0):
    """w_t = w_{t−1} − η(t−1)·(d_t + λ_dec·w_{t−1}), d_t the optimizer's direction, t = 1, 2, ...

    sgd       d = g
    momentum  v ← μv + g;  d = v                          (heavy ball)
    nesterov  v ← μv + g;  d = g + μv                     (Sutskever et al. 2013)
    adagrad   s ← s + g² (s₀ = initial_accumulator);  d = g/√(s + ε)
    rmsprop   s ← ρs + (1−ρ)g²;  d = g/√(s + ε)
    adam      m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  d = m̂/(√v̂ + ε),  m̂ = m/(1−β₁ᵗ),
              v̂ = v/(1−β₂ᵗ)                              (Kingma & Ba 2015, Algorithm 1)
    adamw     adam's d + λw                               (Loshchilov & Hutter 2019)
    """
    w = np.array(w0, np.float64)
    m = np.zeros_like(w)
    s = np.full_like(w, kw.get("initial_accumulator", 0.0))
    for t, g in enumerate(grads_seq, start=1):
        g = np.asarray(g, np.float64)
        if name == "sgd":
            d = g
        elif name in ("momentum", "nesterov"):
            m = kw["momentum"] * m + g
            d = g + kw["momentum"] * m if name == "nesterov" else m
        elif name == "adagrad":
            s = s + g**2
            d = g / np.sqrt(s + kw["eps"])
        elif name == "rmsprop":
            s = kw["decay"] * s + (1 - kw["decay"]) * g**2
            d = g / np.sqrt(s + kw["eps"])
        else:
            b1, b2 = kw["b1"], kw["b2"]
            m = b1 * m + (1 - b1) * g
            s = b2 * s + (1 - b2) * g**2
            d = (m / (1 - b1**t)) / (np.sqrt(s / (1 - b2**t)) + kw["eps"])
            if name == "adamw":
                d = d + kw["weight_decay"] * w
        w = w - lr(t - 1) * (d + decoupled * w)
    return w


# ε and the gradients' scale (≈ 0.1, so s ≈ 0.01) are chosen so that ε in or out of the root,
# a missing bias correction or a swapped β each move w by far more than the tolerance
CASES = [
    ("sgd", {}),
    ("momentum", {"momentum": 0.9}),
    ("nesterov", {"momentum": 0.8}),
    ("adagrad", {"eps": 0.01, "initial_accumulator": 0.05}),
    ("rmsprop", {"decay": 0.7, "eps": 0.01}),
    ("adam", {"b1": 0.8, "b2": 0.9, "eps": 0.05}),
    ("adamw", {"b1": 0.8, "b2": 0.9, "eps": 0.05, "weight_decay": 0.3}),
]


@pytest.mark.parametrize(("name", "kw"), CASES, ids=[c[0] for c in CASES])
def test_optimizer_matches_its_definition(name, kw, rng):
    w0 = rng.normal(size=7)
    grads = [0.1 * rng.normal(size=7) for _ in range(6)]
    got = _run({"name": name, **kw}, grads, w0)
    np.testing.assert_allclose(got, _reference(name, kw, grads, w0), rtol=1e-5, atol=1e-6)


def test_adam_is_not_rmsprop_with_momentum(rng):
    # the test above can tell them apart: the same data through both references differ
    w0, grads = rng.normal(size=7), [0.1 * rng.normal(size=7) for _ in range(6)]
    adam = _reference("adam", {"b1": 0.8, "b2": 0.9, "eps": 0.05}, grads, w0)
    no_correction = _reference("rmsprop", {"decay": 0.9, "eps": 0.05}, grads, w0)
    assert np.max(np.abs(adam - no_correction)) > 100 * 1e-5


def test_schedule_rates_reach_the_updates_in_order(rng):
    # update t (t = 1, 2, ...) uses η(t − 1): the first update the warm-up's 0, then its ramp
    schedule = {"name": "step", "every": 3, "factor": 0.5, "warmup_steps": 2}
    w0, grads = rng.normal(size=4), [rng.normal(size=4) for _ in range(9)]
    got = _run({"name": "momentum", "momentum": 0.5}, grads, w0, schedule=schedule,
               total_steps=20)
    lr = build_schedule("step", ETA, 20, warmup_steps=2, every=3, factor=0.5)
    rates = [float(lr(t)) for t in range(9)]
    assert rates[:3] == pytest.approx([0.0, ETA / 2, ETA])  # the ramp, then the step schedule
    want = _reference("momentum", {"momentum": 0.5}, grads, w0, lr=lambda t: rates[t])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_decoupled_weight_decay_is_scaled_by_the_rate_not_the_optimizer(rng):
    # λ·w is added after Adam's scaling, so Adam's normalization does not touch it
    kw = {"b1": 0.8, "b2": 0.9, "eps": 0.05}
    w0, grads = rng.normal(size=5), [0.1 * rng.normal(size=5) for _ in range(4)]
    got = _run({"name": "adam", **kw}, grads, w0, decoupled=0.2)
    np.testing.assert_allclose(got, _reference("adam", kw, grads, w0, decoupled=0.2),
                               rtol=1e-5, atol=1e-6)


def test_decay_mask_decays_only_the_masked_leaves(rng):
    w0 = {"kernel": rng.normal(size=3), "bias": rng.normal(size=3)}
    grads = [{"kernel": g, "bias": g} for g in (rng.normal(size=3) for _ in range(3))]
    got = _run({"name": "sgd"}, grads, w0, decoupled=0.5,
               decay_mask=lambda p: {"kernel": True, "bias": False})
    for key, decoupled in (("kernel", 0.5), ("bias", 0.0)):
        want = _reference("sgd", {}, [g[key] for g in grads], w0[key], decoupled=decoupled)
        np.testing.assert_allclose(got[key], want, rtol=1e-5, atol=1e-6)


def test_clip_by_global_norm_over_all_leaves():
    g = {"a": np.array([3.0, 0.0]), "b": np.array([0.0, 4.0])}  # global norm 5
    got = _run({"name": "sgd"}, [g], {"a": np.zeros(2), "b": np.zeros(2)},
               clip={"name": "norm", "max_norm": 1.0})
    for key in g:
        np.testing.assert_allclose(got[key], -ETA * g[key] / 5.0, rtol=1e-6)
    small = _run({"name": "sgd"}, [g], {"a": np.zeros(2), "b": np.zeros(2)},
                 clip={"name": "norm", "max_norm": 10.0})
    np.testing.assert_allclose(small["b"], -ETA * g["b"], rtol=1e-6)  # under the bound: as is


def test_adaptive_gradient_clipping_is_unit_wise(rng):
    # Brock et al. 2021: each output unit i of W (a column of a flax (in, out) kernel) keeps
    # G_i if ‖G_i‖ ≤ λ·max(‖W_i‖, ε), else is rescaled to that norm
    lam, eps = 0.1, 1e-3
    w = rng.normal(size=(3, 4))
    w[:, 3] = 0.0  # a zero unit: the bound is λε
    g = rng.normal(size=(3, 4))
    g[:, 1] *= 0.01  # a unit under its bound
    got = _run({"name": "sgd"}, [g], w, clip={"name": "agc", "clipping": lam, "eps": eps})
    bound = lam * np.maximum(np.linalg.norm(w, axis=0), eps)
    norms = np.linalg.norm(g, axis=0)
    clipped = g * np.minimum(1.0, bound / norms)
    assert norms[1] < bound[1] and np.all(norms[[0, 2, 3]] > bound[[0, 2, 3]])
    np.testing.assert_allclose(got, w - ETA * clipped, rtol=1e-5, atol=1e-7)


def _schedule_ref(name, t, T, eta, **kw):
    """The schedules of optim.py's docstring; t steps after warm-up, T steps after warm-up."""
    if name == "constant":
        return eta
    if name == "step":
        if kw.get("every", 0) == 0:  # decays at 1/2 and 3/4 of training
            return eta * kw.get("factor", 0.1) ** ((t >= T // 2) + (t >= (3 * T) // 4))
        return eta * kw["factor"] ** math.floor(t / kw["every"])
    if name == "exponential":
        return eta * kw["rate"] ** (t / (kw.get("every") or T))
    if name == "inverse_time":
        return eta / (1 + kw["k"] * t)
    if name == "cosine":
        a = kw.get("alpha", 0.0)
        return eta * (a + (1 - a) * 0.5 * (1 + math.cos(math.pi * min(t, T) / T)))
    if name == "snapshot":  # Huang et al. 2017: M cycles of c = ⌈T/M⌉ steps
        c = math.ceil(T / kw["num_snapshots"])
        return eta / 2 * (math.cos(math.pi * (t % c) / c) + 1)
    raise AssertionError(name)


SCHEDULE_CASES = [
    ("constant", {}),
    ("step", {"every": 30, "factor": 0.5}),
    ("step", {}),
    ("exponential", {"rate": 0.1, "every": 40}),
    ("exponential", {"rate": 0.2}),
    ("inverse_time", {"k": 0.01}),
    ("cosine", {"alpha": 0.1}),
    ("snapshot", {"num_snapshots": 3}),
]


@pytest.mark.parametrize("warmup", [0, 10])
@pytest.mark.parametrize(("name", "kw"), SCHEDULE_CASES,
                         ids=[f"{n}-{'-'.join(map(str, k.values()))}" for n, k in SCHEDULE_CASES])
def test_schedule_matches_its_formula(name, kw, warmup):
    total, eta = 110, 0.3
    fn = jax.jit(build_schedule(name, eta, total, warmup_steps=warmup, **kw))
    for t in range(0, total + 5):  # every step, and past the end (cosine holds its floor)
        if t < warmup:  # the linear ramp from 0 to η
            want = eta * t / warmup
        else:
            want = _schedule_ref(name, t - warmup, total - warmup, eta, **kw)
        assert float(fn(jnp.int32(t))) == pytest.approx(want, rel=1e-5, abs=1e-7), t


def test_snapshot_steps_end_every_cycle():
    assert snapshot_steps({"name": "snapshot", "num_snapshots": 3}, 300) == [100, 200, 300]
    # ⌈100/3⌉ = 34-step cycles after a 10-step warm-up; the last cycle is cut at T
    assert snapshot_steps({"name": "cyclic_cosine", "num_snapshots": 3, "warmup_steps": 10},
                          110) == [44, 78, 110]
    assert snapshot_steps({"name": "cosine"}, 300) == []


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="valid optimizer names: .*adam"):
        OPTIMIZERS.get("adamax")
    with pytest.raises(ValueError, match="valid schedule names: .*cosine"):
        SCHEDULES.get("linear")
    with pytest.raises(ValueError, match="accepted arguments: momentum"):
        OPTIMIZERS.build("momentum", beta=0.9)
    with pytest.raises(ValueError, match="warmup_steps"):
        build_schedule("constant", 0.1, 10, warmup_steps=20)
    with pytest.raises(ValueError, match="valid clipping names: agc, none, norm"):
        build_optimizer({"name": "sgd"}, {"name": "constant"}, 0.1, 10, clip={"name": "value"})
