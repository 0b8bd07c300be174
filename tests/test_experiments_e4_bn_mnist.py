"""E4 tiny (digits, 600 steps): the BN net beats the same net without BN at the same lr."""

from pathlib import Path

import pytest

from normlab.reports.experiment import load_experiment

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.mark.slow
def test_e4_tiny_bn_trains_faster(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(DATA))
    monkeypatch.setenv("NORMLAB_TFDS_DIR", str(tmp_path / "tfds"))
    out = tmp_path / "e4"
    results = load_experiment("e4_bn_mnist").main(["--tiny", "--out", str(out)])
    lr = results["lr_star"]
    plain, bn = results["nets"][f"no BN (lr {lr:g})"], results["nets"][f"BN (lr {lr:g})"]
    assert bn["final_test_accuracy"] > plain["final_test_accuracy"] + 0.1
    # higher test accuracy at every evaluation after the first few hundred steps
    late = [(s, a, b) for s, a, b in zip(bn["steps"], plain["test_accuracy"],
                                         bn["test_accuracy"], strict=True) if s >= 300]
    assert all(b > a for _, a, b in late)
    assert bn["steps_to"]["0.9"] is not None and plain["steps_to"]["0.9"] is None
    text = (out / "report.md").read_text()
    assert "## At the baseline's best learning rate" in text and "| git revision |" in text
    for name in ("test_accuracy.png", "sigmoid_input_percentiles.png", "results.json"):
        assert (out / name).exists()
