"""E9 tiny (1,000 CIFAR-10 images, linear classifier, lr 0.1, 300 steps): raw pixels at the lr
that centered ones train well with end with a far higher training loss (the mean inflates the
curvature); and with raw pixels the loss reacts more to a small random perturbation of the
weights, through its curvature (even) part above all. Whitening's identity covariance is
tests/test_preprocess.py's."""

from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from normlab.reports.experiment import experiments_dir, load_experiment, sibling_module

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _report_step():
    return sibling_module(experiments_dir() / "e9_preprocessing" / "run.py", "e9_report")


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "cifar10" / "data_batch_1.npz").is_file(),
                    reason=f"CIFAR-10 archives not found in {DATA}")  # as the other data tests
def test_e9_tiny_centering_trains_where_raw_pixels_do_not(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(DATA))
    monkeypatch.setenv("NORMLAB_TFDS_DIR", str(tmp_path / "tfds"))
    out = tmp_path / "e9"
    e9 = load_experiment("e9_preprocessing")
    results = e9.main(["--tiny", "--out", str(out)])
    preps, sens = results["preps"], results["sensitivity"]
    assert {p: r["lr"] for p, r in preps.items()} == {"none": 0.1, "zero_center": 0.1}
    # the same lr and steps: centered inputs train (below chance's ln 10 = 2.3), raw ones do not
    # one seed (tiny): every per-seed list holds one value
    assert results["seeds"] == [0]
    [centered_loss], [raw_loss] = (preps[p]["final_train_loss"] for p in ("zero_center", "none"))
    assert centered_loss < 1.5 < 2.3 < raw_loss
    assert preps["zero_center"]["steps_to_loss"]["1.8"] != [None]
    assert preps["none"]["steps_to_loss"]["1.8"] == [None]

    assert sens["none"]["mean_share"] > 0.5 > 0.05 > sens["zero_center"]["mean_share"]
    main = e9.EPSILONS.index(_report_step().MAIN_EPSILON)
    for when in ("init", "trained"):
        raw, centered = (sens[p]["seeds"][0][when]["eps"] for p in ("none", "zero_center"))
        # the curvature along random directions grows with E‖x‖², which the mean inflates
        # (read at ε = 0.1: below ε = 1e-2 the even part, ≲ 1e-6, is float32 rounding of L)
        assert raw[3]["second_order"] > 2 * centered[3]["second_order"] > 0, when
        # small perturbations: ΔL's odd part grows like ε (10× per decade), its even part like
        # ε² (100× per decade): they are the first- and second-order terms they claim to be
        assert 9 < raw[1]["first_order"] / raw[0]["first_order"] < 11, when
        # (the even part is read where it stands above float32 rounding: ε = 1e-2 and 1e-1)
        assert 90 < raw[3]["second_order"] / raw[2]["second_order"] < 110, when
    assert sens["none"]["seeds"][0]["init"]["eps"][main]["mean_abs"] > 2 * sens["zero_center"][
        "seeds"][0]["init"]["eps"][main]["mean_abs"]

    text = (out / "report.md").read_text()
    assert "## Loss change under a small random perturbation of the weights" in text
    assert "| it ends with a lower training loss |" in text
    assert "| 1 | preliminary: reproduced |" in text and "| git revision |" in text
    for name in ("convergence.png", "perturbation.png", "results.json"):
        assert (out / name).exists()


def test_e9_lower_is_a_welch_comparison_and_exact_without_spread():
    e9 = _report_step()
    a, b = [1.0, 1.2, 1.1], [2.0, 2.3, 2.1]
    # Welch from the formula: t = Δmean / sqrt(va/na + vb/nb), Welch–Satterthwaite dof
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 3
    t = (np.mean(a) - np.mean(b)) / np.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    won, p = e9.lower(a, b)
    assert won and p == pytest.approx(2 * scipy_stats.t.sf(abs(t), dof), rel=1e-12)
    assert e9.lower(b, a)[0] is False  # the claimed direction matters
    assert e9.lower([150.0] * 5, [900.0] * 5) == (True, 0.0)  # steps on the 50-step grid
    assert e9.lower([150.0] * 5, [150.0] * 5) == (False, 1.0)
    assert e9.lower([1.0, 5.0], [1.1, 5.1])[0] is False  # within noise
