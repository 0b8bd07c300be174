"""E5 tiny (digits): the deep self-normalizing claim. A 20-layer SELU net with LeCun init keeps
mean ≈ 0, std ≈ 1 at init (the fixed point of the SELU layer map) and trains without any
normalization, while the same ReLU net's std shrinks by 1/√2 per layer (19 steps: ~1.4e-3) and
it stays near the chance loss; tanh's saturation diagnostic is a fraction."""

import math

import pytest

from normlab.reports.experiment import load_experiment


@pytest.fixture(scope="module")
def e5(tmp_path_factory):
    out = tmp_path_factory.mktemp("e5")
    return load_experiment("e5_activations").main(["--tiny", "--out", str(out)]), out


def test_selu_keeps_its_fixed_point_relu_collapses(e5):
    selu, relu = e5[0]["deep"]["SELU, LeCun"], e5[0]["deep"]["ReLU, LeCun"]
    assert 0.7 < selu["init_std_last"] < 1.3 and abs(selu["init_mean_last"]) < 0.2
    assert relu["init_std_last"] < 0.01 * relu["init_std_first"]


def test_deep_selu_trains_where_relu_does_not(e5):
    results, out = e5
    selu, relu = results["deep"]["SELU, LeCun"], results["deep"]["ReLU, LeCun"]
    assert relu["loss_first"] == pytest.approx(math.log(10.0), abs=0.05)
    assert selu["loss_final"] < 1.0 and relu["loss_final"] > 2 * selu["loss_final"]
    verdicts = {v["claim"]: v["verdict"] for v in results["verdicts"]}
    assert set(verdicts.values()) == {"reproduced", "not tested"}
    tanh = results["shallow"]["tanh"]
    assert tanh["measure"] == "saturated_fraction" and tanh["best_lr"] == 0.5
    assert all(0.0 <= f <= 1.0 for f in tanh["fraction_first_tenth_last"])
    assert "| ReLU-like units die |" in (out / "report.md").read_text()
    assert (out / "activations.png").exists() and (out / "deep_selu.png").exists()
