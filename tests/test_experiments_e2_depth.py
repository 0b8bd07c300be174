"""E2 tiny (digits, 30 × 32 ReLU): Kaiming leaves the chance plateau, LeCun/"Xavier" stalls."""

import math
from pathlib import Path

import pytest

from normlab.reports.experiment import load_experiment

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
CHANCE = math.log(10.0)


@pytest.mark.slow
def test_e2_tiny_kaiming_trains_lecun_stalls(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(DATA))
    monkeypatch.setenv("NORMLAB_TFDS_DIR", str(tmp_path / "tfds"))
    out = tmp_path / "e2"
    results = load_experiment("e2_depth").main(["--tiny", "--out", str(out)])
    kaiming = results["runs"]["Kaiming, plain"]
    lecun = results["runs"]["LeCun (\"Xavier\"), plain"]
    assert kaiming["plateau_exit"] is not None and kaiming["loss@end"] < 2.0
    assert lecun["plateau_exit"] is None and lecun["loss@end"] == pytest.approx(CHANCE, abs=0.05)
    # at init the pre-activation std shrinks by 1/√2 per layer with LeCun, not with Kaiming
    std = results["init_preact_std"]
    lecun_factor = (std["LeCun (\"Xavier\")"][-1] / std["LeCun (\"Xavier\")"][0]) ** (1 / 29)
    kaiming_factor = (std["Kaiming"][-1] / std["Kaiming"][0]) ** (1 / 29)
    assert lecun_factor == pytest.approx(2**-0.5, abs=0.06)
    assert kaiming_factor > 0.9
    text = (out / "report.md").read_text()
    assert "| git revision |" in text and "training.png" in text
    assert (out / "training.png").exists() and (out / "preact_std_at_init.png").exists()
