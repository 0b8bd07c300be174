"""E8 tiny (digits, 300 steps): SGD, momentum and Adam at their default learning rates all
train the net to similar accuracy, and a cosine decay stops the late fluctuation of the test
accuracy that a constant learning rate keeps."""

from pathlib import Path

import pytest

from normlab.reports.experiment import load_experiment

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.mark.slow
def test_e8_tiny_optimizers_train_and_cosine_settles(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(DATA))
    monkeypatch.setenv("NORMLAB_TFDS_DIR", str(tmp_path / "tfds"))
    out = tmp_path / "e8"
    results = load_experiment("e8_optimizers").main(["--tiny", "--out", str(out)])
    opts = results["optimizers"]
    assert set(opts) == {"sgd", "momentum", "adam"}
    finals = [k["mean_test_accuracy"] for k in opts.values()]
    assert min(finals) > 0.85 and max(finals) - min(finals) < 0.05  # chance is 0.1
    assert all(k["median_steps_to"]["0.85"] is not None for k in opts.values())
    constant, cosine = results["schedules"]["constant"], results["schedules"]["cosine"]
    assert constant["lr"] == cosine["lr"] == results["lr_star"]["momentum"]
    # the lr decays to 0: the last quarter's evaluations barely move, the constant lr's do
    assert cosine["late_std"] < 0.5 * constant["late_std"]
    text = (out / "report.md").read_text()
    assert "## Schedules" in text and "| git revision |" in text
    for name in ("optimizers.png", "schedules.png", "lr_grid.png", "results.json"):
        assert (out / name).exists()
