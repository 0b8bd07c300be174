"""E2 tiny (digits, 30 × 32 plain ReLU): the verdict's two comparisons. At init the
pre-activation std is kept per layer with Kaiming and shrinks by 1/√2 per layer with LeCun
("Xavier"): Var(y_{l+1}) = fan_in·Var(W)·E[relu(y_l)²] = fan_in·Var(W)·Var(y_l)/2. In training,
Kaiming leaves the chance plateau and LeCun does not (its signal at layer 30 is ~2^-15 of the
input's)."""

import math

import pytest

from normlab.reports.experiment import load_experiment

CHANCE = math.log(10.0)


@pytest.fixture(scope="module")
def e2(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2")
    return load_experiment("e2_depth").main(["--tiny", "--out", str(out)]), out


def test_init_std_per_layer_kept_by_kaiming_halved_variance_by_lecun(e2):
    std = e2[0]["init_preact_std"]
    assert len(std["Kaiming"]) == 30
    factor = {k: (v[-1] / v[0]) ** (1 / 29) for k, v in std.items()}
    assert factor["LeCun (\"Xavier\")"] == pytest.approx(2**-0.5, abs=0.06)
    assert factor["Kaiming"] == pytest.approx(1.0, abs=0.1)


def test_kaiming_leaves_the_plateau_lecun_stalls(e2):
    results, out = e2
    kaiming = results["runs"]["Kaiming, plain"]
    lecun = results["runs"]["LeCun (\"Xavier\"), plain"]
    assert kaiming["plateau_exit"] is not None and kaiming["loss@end"] < 2.0
    assert lecun["plateau_exit"] is None and lecun["loss@end"] == pytest.approx(CHANCE, abs=0.05)
    text = (out / "report.md").read_text()
    assert "| at init, std per layer ×1 (Kaiming) vs ×1/√2 (LeCun) |" in text
    assert "| plain net: Kaiming trains, LeCun stalls |" in text
    assert "preliminary: reproduced" in text
    assert (out / "training.png").exists() and (out / "preact_std_at_init.png").exists()
