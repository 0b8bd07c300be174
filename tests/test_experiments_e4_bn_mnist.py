"""E4 tiny (digits, 600 steps, lr 0.5, 2 seeds): the paper's comparison at one lr. With BN the
same sigmoid net's seed-mean test accuracy is above the baseline's at every evaluation after
step 300, its final accuracy is higher, and it reaches 90% while the baseline does not;
each verdict is the one its numbers give."""

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
    for name in ("test_accuracy.png", "sigmoid_input_percentiles.png"):
        assert (out / name).exists()
