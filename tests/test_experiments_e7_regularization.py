"""E7 tiny (digits, 300 training images, a 2 × 128 MLP that memorizes them, 3 seeds): the
gap verdict's comparison — each regularizer's Δ gap with its 95% Welch CI from the per-seed
values (checked against scipy), counted when the CI lies below 0 — and dropout's Δ gap below 0.
On 297 test images the seeds' gaps spread too much for 3 seeds to put dropout's CI below 0
(its Δ gap ≈ −0.01 against a spread of ±0.011), so the test asserts the direction, and that the
verdict counts exactly the CIs below 0; the full size's 10,000 test images resolve it. Both
regularizers are really active (dropout changes the train-mode output, L2 leaves smaller
weights than no L2 after the same steps); inverted and classic dropout agree at test time."""

from pathlib import Path

import jax
import numpy as np
import pytest
from scipy import stats as scipy_stats

from normlab.reports.experiment import load_experiment
from normlab.train.saved import load_saved

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def kernel_norm(workdir: Path) -> float:
    params = load_saved(workdir).state.params
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return float(np.sqrt(sum(np.sum(np.asarray(w, np.float64) ** 2) for path, w in leaves
                             if path[-1].key == "kernel")))


@pytest.mark.slow
def test_e7_tiny_regularizers_act_and_shrink_the_gap(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(DATA))
    monkeypatch.setenv("NORMLAB_TFDS_DIR", str(tmp_path / "tfds"))
    out = tmp_path / "e7"
    e7 = load_experiment("e7_regularization")
    results = e7.main(["--tiny", "--out", str(out)])
    methods = results["methods"]
    assert set(methods) == {"baseline", "dropout", "l2"}
    assert results["seeds"] == [0, 1, 2] and all(len(m["test"]) == 3 for m in methods.values())
    base = methods["baseline"]
    assert min(base["train"]) > 0.99 and min(base["gap"]) > 0.05  # memorized, with a gap

    # the gap verdict's comparison: Δ gap with its 95% Welch CI, from the per-seed gaps
    # (scipy, independently); dropout's Δ gap below 0
    drop = methods["dropout"]
    assert drop["delta_gap"]["diff"] < 0
    for m in ("dropout", "l2"):
        for key in ("gap", "test"):
            d, a, b = methods[m][f"delta_{key}"], methods[m][key], base[key]
            ref = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval()
            assert (d["low"], d["high"]) == pytest.approx((ref.low, ref.high), rel=1e-9)
            assert d["diff"] == pytest.approx(np.mean(a) - np.mean(b), abs=1e-12)
    # the verdicts count exactly the CIs below 0 (gap) and above 0 (test accuracy)
    gap_verdict, test_verdict = e7.verdicts(results)[:2]
    below = [m for m in ("dropout", "l2") if methods[m]["delta_gap"]["high"] < 0]
    above = [m for m in ("dropout", "l2") if methods[m]["delta_test"]["low"] > 0]
    assert gap_verdict.evidence.startswith(f"{len(below)} of 2") and gap_verdict.n == 3
    assert gap_verdict.verdict == ("reproduced" if len(below) == 2 else
                                   "partly reproduced" if below else "not reproduced")
    assert test_verdict.evidence.startswith(f"{len(above)} of 2 higher")
    assert test_verdict.verdict == ("reproduced" if above else "not reproduced")
    # seed 0 of a regularizer is its grid run, the seeds after it one program
    assert drop["test"][0] == results["grid"]["dropout=0.5"]["test"]

    # L2 really acts: after the same 300 steps its kernels are smaller than the baseline's
    runs = out / "runs"
    assert kernel_norm(runs / "mlp_l2_0.005_s0") < 0.9 * kernel_norm(
        runs / "mlp_baseline_s0-2" / "seeds" / "0")

    check = results["dropout_check"]
    # dropout really acts: one mask's train-mode logits are far from the test-time ones
    assert check["inverted"]["all"]["relative_error"][0] > 0.1
    # the converted classic net is the trained inverted net at test time (float rounding)
    assert check["max_abs_diff_inverted_vs_classic_eval"] < 1e-4
    for form in ("inverted", "classic"):
        row = check[form]
        assert row["max_abs_diff_vs_library_eval"] < 1e-4
        # one dropout layer before a linear head: the mask average converges to the test-time
        # output like 1/sqrt(K) (64 masks: ~1/8 of the one-mask error)
        last = row["last"]["relative_error"]
        assert last[-1] < 0.25 * last[0]
        # through the ReLUs the test-time rule is an approximation: same class for most images
        assert row["all"]["agreement_with_eval"] > 0.9

    text = (out / "report.md").read_text()
    assert "## MLP: train/test accuracy and gap per regularizer" in text
    assert "## Stochastic depth: not tested" in text and "blocks=27" in text
    assert "| git revision |" in text
    for name in ("regularizers.png", "dropout_expectation.png", "results.json"):
        assert (out / name).exists()
