"""E8: every optimizer name of configs/e8_optimizers.py is the algorithm the report says (three
updates against float64 references written from the update rules), and the tiny run (digits,
300 steps, two seeds as one program per setting): SGD, momentum and Adam follow different
trajectories and all train; a cosine decay stops the late fluctuation of the test accuracy that
the constant lr keeps; the verdicts count a difference only at Welch p < 0.05."""

from pathlib import Path

import jax
import numpy as np
import pytest

from normlab.config import load_config
from normlab.reports.experiment import load_experiment
from normlab.train.build import build_tx

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets"
LR, MU, WD = 0.01, 0.9, 0.1  # the config's momentum and AdamW decay


def reference_updates(opt: str, w: np.ndarray, grads: list[np.ndarray]) -> list[np.ndarray]:
    """The parameter updates of `opt` for gradients g_1..g_T at weights w (float64, from the
    update rules in the E8 report; the weights move by each update)."""
    m = v = np.zeros_like(w)
    s = np.full_like(w, 0.1) if opt == "adagrad" else np.zeros_like(w)
    out = []
    for t, g in enumerate(grads, start=1):
        if opt == "sgd":
            u = -LR * g
        elif opt in ("momentum", "nesterov"):
            v = MU * v + g
            u = -LR * (g + MU * v if opt == "nesterov" else v)
        elif opt == "adagrad":
            s = s + g**2
            u = -LR * g / np.sqrt(s + 1e-7)
        elif opt == "rmsprop":
            s = 0.9 * s + 0.1 * g**2
            u = -LR * g / np.sqrt(s + 1e-8)
        else:  # adam, adamw: bias-corrected moments
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g**2
            direction = (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
            u = -LR * (direction + (WD * w if opt == "adamw" else 0.0))
        w = w + u
        out.append(u)
    return out


@pytest.mark.parametrize("opt", ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam",
                                 "adamw"])
def test_e8_optimizer_is_the_named_algorithm(opt, rng):
    config = load_config(f"{REPO}/configs/e8_optimizers.py:opt={opt},lr={LR}")
    tx, _ = build_tx(config, config.total_steps)
    w = rng.standard_normal((4, 3))
    grads = [rng.standard_normal((4, 3)) for _ in range(3)]
    params = {"dense": {"kernel": np.float32(w)}}
    state = tx.init(params)
    expected = reference_updates(opt, w, grads)
    for g, want in zip(grads, expected, strict=True):
        updates, state = tx.update({"dense": {"kernel": np.float32(g)}}, state, params)
        got = np.asarray(updates["dense"]["kernel"], np.float64)
        # float32 rounding, relative to the size of the updates (~lr: AdamW's direction and
        # decay can cancel in one entry)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5 * LR, err_msg=opt)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    if opt == "adam":  # the first Adam step moves every weight by lr·sign(g)
        np.testing.assert_allclose(expected[0], -LR * np.sign(grads[0]), rtol=1e-6)


@pytest.mark.slow
def test_e8_tiny_optimizers_differ_and_cosine_settles(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(DATA))
    monkeypatch.setenv("NORMLAB_TFDS_DIR", str(tmp_path / "tfds"))
    out = tmp_path / "e8"
    e8 = load_experiment("e8_optimizers")
    results = e8.main(["--tiny", "--out", str(out)])
    opts = results["optimizers"]
    assert set(opts) == {"sgd", "momentum", "adam"}
    assert {o: k["lr"] for o, k in opts.items()} == {"sgd": 0.1, "momentum": 0.01, "adam": 1e-3}
    # all three train the net (chance is 0.1) along different paths, on both seeds, which
    # differ (init and batch order)
    assert all(k["seeds"] == 2 and min(k["final_test_accuracy"]) > 0.85 for k in opts.values())
    assert opts["adam"]["final_test_accuracy"][0] != opts["adam"]["final_test_accuracy"][1]
    curves = {o: np.asarray(k["test_accuracy"]) for o, k in opts.items()}
    for a, b in (("sgd", "momentum"), ("sgd", "adam"), ("momentum", "adam")):
        assert np.max(np.abs(curves[a] - curves[b])) > 0.01, (a, b)

    constant, cosine = results["schedules"]["constant"], results["schedules"]["cosine"]
    assert constant["lr"] == cosine["lr"] == results["lr_star"]["momentum"]
    # the lr decays to 0: the last quarter's test accuracy barely moves, the constant lr's still
    # does (a lower final loss, the full run's other finding, needs more than 300 steps here:
    # at 300 the decayed lr has simply trained less)
    for seed in (0, 1):
        assert cosine["late_std"][seed] < 0.5 * constant["late_std"][seed]

    text = (out / "report.md").read_text()
    assert "## Schedules" in text and "| git revision |" in text
    assert "| a decaying lr stops the late fluctuation of the test accuracy |" in text
    assert "| 2 | preliminary: " in text  # two seeds: never more than preliminary
    for name in ("optimizers.png", "schedules.png", "lr_grid.png", "results.json"):
        assert (out / name).exists()


def _numbers(acc, late, steps):
    return {"seeds": len(acc), "final_test_accuracy": acc, "late_std": late,
            "steps_to": {"0.85": steps}, "median_steps_to": {"0.85": {"median": np.median(
                [1e9 if s is None else s for s in steps])}},
            "total_steps": 1000, "eval_every": 100}


def test_e8_verdicts_count_a_difference_at_welch_p_below_alpha():
    e8 = load_experiment("e8_optimizers")
    acc = [0.870, 0.875, 0.880, 0.872, 0.878]
    results = {"search_seeds": [0], "thresholds": [0.85], "optimizers": {
        "sgd": _numbers(acc, acc, [500, 500, 600, 500, 500]),
        # without spread, 400 < 500 is a difference (p 0); one seed never at 85%: 1,100 steps
        "adam": _numbers(acc, acc, [400] * 5),
        "momentum": _numbers(acc, acc, [300, 300, 300, 300, None])},
        "schedules": {
            "constant": _numbers(acc, [0.004, 0.005, 0.003, 0.004, 0.005], [500] * 5),
            # +0.002: within the seed spread (Welch p ~0.5); late std far below (p < 1e-4)
            "step": _numbers([a + 0.002 for a in acc], [0.001, 0.0012, 0.0008, 0.001, 0.0011],
                             [500] * 5),
            # +0.02 on every seed: p < 1e-4
            "cosine": _numbers([a + 0.02 for a in acc], [0.004, 0.005, 0.003, 0.004, 0.005],
                               [500] * 5)}}
    speed, final, late = e8.verdicts(results)
    assert speed.verdict == "partly reproduced" and speed.n == 5
    assert speed.evidence.endswith("fewer than SGD at p < 0.05: adam")
    assert final.verdict == "partly reproduced"
    assert final.evidence.endswith("above constant at p < 0.05: cosine")
    assert late.verdict == "partly reproduced" and late.evidence.endswith(": step")
