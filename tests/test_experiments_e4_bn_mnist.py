"""E4 tiny (digits, 600 steps, lr 0.5, 2 seeds): the paper's comparison at one lr. With BN the
same sigmoid net's seed-mean test accuracy is above the baseline's at every evaluation after
step 300, its final accuracy is higher, and it reaches 90% while the baseline does not;
each verdict is the one its numbers give, the all-units drift recomputed from the committed
per-eval records."""

import gzip
import json

import numpy as np
import pytest
from scipy import stats

from normlab.reports.experiment import load_experiment


@pytest.fixture(scope="module")
def e4(tmp_path_factory):
    out = tmp_path_factory.mktemp("e4")
    return load_experiment("e4_bn_mnist").main(["--tiny", "--out", str(out)]), out


def test_bn_is_ahead_after_step_300_and_reaches_90_percent_first(e4):
    results, _ = e4
    plain, bn = results["settings"]["no BN @ 0.5"], results["settings"]["BN @ 0.5"]
    assert plain["n"] == bn["n"] == 2 and not any(plain["diverged"] + bn["diverged"])
    steps = np.asarray(bn["steps"])
    gap = np.mean(bn["test_accuracy"], axis=0) - np.mean(plain["test_accuracy"], axis=0)
    assert np.all(gap[steps > 300] > 0)
    assert min(bn["final_test"]) > max(plain["final_test"]) + 0.1
    assert all(s is not None for s in bn["steps_to"]["0.9"])
    assert all(s is None for s in plain["steps_to"]["0.9"])
    median, low, high, reached = bn["steps_to_median_ci"]["0.9"]
    assert reached == 2 and low <= median <= high < np.inf
    assert plain["steps_to_median_ci"]["0.9"][0] == np.inf


def test_verdicts_follow_from_the_numbers(e4):
    results, out = e4
    verdicts = {v["claim"].split(" (")[0]: v for v in results["verdicts"]}
    # ahead after step 300 (the test above); the final Welch test decides "reproduced"
    plain, bn = results["settings"]["no BN @ 0.5"], results["settings"]["BN @ 0.5"]
    p = stats.ttest_ind(bn["final_test"], plain["final_test"], equal_var=False).pvalue
    expected = "reproduced" if p < 0.05 else "partly reproduced"
    assert verdicts["BN's test accuracy is higher throughout"]["verdict"] == expected
    assert verdicts["BN reaches 90% in fewer steps"]["verdict"] == "reproduced"
    assert "BN allows a higher lr" not in verdicts  # no high-lr runs in the tiny setting
    text = (out / "report.md").read_text()
    assert "| BN reaches 90% in fewer steps (lr* 0.5) |" in text
    saved = json.loads((out / "results.json").read_text())
    assert saved["verdicts"] == results["verdicts"]
    for name in ("test_accuracy.png", "sigmoid_input_percentiles.png", "unit_drift.png"):
        assert (out / name).exists()


def test_drift_over_all_units_from_the_records(e4):
    results, out = e4
    rows = [json.loads(line) for line in gzip.decompress((out / "eval_records.jsonl.gz")
                                                         .read_bytes()).splitlines()]
    records = {row["name"]: row["records"] for row in rows}
    settings = results["settings"]
    per_seed, relative = {}, {}
    for net, prefix in (("BN", "bn"), ("no BN", "plain")):
        names = sorted(name for name in records if name.startswith(f"{prefix}_lr0.5"))
        assert len(names) == 2
        drifts, spreads = [], []
        for name in names:  # the rule from its statement, float64
            recs = [r for r in records[name] if "diag/layer_02/norm_act/p50/u99" in r]
            late = [r for r in recs if r["step"] >= 300]
            assert recs[-1]["step"] == 600 and len(late) == 4
            d, v = np.zeros(100), {}
            for p in (15, 50, 85):
                v[p] = np.array([[r[f"diag/layer_02/norm_act/p{p}/u{u:02d}"] for u in range(100)]
                                 for r in late], np.float64)
                d += np.abs(v[p] - v[p][-1]).mean(axis=0) / 3
            drifts.append(d)
            spreads.append(v[85][-1] - v[15][-1])
        stored = settings[f"{net} @ 0.5"]["unit_drift"]
        np.testing.assert_allclose([s["drift"] for s in stored], drifts, atol=2e-6)
        np.testing.assert_allclose([s["spread"] for s in stored], spreads, atol=2e-6)
        per_seed[net] = drifts
        relative[net] = [(d / w).mean() for d, w in zip(drifts, spreads, strict=True)]
    means = {net: [d.mean() for d in ds] for net, ds in per_seed.items()}
    fractions = [np.mean((b[:, None] < p) + 0.5 * (b[:, None] == p)) for b, p in
                 zip(per_seed["BN"], per_seed["no BN"], strict=True)]
    w = stats.ttest_ind(means["BN"], means["no BN"], equal_var=False)
    smaller, every_seed = w.pvalue < 0.05 and w.statistic < 0, min(fractions) > 0.5
    expected = ("reproduced" if smaller and every_seed else
                "partly reproduced" if smaller or every_seed else "not reproduced")
    verdict, = (v for v in results["verdicts"] if v["claim"].startswith("BN's sigmoid-input"))
    assert verdict["verdict"] == expected
    assert " ".join(f"{f:.2f}" for f in fractions) in verdict["evidence"].replace(",", "")
    w = stats.ttest_ind(relative["BN"], relative["no BN"], equal_var=False)
    assert f"final p85 − p15: BN {np.mean(relative['BN']):.3f}" in verdict["evidence"]
    assert verdict["evidence"].endswith(f"Welch p = {w.pvalue:.2g}")
