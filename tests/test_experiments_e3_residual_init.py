"""E3 tiny (digits, ResNet-26 ×0.5 at init, 2 seeds): the residual stream's variance by block and
the loss at init, the comparisons the verdicts make. A block computes x + F(x); with
zero_init_last F(x) = 0 at init, so Var(x_l) = Var(x_{l−1}) exactly; with MSRA init and no norm
Var F(x) ≈ Var x, so Var grows by a factor per block (log Var is linear in depth); with BN (batch
statistics) Var F(x) is about constant, so Var grows by a steady increment (Var is linear)."""

import math

import numpy as np
import pytest

from normlab.reports.experiment import load_experiment


@pytest.fixture(scope="module")
def e3(tmp_path_factory):
    out = tmp_path_factory.mktemp("e3")
    return load_experiment("e3_residual_init").main(["--tiny", "--out", str(out)]), out


def _r2(y):  # R² of the least-squares line through (0, y0), (1, y1), ...: corr(x, y)²
    return np.corrcoef(np.arange(len(y)), y)[0, 1] ** 2


def test_stream_variance_identity_and_growth_with_and_without_bn(e3):
    results = e3[0]
    assert results["setup"]["seeds"] == [0, 1]
    stage1 = slice(0, 5)  # the stem and the 4 blocks of stage 1 (no projection in between)
    plains, bns = [], []
    for seed in range(2):
        var = {k: np.asarray(v[seed], np.float64) for k, v in results["variances"].items()}
        for label in ("v2, no norm, zero_init_last", "v2, BN, zero_init_last",
                      "v1, BN, zero_init_last (γ = 0)"):
            np.testing.assert_allclose(var[label][stage1], var[label][0], rtol=1e-5,
                                       err_msg=label)
        plain, bn = var["v2, no norm, standard (MSRA)"], var["v2, BN, standard (MSRA)"]
        assert np.all(np.diff(plain) > 0)  # grows at every block, across stages too
        assert (plain[4] / plain[0]) ** (1 / 4) > 1.3  # ×1.3-2 per block (zero padding)
        assert plain[-1] / plain[0] > 10 * bn[-1] / bn[0]  # BN keeps it bounded
        assert np.all(np.diff(bn[stage1]) > 0)
        # the growth rule: log Var fits a line better without norm, Var itself with BN
        assert _r2(np.log(plain[stage1])) > _r2(plain[stage1])
        assert _r2(bn[stage1]) > _r2(np.log(bn[stage1]))
        plains.append(plain)
        bns.append(bn)
    assert not np.allclose(plains[0], plains[1])  # the seeds are independent draws


def test_loss_at_init_chance_with_zero_init_far_above_without(e3):
    results, out = e3
    loss = {k: np.asarray(v) for k, v in results["init_loss"].items()}
    # near chance (the dense head's random init adds a little), MSRA far above
    np.testing.assert_allclose(loss["v2, no norm, zero_init_last"], math.log(10), atol=1.0)
    assert np.all(loss["v2, no norm, standard (MSRA)"] > math.log(10) + 5)
    shown = [v["verdict"] for v in results["verdicts"]]
    assert shown[:3] == ["reproduced"] * 3 and shown[4] == "not tested", shown
    # MSRA far above in every seed (asserted above): at least partly; "at chance" is ±0.5
    assert shown[3] in ("reproduced", "partly reproduced"), shown
    text = (out / "report.md").read_text()
    assert "| zero_init_last: every block is the identity at init |" in text
    assert "preliminary: reproduced" in text  # n = 2
    assert (out / "stream_variance.png").exists()
