"""E12 tiny (digits): ensembles beat their members; the transfer part is not run.

At this size (300-step runs) only the robust directions are checked: each of the 2 independent
ensembles of 3 nets has a higher accuracy and a lower NLL than its average member (the NLL part
holds for any members, by Jensen's inequality: what the test adds is that the ensemble
evaluation averages real trained members, group by group), and the verdicts read the groups.
The MLP transfer is not trained (it cannot test the lecture's claim): its verdict is
"not tested".
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
    assert len(ens["single_accuracy"]) == 6 and len(ens["group_ensemble_accuracy"]) == 2
    for acc, nll, m_acc, m_nll in zip(ens["group_ensemble_accuracy"], ens["group_ensemble_nll"],
                                      ens["group_member_accuracy"], ens["group_member_nll"],
                                      strict=True):
        assert len(m_acc) == 3 and acc > np.mean(m_acc) and nll < np.mean(m_nll)
    assert results["transfer"] == {}
    claims = {v["claim"]: v for v in results["verdicts"]}
    assert claims["an ensemble of 3 nets beats its best member (accuracy and NLL), in every "
                  "independent ensemble"]["n"] == 2
    transfer = "with few target labels a transferred backbone (frozen) beats training from scratch"
    assert claims[transfer]["verdict"] == "not tested"
    text = (out / "report.md").read_text()
    assert "## (a) Ensembles vs single nets" in text and "| git revision |" in text
    assert "(b) Transfer with few labels: not run" in text and "| training runs | 9 runs" in text
    for name in ("ensembles.png", "snapshot_run.png", "results.json"):
        assert (out / name).exists()
