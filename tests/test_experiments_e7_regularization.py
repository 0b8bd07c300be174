"""E7 tiny (digits, 300 training images): dropout and mixup shrink the train/test gap of an MLP
that memorizes its training set; inverted and classic dropout agree at test time."""

from pathlib import Path

import pytest

from normlab.reports.experiment import load_experiment

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.mark.slow
def test_e7_tiny_regularizers_shrink_the_gap(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(DATA))
    monkeypatch.setenv("NORMLAB_TFDS_DIR", str(tmp_path / "tfds"))
    out = tmp_path / "e7"
    results = load_experiment("e7_regularization").main(["--tiny", "--out", str(out)])
    base = results["methods"]["baseline"]["mean"]
    assert base["train"] > 0.99 and base["gap"] > 0.08  # memorized, with a large gap
    for method in ("dropout", "mixup"):
        assert results["methods"][method]["delta_gap"] < 0
        assert results["methods"][method]["delta_test"] > 0

    check = results["dropout_check"]
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
        assert row["all"]["relative_error"][-1] < row["all"]["relative_error"][0]

    text = (out / "report.md").read_text()
    assert "## MLP: train/test accuracy and gap per regularizer" in text
    assert "| git revision |" in text
    for name in ("regularizers.png", "dropout_expectation.png", "results.json"):
        assert (out / name).exists()
