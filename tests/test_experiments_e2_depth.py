"""E2 tiny (digits, 30 × 32 ReLU MLPs, 4 seeds, one lr): each verdict's comparison. At init the
pre-activation std is kept per layer with Kaiming and shrinks by 1/√2 per layer with LeCun
("Xavier"): Var(y_{l+1}) = fan_in·Var(W)·E[relu(y_l)²] = fan_in·Var(W)·Var(y_l)/2. In training,
every Kaiming seed leaves the chance plateau and no LeCun seed does (its signal at layer 30 is
~2^-15 of the input's), with BN every seed of both leaves it; the E2/E5 pair (depth 30 vs 32)
is judged by whether its seed accuracies overlap (checked on given numbers)."""

import math

import pytest

from normlab.reports.experiment import load_experiment
from normlab.sample_stats import wilson_interval

CHANCE = math.log(10.0)


@pytest.fixture(scope="module")
def e2(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2")
    return load_experiment("e2_depth").main(["--tiny", "--out", str(out)]), out


def _shown(results, claim_start):
    return next(v["shown"] for v in results["verdicts"] if v["claim"].startswith(claim_start))


def test_init_std_per_layer_kept_by_kaiming_halved_variance_by_lecun(e2):
    std = e2[0]["init_preact_std"]
    assert len(std["Kaiming"]) == 30
    factor = {k: (v[-1] / v[0]) ** (1 / 29) for k, v in std.items()}
    assert factor["LeCun"] == pytest.approx(2**-0.5, abs=0.06)
    assert factor["Kaiming"] == pytest.approx(1.0, abs=0.1)
    assert _shown(e2[0], "at init") == "reproduced"


def test_plain_kaiming_leaves_the_plateau_lecun_stalls_bn_both_leave(e2):
    results, out = e2
    grid = results["grid"]
    kaiming, lecun = (grid[f"{i}, plain, depth 30, lr 0.01"] for i in ("Kaiming", "LeCun"))
    assert (kaiming["left"], lecun["left"], kaiming["n"]) == (4, 0, 4)
    assert kaiming["wilson"] == pytest.approx(list(wilson_interval(4, 4)))
    assert kaiming["wilson"][0] > lecun["wilson"][1]  # the rule: intervals apart
    assert all(e is not None and e <= 300 for e in kaiming["exits"])
    assert _shown(results, "plain net") == "reproduced"
    for init in ("Kaiming", "LeCun"):
        assert grid[f"{init}, BN, depth 30, lr 0.01"]["left"] == 4
    assert _shown(results, "with BN") == "reproduced"
    text = (out / "report.md").read_text()
    assert "| plain net: Kaiming trains, LeCun stalls |" in text
    assert (out / "grid.png").exists() and (out / "preact_std_at_init.png").exists()


def test_e2_e5_pair_verdict_follows_the_overlap_of_seed_accuracies(e2):
    """The tiny run has no pair (a fifth program); the rule on given seed accuracies."""
    results, _ = e2
    assert not any(v["claim"].startswith("E2 vs E5") for v in results["verdicts"])
    e2_run = load_experiment("e2_depth")
    setup = {**results["setup"], "pair": [30, 32], "pair_steps": 300}

    def verdict(a, b):
        pair = {d: {"test_accuracy": v, "accuracy_quartiles": e2_run.quartiles(v)}
                for d, v in (("30", a), ("32", b))}
        claims = e2_run.verdicts({**results, "setup": setup, "pair": pair})
        text = e2_run.e2report._pair_text({**results, "setup": setup, "pair": pair})
        return claims[-1].verdict, text

    word, text = verdict([0.96, 0.3, 0.9, 0.95], [0.65, 0.93, 0.5, 0.9])
    assert word == "not reproduced" and "The two sets overlap" in text
    assert verdict([0.96, 0.95, 0.97, 0.94], [0.65, 0.6, 0.7, 0.62])[0] == "reproduced"
    # apart, but Welch p = 0.084 (two groups of seeds each side): partly
    assert verdict([0.96, 0.95, 0.31, 0.30], [0.29, 0.28, 0.05, 0.04])[0] == "partly reproduced"
