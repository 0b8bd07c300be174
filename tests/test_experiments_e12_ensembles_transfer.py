"""E12 tiny (digits): ensembles beat their members; a transferred backbone beats scratch.

At this size (300-step runs) only the robust directions are checked: the ensemble of 3
independent nets has a higher accuracy and a lower NLL than its average member, the snapshot
ensemble a lower NLL than its average snapshot, and with 32 labels a backbone trained on the
other 1,000 digits (frozen or fine-tuned) beats training from scratch by a wide margin.
"""

from pathlib import Path

import numpy as np
import pytest

from normlab.reports.experiment import load_experiment

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.mark.slow
def test_e12_tiny_ensembles_and_transfer(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(DATA))
    monkeypatch.setenv("NORMLAB_TFDS_DIR", str(tmp_path / "tfds"))
    out = tmp_path / "e12"
    results = load_experiment("e12_ensembles_transfer").main(["--tiny", "--out", str(out)])
    ens = results["ensembles"]
    assert ens["ensemble_accuracy"] > np.mean(ens["single_accuracy"])
    assert ens["ensemble_nll"] < np.mean(ens["single_nll"])
    assert len(ens["by_size_accuracy"]) == 3
    assert np.mean(ens["snapshot_ensemble_nll"]) < np.mean(ens["snapshot_member_nll"])
    (table,) = results["transfer"].values()
    scratch = np.mean(table["scratch"]["32"])
    assert np.mean(table["frozen backbone"]["32"]) > scratch + 0.05
    assert np.mean(table["fine-tuned"]["32"]) > scratch + 0.05
    text = (out / "report.md").read_text()
    assert "## (a) Ensembles vs single nets" in text and "| git revision |" in text
    assert "### (b) Transfer" in text and "| training runs | 9 runs" in text
    for name in ("ensembles.png", "snapshot_run.png", "transfer.png", "results.json"):
        assert (out / name).exists()
