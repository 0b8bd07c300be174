"""E6 tiny (digits, part (a) only): the power decomposition of a random 8-layer conv net at init,
the comparisons (a)'s verdicts make. LN normalizes over the channels of one example, so the
per-channel means μ_c of its conv outputs survive and add up with depth: the squared-mean share
E_c[μ_c²]/E[y²] dominates; Proxy Norm (and BN, which removes μ_c over the batch) keeps it small.
IN removes every example's per-channel mean, so the instance means stop varying across
examples."""

import pytest

from normlab.reports.experiment import load_experiment


@pytest.fixture(scope="module")
def e6(tmp_path_factory):
    out = tmp_path_factory.mktemp("e6")
    return load_experiment("e6_norms").main(["--tiny", "--out", str(out)]), out


def test_ln_squared_mean_share_far_above_ln_pn_and_bn(e6):
    last = {label: {m: v[-1] for m, v in r["norm_input"].items()}
            for label, r in e6[0]["power"].items()}
    assert last["LN"]["sq_mean_share"] > 0.5
    for fixed in ("BN", "LN+PN"):
        assert last[fixed]["sq_mean_share"] < 0.5 * last["LN"]["sq_mean_share"]
    assert last["LN+PN"]["sq_mean_share"] < 0.1 * last["LN"]["sq_mean_share"]


def test_in_instance_means_do_not_vary_across_examples(e6):
    results, out = e6
    power = results["power"]
    # IN's pre-activations have instance mean β_c for every example, exactly
    assert max(power["IN"]["preact"]["instance_mean_var_share"]) < 1e-6
    assert (power["IN"]["norm_input"]["instance_mean_var_share"][-1]
            < 0.2 * power["BN"]["norm_input"]["instance_mean_var_share"][-1])
    assert [v["verdict"] for v in results["verdicts"]] == ["reproduced", "reproduced"]
    text = (out / "report.md").read_text()
    assert "## (a) Power plots" in text and "preliminary: reproduced" in text
    assert (out / "power_by_depth.png").stat().st_size > 0
