"""E6 tiny (digits, part (a) only): the power decomposition of a random 8-layer conv net at init,
the comparisons (a)'s verdicts make. LN normalizes over the channels of one example, so the
per-channel means μ_c of its conv outputs survive and add up with depth: the squared-mean share
E_c[μ_c²]/E[y²] dominates; Proxy Norm (and BN, which removes μ_c over the batch) keeps it small.
IN removes every example's per-channel mean, so the instance means stop varying across
examples."""

import numpy as np
import pytest

from normlab.reports.experiment import experiments_dir, load_experiment, sibling_module


@pytest.fixture(scope="module")
def e6(tmp_path_factory):
    out = tmp_path_factory.mktemp("e6")
    return load_experiment("e6_norms").main(["--tiny", "--out", str(out)]), out


def test_ln_squared_mean_share_far_above_ln_pn_and_bn_in_every_random_net(e6):
    sq = {label: r["norm_input"]["sq_mean_share"] for label, r in e6[0]["last_layer"].items()}
    assert len(sq["LN"]) == 2  # one value per random net (seed)
    for i in range(2):
        assert sq["LN"][i] > 0.5
        for fixed in ("BN", "LN+PN"):
            assert sq[fixed][i] < 0.5 * sq["LN"][i]
        assert sq["LN+PN"][i] < 0.1 * sq["LN"][i]
    # the curves are the mean over the nets; the last layer is the per-net values' mean
    mean_last = e6[0]["power"]["LN"]["norm_input"]["sq_mean_share"][-1]
    assert mean_last == pytest.approx(sum(sq["LN"]) / 2, rel=1e-12)


def test_seeds_in_one_program_are_the_separate_random_nets():
    e6_power = sibling_module(experiments_dir() / "e6_norms" / "run.py", "e6_power")
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype(np.float32)
    both = e6_power.power_by_depth(x, "LN", depth=3, width=8, seeds=[0, 1])
    alone = e6_power.power_by_depth(x, "LN", depth=3, width=8, seeds=[1])[0]
    np.testing.assert_allclose(both[1]["preact"]["sq_mean_share"],
                               alone["preact"]["sq_mean_share"], rtol=1e-6)
    assert both[0]["preact"]["sq_mean_share"] != both[1]["preact"]["sq_mean_share"]


def test_in_instance_means_do_not_vary_across_examples(e6):
    results, out = e6
    power = results["power"]
    # IN's pre-activations have instance mean β_c for every example, exactly
    assert max(power["IN"]["preact"]["instance_mean_var_share"]) < 1e-6
    assert (power["IN"]["norm_input"]["instance_mean_var_share"][-1]
            < 0.2 * power["BN"]["norm_input"]["instance_mean_var_share"][-1])
    inst = {label: r["norm_input"]["instance_mean_var_share"]
            for label, r in results["last_layer"].items()}
    assert all(i < 0.2 * b for i, b in zip(inst["IN"], inst["BN"], strict=True))
    assert [v["verdict"] for v in results["verdicts"]] == ["reproduced", "reproduced",
                                                           "not tested"]
    text = (out / "report.md").read_text()
    assert "## (a) Power plots" in text and "preliminary: reproduced" in text
    assert (out / "power_by_depth.png").stat().st_size > 0
