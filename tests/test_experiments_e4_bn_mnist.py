"""E4 tiny (digits, 600 steps, lr 0.5): the paper's comparison at one lr. With BN the same
sigmoid net has the higher test accuracy at every evaluation after the first few hundred steps
and reaches 90% while the baseline does not; BN's sigmoid input percentiles move less."""

import json

import pytest

from normlab.reports.experiment import load_experiment


@pytest.fixture(scope="module")
def e4(tmp_path_factory):
    out = tmp_path_factory.mktemp("e4")
    return load_experiment("e4_bn_mnist").main(["--tiny", "--out", str(out)]), out


def test_bn_is_ahead_throughout_and_reaches_90_percent_first(e4):
    results, _ = e4
    lr = results["lr_star"]
    plain, bn = results["nets"][f"no BN (lr {lr:g})"], results["nets"][f"BN (lr {lr:g})"]
    assert bn["final_test_accuracy"] > plain["final_test_accuracy"] + 0.1
    late = [(a, b) for s, a, b in zip(bn["steps"], plain["test_accuracy"], bn["test_accuracy"],
                                      strict=True) if s >= 300]
    assert late and all(b > a for a, b in late)
    assert bn["steps_to"]["0.9"] is not None and plain["steps_to"]["0.9"] is None


def test_verdicts_follow_from_the_numbers(e4):
    results, out = e4
    verdicts = {v["claim"].split(" (")[0]: v for v in results["verdicts"]}
    assert verdicts["BN's test accuracy is higher throughout"]["verdict"] == "reproduced"
    assert verdicts["BN reaches 90% in fewer steps"]["verdict"] == "reproduced"
    text = (out / "report.md").read_text()
    assert "| BN reaches 90% in fewer steps (lr 0.5) |" in text and "preliminary:" in text
    saved = json.loads((out / "results.json").read_text())
    assert saved["verdicts"] == results["verdicts"]
    for name in ("test_accuracy.png", "sigmoid_input_percentiles.png"):
        assert (out / name).exists()
