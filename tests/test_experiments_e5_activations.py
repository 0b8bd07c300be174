"""E5 tiny (digits): saturation/dead-unit diagnostics, and a deep SELU net trains where the same
ReLU net with LeCun init stalls."""

import math
from pathlib import Path

import pytest

from normlab.reports.experiment import load_experiment

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.mark.slow
def test_e5_tiny_selu_self_normalizes(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(DATA))
    monkeypatch.setenv("NORMLAB_TFDS_DIR", str(tmp_path / "tfds"))
    out = tmp_path / "e5"
    results = load_experiment("e5_activations").main(["--tiny", "--out", str(out)])
    shallow = results["shallow"]
    assert shallow["tanh"]["measure"] == "saturated_fraction"
    assert shallow["relu"]["measure"] == "dead_fraction"
    for act in ("tanh", "relu"):
        assert all(0.0 <= f <= 1.0 for f in shallow[act]["fraction_first_tenth_last"])
    selu, relu = results["deep"]["SELU, LeCun"], results["deep"]["ReLU, LeCun"]
    # SELU's fixed point: activations keep mean ≈ 0 and std ≈ 1 through 20 layers at init
    assert 0.7 < selu["init_std_last"] < 1.3 and abs(selu["init_mean_last"]) < 0.2
    # ReLU + LeCun: std shrinks by 1/√2 per layer (19 steps: ~1.4e-3 of layer 1)
    assert relu["init_std_last"] < 0.01 * relu["init_std_first"]
    assert selu["loss_final"] < 1.0 < relu["loss_final"]
    assert relu["loss_first"] == pytest.approx(math.log(10.0), abs=0.05)
    assert (out / "activations.png").exists() and (out / "deep_selu.png").exists()
