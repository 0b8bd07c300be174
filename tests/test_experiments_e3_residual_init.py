"""E3 tiny (digits, ResNet-14 ×0.5 at init): the residual stream's variance by block and the
loss at init, the claims' directions. A block computes x + F(x); with zero_init_last F(x) = 0 at
init, so Var(x_l) = Var(x_{l−1}) exactly; with MSRA init and no norm Var F(x) ≈ Var x, so Var
grows by a factor per block; with BN (batch statistics) Var F(x) is about constant, so Var grows
by a steady increment."""

import math

import numpy as np
import pytest

from normlab.reports.experiment import load_experiment


@pytest.fixture(scope="module")
def e3(tmp_path_factory):
    out = tmp_path_factory.mktemp("e3")
    return load_experiment("e3_residual_init").main(["--tiny", "--out", str(out)]), out


def test_stream_variance_identity_and_growth_with_and_without_bn(e3):
    var = {k: np.asarray(v) for k, v in e3[0]["variances"].items()}
    stage1 = slice(0, 5)  # the stem and the 4 blocks of stage 1 (no projection in between)
    for label in ("v2, no norm, zero_init_last", "v2, BN, zero_init_last",
                  "v1, BN, zero_init_last (γ = 0)"):
        np.testing.assert_allclose(var[label][stage1], var[label][0], rtol=1e-5, err_msg=label)
    plain, bn = var["v2, no norm, standard (MSRA)"], var["v2, BN, standard (MSRA)"]
    assert np.all(np.diff(plain) > 0)  # grows at every block, across stages too
    assert (plain[4] / plain[0]) ** (1 / 4) > 1.3  # ×1.3-2 per block (zero padding loses some)
    assert plain[-1] / plain[0] > 10 * bn[-1] / bn[0]  # BN keeps it bounded
    assert np.all(np.diff(bn[stage1]) > 0)


def test_loss_at_init_chance_with_zero_init_far_above_without(e3):
    results, out = e3
    loss = results["init_loss"]
    assert loss["v2, no norm, zero_init_last"] == pytest.approx(math.log(10), abs=0.5)
    assert loss["v2, no norm, standard (MSRA)"] > loss["v2, no norm, zero_init_last"] + 0.5
    assert {v["verdict"] for v in results["verdicts"]} == {"reproduced"}
    assert results["runs"] == {}  # --tiny trains nothing
    assert "| zero_init_last: every block is the identity at init |" in (
        out / "report.md").read_text()
    assert (out / "stream_variance.png").exists()
