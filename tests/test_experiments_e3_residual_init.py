"""E3 tiny (digits, ResNet-14): the residual stream's variance at init and the first loss."""

from pathlib import Path

import numpy as np
import pytest

from normlab.reports.experiment import load_experiment

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.mark.slow
def test_e3_tiny_stream_variance_and_first_loss(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(DATA))
    monkeypatch.setenv("NORMLAB_TFDS_DIR", str(tmp_path / "tfds"))
    out = tmp_path / "e3"
    results = load_experiment("e3_residual_init").main(["--tiny", "--out", str(out)])
    var = {k: np.asarray(v) for k, v in results["variances"].items()}
    stage1 = slice(0, 3)  # the stem and the 2 blocks of stage 1 (no projection in between)
    # zero_init_last: every block is the identity at init, Var(x + F(x)) = Var(x) exactly
    for label in ("v2, no norm, zero_init_last", "v2, BN, zero_init_last",
                  "v1, BN, zero_init_last (γ = 0)"):
        np.testing.assert_allclose(var[label][stage1], var[label][0], rtol=1e-5, err_msg=label)
    # the standard init adds the branch's variance: ×(1 + Var F/Var x) per block
    growth = var["v2, no norm, standard (MSRA)"][2] / var["v2, no norm, standard (MSRA)"][0]
    assert growth > 2.0  # two blocks, each ×~1.6-2 (zero padding of 8×8 images loses some)
    assert var["v2, BN, standard (MSRA)"][2] > 1.2 * var["v2, BN, standard (MSRA)"][0]
    # the exploded no-norm stream starts far above the chance loss; zero init starts near it
    first = {k: r["train_loss"][0] for k, r in results["runs"].items()}
    assert first["no norm, standard"] > first["no norm, zero_init_last"] + 0.1
    assert first["no norm, zero_init_last"] == pytest.approx(np.log(10), abs=0.5)
    assert (out / "stream_variance.png").exists() and (out / "early_training.png").exists()
