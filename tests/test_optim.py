"""Optimizers and schedules against float64 NumPy implementations written from their formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normlab.registry import OPTIMIZERS, SCHEDULES
from normlab.train.optim import build_optimizer, build_schedule

ETA = 0.05


def _run(name, kwargs, grads_seq, w0, decoupled=0.0, clip=None):
    tx, _ = build_optimizer(
        {"name": name, **kwargs},
        {"name": "constant"},
        ETA,
        100,
        clip=clip,
        decoupled_weight_decay=decoupled,
    )
    w = jnp.asarray(w0, jnp.float32)
    state = tx.init(w)
    for g in grads_seq:
        updates, state = tx.update(jnp.asarray(g, jnp.float32), state, w)
        w = w + updates
    return np.asarray(w, np.float64)


def _reference(name, kwargs, grads_seq, w0, decoupled=0.0):
    w = np.array(w0, np.float64)
    v = np.zeros_like(w)
    s = np.zeros_like(w)
    acc = np.full_like(w, 0.1)
    for t, g in enumerate(grads_seq, start=1):
        if name == "sgd":
            d = g
        elif name in ("momentum", "nesterov"):
            mu = kwargs.get("momentum", 0.9)
            v = mu * v + g
            d = g + mu * v if name == "nesterov" else v
        elif name == "adagrad":
            acc = acc + g**2
            d = g / (np.sqrt(acc) + 1e-7)
        elif name == "rmsprop":
            s = 0.9 * s + 0.1 * g**2
            d = g / (np.sqrt(s) + 1e-8)
        elif name in ("adam", "adamw"):
            v = 0.9 * v + 0.1 * g
            s = 0.999 * s + 0.001 * g**2
            d = (v / (1 - 0.9**t)) / (np.sqrt(s / (1 - 0.999**t)) + 1e-8)
            if name == "adamw":
                d = d + kwargs["weight_decay"] * w
        d = d + decoupled * w
        w = w - ETA * d
    return w


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("sgd", {}),
        ("momentum", {"momentum": 0.9}),
        ("nesterov", {"momentum": 0.8}),
        ("adagrad", {}),
        ("rmsprop", {}),
        ("adam", {}),
        ("adamw", {"weight_decay": 0.1}),
    ],
)
def test_optimizer_matches_reference(name, kwargs):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(7,))
    grads = [rng.normal(size=(7,)) for _ in range(5)]
    got = _run(name, kwargs, grads, w0)
    want = _reference(name, kwargs, grads, w0)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_decoupled_weight_decay_with_momentum():
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(5,))
    grads = [rng.normal(size=(5,)) for _ in range(4)]
    got = _run("momentum", {"momentum": 0.9}, grads, w0, decoupled=0.01)
    want = _reference("momentum", {"momentum": 0.9}, grads, w0, decoupled=0.01)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_clip_by_global_norm():
    g = np.array([3.0, 4.0])  # norm 5
    got = _run("sgd", {}, [g], np.zeros(2), clip={"name": "norm", "max_norm": 1.0})
    np.testing.assert_allclose(got, -ETA * g / 5.0, rtol=1e-6)


def _schedule_ref(name, t, T, eta, **kw):
    if name == "constant":
        return eta
    if name == "step":
        return eta * kw["factor"] ** math.floor(t / kw["every"])
    if name == "exponential":
        return eta * kw["rate"] ** (t / kw["every"])
    if name == "inverse_time":
        return eta / (1 + kw["k"] * t)
    if name == "cosine":
        return eta * (kw["alpha"] + (1 - kw["alpha"]) * 0.5 * (1 + math.cos(math.pi * t / T)))
    raise AssertionError(name)


@pytest.mark.parametrize(
    "name,kw",
    [
        ("constant", {}),
        ("step", {"every": 30, "factor": 0.5}),
        ("exponential", {"rate": 0.1, "every": 100}),
        ("inverse_time", {"k": 0.01}),
        ("cosine", {"alpha": 0.1}),
    ],
)
def test_schedules_match_formula(name, kw):
    T = 100
    fn = build_schedule(name, 0.3, T, **kw)
    for t in (0, 1, 29, 30, 61, 99, 100):
        assert float(fn(t)) == pytest.approx(_schedule_ref(name, t, T, 0.3, **kw), rel=1e-5)


def test_warmup_then_cosine():
    fn = build_schedule("cosine", 1.0, 110, warmup_steps=10)
    assert float(fn(0)) == 0.0
    assert float(fn(5)) == pytest.approx(0.5)
    assert float(fn(10)) == pytest.approx(1.0)
    assert float(fn(60)) == pytest.approx(0.5, abs=1e-6)  # halfway through the cosine part


def test_step_default_decays_at_half_and_three_quarters():
    fn = build_schedule("step", 1.0, 100)
    assert [float(fn(t)) for t in (49, 50, 74, 75)] == pytest.approx([1.0, 0.1, 0.1, 0.01])


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="valid optimizer names: .*adam"):
        OPTIMIZERS.get("adamax")
    with pytest.raises(ValueError, match="valid schedule names: .*cosine"):
        SCHEDULES.get("linear")
    with pytest.raises(ValueError, match="accepted arguments: momentum"):
        OPTIMIZERS.build("momentum", beta=0.9)
    with pytest.raises(ValueError, match="warmup_steps"):
        build_schedule("constant", 0.1, 10, warmup_steps=20)


def test_schedule_is_jittable():
    fn = build_schedule("cosine", 0.1, 50, warmup_steps=5)
    assert float(jax.jit(fn)(jnp.int32(20))) == pytest.approx(float(fn(20)), rel=1e-6)
