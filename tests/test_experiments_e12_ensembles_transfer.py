"""E12 tiny (digits): ensembles beat their members; a transferred backbone beats scratch.

At this size (300-step runs) only the robust directions are checked: the ensemble of 3
independently trained nets has a higher accuracy and a lower NLL than its average member (the
NLL part holds for any members, by Jensen's inequality: what the test adds is that the
ensemble evaluation averages real trained members), and with 32 labels a backbone trained on
the other 1,000 digits (frozen or fine-tuned) beats training from scratch by a wide margin —
where the frozen run really holds the source's backbone, unchanged by 300 steps of training,
and the fine-tuned one starts from it.
"""


from pathlib import Path

import jax
import numpy as np
import pytest

from normlab.reports.experiment import load_experiment
from normlab.train.saved import load_saved

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _backbone(workdir):
    """(flattened backbone params and BN statistics, head params) of a saved run."""
    state = load_saved(workdir).state
    flat = {jax.tree_util.keystr(p): np.asarray(x, np.float64) for p, x in
            jax.tree_util.tree_leaves_with_path({"params": state.params,
                                                 "stats": state.batch_stats})}
    head = {k: v for k, v in flat.items() if "'head'" in k}
    return {k: v for k, v in flat.items() if k not in head}, head


def _distance(a: dict, b: dict) -> float:
    return float(np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in a)))


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
    runs = out / "runs"
    source, source_head = _backbone(runs / "source_digits")
    frozen, frozen_head = _backbone(runs / "digits_frozen_n32_s0")
    tuned, _ = _backbone(runs / "digits_fine-tuned_n32_s0")
    scratch, _ = _backbone(runs / "digits_scratch_n32_s0")
    assert frozen and frozen_head and frozen.keys() == source.keys()
    for key, value in source.items():  # loaded, then exactly zero updates (BN stats included)
        np.testing.assert_array_equal(frozen[key], value, err_msg=key)
    assert _distance(frozen_head, source_head) > 0  # the new head did train
    # fine-tuning starts from the source: after training it is still far nearer to it than a
    # net trained from its own random init
    assert _distance(tuned, source) < 0.5 * _distance(scratch, source)

    text = (out / "report.md").read_text()
    assert "## (a) Ensembles vs single nets" in text and "| git revision |" in text
    assert "### (b) Transfer" in text and "| training runs | 9 runs" in text
    for name in ("ensembles.png", "snapshot_run.png", "transfer.png", "results.json"):
        assert (out / name).exists()
