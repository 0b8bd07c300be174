"""E9 tiny (digits, linear classifier): whitening trains faster; with un-centered inputs the loss
reacts more to a small random perturbation of the weights than with centered inputs."""

from pathlib import Path

import pytest

from normlab.reports.experiment import load_experiment

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.mark.slow
def test_e9_tiny_centering_and_whitening(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(DATA))
    monkeypatch.setenv("NORMLAB_TFDS_DIR", str(tmp_path / "tfds"))
    out = tmp_path / "e9"
    e9 = load_experiment("e9_preprocessing")
    results = e9.main(["--tiny", "--out", str(out)])
    preps, sens = results["preps"], results["sensitivity"]
    # whitening: a much lower training loss after the same steps at the same learning rate
    assert preps["zca_whiten"]["final_train_loss"] < 0.6 * preps["none"]["final_train_loss"]

    assert sens["none"]["mean_share"] > 0.5 > 0.05 > sens["zero_center"]["mean_share"]
    main = e9.EPSILONS.index(e9.MAIN_EPSILON)
    for when in ("init", "trained"):
        raw, centered = sens["none"][when]["eps"], sens["zero_center"][when]["eps"]
        # the curvature along random directions grows with E‖x‖², which the mean inflates
        assert raw[main]["second_order"] > 2 * centered[main]["second_order"] > 0
        # small perturbations: |ΔL| is first order and grows like ε (10× per decade), its even
        # part like ε² (100× per decade)
        assert 9 < raw[1]["mean_abs"] / raw[0]["mean_abs"] < 11
        assert 90 < raw[1]["second_order"] / raw[0]["second_order"] < 110
    trained_raw, trained_centered = (sens[p]["trained"]["eps"][main]["mean_abs"]
                                     for p in ("none", "zero_center"))
    assert trained_raw > 1.3 * trained_centered

    text = (out / "report.md").read_text()
    assert "## Loss change under a small random perturbation of the weights" in text
    assert "| git revision |" in text
    for name in ("convergence.png", "perturbation.png", "results.json"):
        assert (out / name).exists()
