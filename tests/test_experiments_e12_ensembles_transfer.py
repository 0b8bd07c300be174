"""E12 tiny (digits, 8 runs of 200-400 steps): the ensembles part end to end, and every verdict
it stores is the comparison recomputed here from its per-seed numbers (NumPy, scipy's Welch).

Only the robust directions are asserted of the nets themselves: each of the 2 independent
ensembles of 2 nets has a higher accuracy and a lower NLL than its average member (the NLL part
holds for any members, by Jensen's inequality: what the test adds is that the ensemble
evaluation averages real trained members, group by group), and so has each snapshot ensemble
against its own snapshots. Whether an ensemble beats its best member, or one longer net, is
left to the verdicts, checked against the numbers. The transfer part (b) is not run by --tiny
(its verdicts are "not tested" there): its choice of (lr, step) on val and its two verdicts are
checked on made-up numbers against a by-hand choice and scipy's Welch CIs; its conv config
(configs/e12_conv_transfer.py) is checked to name the splits the verdicts state.
"""

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from normlab.reports.experiment import load_experiment

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _welch_p(a, b) -> float:
    return stats.ttest_ind(np.asarray(a, np.float64), np.asarray(b, np.float64),
                           equal_var=False).pvalue


@pytest.mark.slow
def test_e12_tiny_ensembles(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(DATA))
    monkeypatch.setenv("NORMLAB_TFDS_DIR", str(tmp_path / "tfds"))
    out = tmp_path / "e12"
    results = load_experiment("e12_ensembles_transfer").main(["--tiny", "--out", str(out)])
    ens = results["ensembles"]
    assert len(ens["single_accuracy"]) == 4 and len(ens["by_size_accuracy"]) == 2
    assert len(ens["long_accuracies"]) == 2 and len(ens["snapshot_ensemble_accuracy"]) == 2
    groups = list(zip(ens["group_ensemble_accuracy"], ens["group_ensemble_nll"],
                      ens["group_member_accuracy"], ens["group_member_nll"], strict=True))
    assert len(groups) == 2
    for acc, nll, m_acc, m_nll in groups:
        assert len(m_acc) == 2 and acc > np.mean(m_acc) and nll < np.mean(m_nll)
    assert np.all(np.less(ens["snapshot_ensemble_nll"], ens["snapshot_member_nll"]))

    claims = {v["claim"]: v for v in results["verdicts"]}
    assert len(claims) == 6
    best = claims["an ensemble of 2 nets beats its best member (accuracy and NLL), in every "
                  "independent ensemble"]
    wins = sum(acc > max(m_acc) and nll < min(m_nll) for acc, nll, m_acc, m_nll in groups)
    assert best["n"] == 2 and best["evidence"].startswith(f"{wins} of 2 ensembles")
    assert best["verdict"] == ("reproduced" if wins == 2 else "not reproduced")

    longer = claims["an ensemble of 2 nets beats one net trained 2× longer (accuracy and NLL)"]
    e_acc, e_nll = [g[0] for g in groups], [g[1] for g in groups]
    beats = (np.mean(e_acc) > np.mean(ens["long_accuracies"])
             and np.mean(e_nll) < np.mean(ens["long_nlls"])
             and _welch_p(e_acc, ens["long_accuracies"]) < 0.05
             and _welch_p(e_nll, ens["long_nlls"]) < 0.05)
    assert longer["n"] == 2 and longer["verdict"] == ("reproduced" if beats else "not reproduced")

    for key, name, sign in (("accuracy", "accuracy", 1), ("nll", "NLL", -1)):
        snap, single = ens[f"snapshot_ensemble_{key}"], ens[f"snapshot_single_{key}"]
        claim = claims[f"a snapshot ensemble beats one run of the same length ({name})"]
        beats = sign * (np.mean(snap) - np.mean(single)) > 0 and _welch_p(snap, single) < 0.05
        assert claim["n"] == 2 and claim["verdict"] == ("reproduced" if beats else
                                                        "not reproduced")
    transfer = load_experiment("e12_ensembles_transfer").TRANSFER
    for claim in (transfer.CLAIM_FEW, transfer.CLAIM_MANY):
        assert claims[claim]["verdict"] == "not tested" and claims[claim]["n"] is None

    text = (out / "report.md").read_text()
    assert "## (a) Ensembles vs single nets" in text and "| git revision |" in text
    assert "(b) Transfer with few labels: not run" in text and "--tiny: the conv" in text
    assert "| training runs | 8 runs" in text
    for name in ("ensembles.png", "snapshot_run.png", "results.json"):
        assert (out / name).exists()


def test_transfer_choice_is_the_best_seed_mean_val_point_with_every_seed():
    """lr 0.1 at step 100 has the best val values but a seed without one (diverged): not
    eligible; the best eligible seed-mean is lr 0.1 at step 200 (0.75 > 0.6), and the test
    accuracy reported is that point's, not the best test point (lr 0.01, step 100)."""
    transfer = load_experiment("e12_ensembles_transfer").TRANSFER
    curves = {"lrs": [0.01, 0.1], "steps": [100, 200],
              "val": [[[0.50, 0.60], [0.50, 0.62], [0.52, 0.58]],
                      [[0.95, 0.70], [None, 0.90], [0.95, 0.65]]],
              "test": [[[0.99, 0.60], [0.99, 0.61], [0.99, 0.59]],
                       [[0.90, 0.71], [None, 0.72], [0.90, 0.69]]]}
    c = transfer.choose(curves)
    assert (c["lr"], c["step"]) == (0.1, 200) and c["test"] == [0.71, 0.72, 0.69]
    assert c["val_mean"] == pytest.approx((0.70 + 0.90 + 0.65) / 3, rel=1e-15)
    curves["val"][1][1][0] = 0.60  # seed 1 has a value there now: 2.5 / 3 > 0.75
    assert (transfer.choose(curves)["lr"], transfer.choose(curves)["step"]) == (0.1, 100)


def _one_point(test: list[float]) -> dict:
    return {"lrs": [0.03], "steps": [200], "val": [[[0.5] for _ in test]],
            "test": [[[t] for t in test]]}


def test_transfer_verdicts_are_the_welch_cis_of_the_test_accuracies():
    """Made-up test accuracies (5 seeds): with 100 labels frozen clearly beats scratch and
    fine-tuned does not (its CI crosses 0): partly reproduced; with 1,000 labels fine-tuned
    clearly beats frozen: reproduced. The CIs are scipy's Welch intervals."""
    transfer = load_experiment("e12_ensembles_transfer").TRANSFER
    acc = {"scratch_n100": [0.40, 0.42, 0.41, 0.43, 0.39],
           "frozen_n100": [0.55, 0.56, 0.54, 0.57, 0.55],
           "finetune_n100": [0.35, 0.50, 0.41, 0.46, 0.38],
           "scratch_n1000": [0.60, 0.61, 0.62, 0.60, 0.59],
           "frozen_n1000": [0.62, 0.63, 0.61, 0.62, 0.64],
           "finetune_n1000": [0.70, 0.71, 0.69, 0.72, 0.70]}
    results = {"curves": {k: _one_point(v) for k, v in acc.items()}}
    few, many = transfer.transfer_verdicts(results, "unused")

    def ci(a, b):
        r = stats.ttest_ind(np.asarray(a, np.float64), np.asarray(b, np.float64),
                            equal_var=False)
        return r.confidence_interval(0.95)

    frozen = ci(acc["frozen_n100"], acc["scratch_n100"])
    tuned = ci(acc["finetune_n100"], acc["scratch_n100"])
    assert frozen.low > 0 and tuned.low < 0 < tuned.high
    assert few.verdict == "partly reproduced" and few.n == 5
    assert f"[{100 * frozen.low:+.1f}, {100 * frozen.high:+.1f}]" in few.evidence
    assert f"[{100 * tuned.low:+.1f}, {100 * tuned.high:+.1f}]" in few.evidence
    more = ci(acc["finetune_n1000"], acc["frozen_n1000"])
    assert more.low > 0 and many.verdict == "reproduced" and many.n == 5
    assert f"+8.0 points, 95% CI [{100 * more.low:+.1f}, {100 * more.high:+.1f}]" in many.evidence
    not_run = transfer.transfer_verdicts(None, "why")
    assert [v.verdict for v in not_run] == ["not tested"] * 2


def test_conv_transfer_configs_name_the_splits_the_verdict_describes():
    """configs/e12_conv_transfer.py (not run on CPU: the "not tested" verdict states its cost):
    source on classes 0-4, targets on the first n images of classes 5-9, val held out of the
    target's training images (disjoint from every target's training split), test = test."""
    from normlab.config import load_config
    from normlab.train.validate import validate

    spec = f"{Path(__file__).resolve().parents[1]}/configs/e12_conv_transfer.py"
    source = load_config(f"{spec}:num_seeds=5")
    target = load_config(f"{spec}:target,labels=100,lr=0.03,freeze,source=runs/s/seeds/0")
    for c in (source, target):
        validate(c)
        assert c.dataset == "cifar10" and c.model.name == "resnet8"
        assert c.model.width_multiplier == 0.5 and dict(c.evals) == {
            "val": "train[22500:]", "test": "test"}
    assert (source.classes, source.train_split, source.num_seeds) == ("0,1,2,3,4",
                                                                      "train[:22500]", 5)
    assert source.total_steps == 30 * 176 and source.lr == 0.1 and not source.init_from.workdir
    assert (target.classes, target.train_split, target.batch_size) == ("5,6,7,8,9",
                                                                       "train[:100]", 100)
    assert target.lr == 0.03 and target.total_steps == 1_000
    assert target.init_from.workdir == "runs/s/seeds/0" and target.init_from.freeze_backbone
    with pytest.raises(ValueError, match="a target trains on 1..22500 images"):
        load_config(f"{spec}:target,labels=22501")
