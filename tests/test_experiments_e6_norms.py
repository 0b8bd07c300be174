"""E6 tiny: the direction of the normalization comparison on digits (seconds, not the claim's
size: the committed report is the full run)."""

from pathlib import Path

import pytest

from normlab.reports.experiment import load_experiment

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.mark.slow
def test_e6_tiny_power_and_training(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(DATA))
    monkeypatch.setenv("NORMLAB_TFDS_DIR", str(tmp_path / "tfds"))
    out = tmp_path / "e6"
    results = load_experiment("e6_norms").main(["--tiny", "--out", str(out)])
    last = {label: {m: v[-1] for m, v in r["norm_input"].items()}
            for label, r in results["power"].items()}
    # LN's failure mode: the channel-wise squared mean dominates the deep norm inputs, far
    # more than with BN or with Proxy Norm on top of the same LN / GN.
    assert last["LN"]["sq_mean_share"] > 0.5
    for fixed in ("BN", "LN+PN", "GN+PN"):
        assert last[fixed]["sq_mean_share"] < 0.5 * last["LN"]["sq_mean_share"]
    # IN's failure mode: the instance means of its pre-activations are (β_c) for every example
    # exactly, and the conv outputs after it barely vary across examples, unlike BN's.
    assert max(results["power"]["IN"]["preact"]["instance_mean_var_share"]) < 1e-6
    assert last["IN"]["instance_mean_var_share"] < 0.2 * last["BN"]["instance_mean_var_share"]
    # training: both norms ran at both batches and learned something on 10 classes
    for label in ("BN", "GN+PN"):
        assert results["table"][label][128]["val_mean"] > 0.1
    text = (out / "report.md").read_text()
    assert "## (a) Power plots" in text and "| git revision |" in text
    assert (out / "power_by_depth.png").stat().st_size > 0
