"""The benchmark harness (normlab.bench): its JSON, its statistics, its errors; and the input
gradient of the fused GN/LN + PN path the benchmark made fast, vs a float64 NumPy reference."""

import argparse
import contextlib
import io
import json
import math
from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from finite_differences import fd_grads

from normlab.bench import command
from normlab.bench.harness import (
    Timing,
    compiled_cost,
    matmul_flops_per_s,
    paired_ratio,
    time_interleaved,
)
from normlab.nn.proxy import GroupNormProxy, LayerNormProxy

PROVENANCE = {"command", "device", "time_utc", "git_revision", "load_before", "load_after"}
# The quick model run's MLP, wide and batched enough that its matmuls dominate XLA's FLOP count.
BATCH, IN, WIDTH, CLASSES = 64, 4 * 4 * 3, 64, 10
MLP = f'{{"depth": 2, "width": {WIDTH}, "activation": "relu"}}'
NORM_OPS = ["batch", "group", "group+proxy"]


def _run(tmp_path, *argv):
    """(the --json result, what was printed) of one benchmark run."""
    path = tmp_path / "out.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert command.main([*argv, "--json", str(path)]) == 0
    return json.loads(path.read_text()), out.getvalue()


@pytest.fixture(scope="module")
def norm_ops_run(tmp_path_factory):
    # the second shape has 4 channels: G = min(--groups, C) = 4 there
    return _run(tmp_path_factory.mktemp("norm_ops"), "--quick", "--norm-ops",
                "--norms", ",".join(NORM_OPS), "--shapes", "8x4x4x16,4x2x2x4")


@pytest.fixture(scope="module")
def models_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("models"), "--quick", "--norms", "batch,group+proxy",
                "--peak-tflops", "2", "--batch-sizes", str(BATCH), "--model-kwargs", MLP)


def _ordered(row, prefix):
    """The spread fields are order statistics of the same samples: min ≤ p10 ≤ median ≤ p90."""
    assert (row[f"{prefix}_min_ms"] <= row[f"{prefix}_p10_ms"] <= row[f"{prefix}_ms"]
            <= row[f"{prefix}_p90_ms"])


def test_quick_norm_ops_rows(norm_ops_run):
    result, _ = norm_ops_run
    assert set(result) >= PROVENANCE
    rows = result["norm_ops"]
    assert [(r["shape"], r["norm"]) for r in rows] == [
        (shape, norm) for shape in ([8, 4, 4, 16], [4, 2, 2, 4]) for norm in NORM_OPS]
    assert [r["norm_kwargs"].get("num_groups") for r in rows] == [None, 8, 8, None, 4, 4]
    for r in rows:
        assert r["dtype"] == "float32" and r["activation"] == "relu"
        _ordered(r, "fwd")
        _ordered(r, "fwd_bwd")
        # no flax peer in this run: no ratio to one (the suite's test has them)
        assert r["fwd_ratio_to_flax"] is r["fwd_bwd_ratio_to_flax"] is None
    for r in rows[::3]:  # BN's paired ratio to itself is exactly 1
        assert r["fwd_ratio_to_batch"] == r["fwd_bwd_ratio_to_batch"] == 1.0


def test_quick_norm_ops_summary_and_targets_follow_the_rows(norm_ops_run):
    result, _ = norm_ops_run
    rows = result["norm_ops"]
    for entry in result["norm_ops_summary"]:
        mine = [r for r in rows if r["norm"] == entry["norm"]]
        assert entry["shapes"] == 2 and entry["dtype"] == "float32"
        for mode in ("fwd", "fwd_bwd"):
            ratios = [r[f"{mode}_ratio_to_batch"] for r in mine]
            assert entry[f"{mode}_ratio_geomean"] == pytest.approx(math.sqrt(ratios[0] * ratios[1]))
            assert entry[f"{mode}_ratio_max"] == max(ratios)
    targets = {t["target"]: t for t in result["targets"]}
    assert set(targets) == {"group fwd+bwd / BN, worst shape",
                            "group+proxy fwd+bwd / BN, worst shape"}
    for norm in ("group", "group+proxy"):
        t = targets[f"{norm} fwd+bwd / BN, worst shape"]
        worst = max(r["fwd_bwd_ratio_to_batch"] for r in rows if r["norm"] == norm)
        assert t["measured"] == worst and t["threshold"] == 1.15
        assert t["met"] == (worst <= 1.15)


def test_quick_norm_ops_table_has_one_line_per_row(norm_ops_run):
    result, out = norm_ops_run
    lines = [line for line in out.splitlines() if line.startswith("| 8×4×4×16 ")
             or line.startswith("| 4×2×2×4 ")]
    assert len(lines) == len(result["norm_ops"])
    for line, r in zip(lines, result["norm_ops"], strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        kw = "".join(f", {k}={v}" for k, v in r["norm_kwargs"].items())
        assert cells[1] == "float32" and cells[2] == r["norm"] + kw
        assert cells[3].startswith(f"{r['fwd_ms']:.3f} [")
        assert cells[6].startswith(f"{r['fwd_bwd_ms']:.3f} [")
        assert cells[7] == f"{r['fwd_bwd_ratio_to_batch']:.2f}×"
        flax = r["fwd_bwd_ratio_to_flax"]
        assert cells[8] == ("–" if flax is None else f"{flax:.2f}×")


def test_quick_models_rows(models_run):
    result, out = models_run
    rows = result["models"]
    assert [r["norm"] for r in rows] == ["batch", "group+proxy"]
    # the train step's matmuls, counted by hand: forward 2·B·I·O per Dense layer, backward
    # 2·B·I·O for dW and 2·B·I·O for dx, except the first layer's dx (the input's gradient is
    # never used); norms, activations and the optimizer add a few percent at this size
    dims = [(IN, WIDTH), (WIDTH, WIDTH), (WIDTH, CLASSES)]
    matmuls = sum(6 * BATCH * i * o for i, o in dims) - 2 * BATCH * IN * WIDTH
    assert matmuls <= rows[0]["flops"] <= 1.25 * matmuls
    assert rows[1]["flops"] > rows[0]["flops"]  # Proxy Norm adds its proxy's work to GN's
    for r in rows:
        assert r["model"] == "mlp" and r["batch"] == BATCH and r["dtype"] == "float32"
        assert (r["step_min_ms"] <= r["step_p10_ms"] <= r["step_ms"] <= r["step_p90_ms"])
        seconds = r["step_ms"] / 1e3
        assert r["images_per_s"] == pytest.approx(BATCH / seconds)
        assert r["flops_per_s"] == pytest.approx(r["flops"] / seconds)
        assert r["peak_flops_per_s"] == 2e12  # given: no matmul measured
        assert r["utilization"] == pytest.approx(r["flops"] / seconds / 2e12)
        assert f"| mlp | {r['norm']} | {BATCH} | float32 | {r['step_ms']:.1f} [" in out
    assert rows[0]["ratio_to_batch"] == 1.0
    assert result["peak_flops"] == {"given_tflops": 2.0, "per_dtype": {"float32": 2e12},
                                    "matmul": {}}


def test_quick_models_pipeline_and_targets(models_run):
    result, out = models_run
    (pipe,) = result["pipeline"]
    assert pipe["norm"] == "batch" and pipe["steps_per_call"] == 2
    for mode in ("device", "resident", "streamed"):
        assert pipe[f"{mode}_step_p10_ms"] <= pipe[f"{mode}_step_ms"] <= pipe[f"{mode}_step_p90_ms"]
    targets = {t["target"].split(",")[0]: t for t in result["targets"]}
    assert set(targets) == {"step GN+PN / BN", "resident input pipeline / on-device batch"}
    step, feed = targets["step GN+PN / BN"], targets["resident input pipeline / on-device batch"]
    assert step["measured"] == result["models"][1]["ratio_to_batch"]
    assert step["met"] == (step["measured"] <= step["threshold"] == 1.15)
    assert feed["measured"] == pipe["resident_ratio"]
    assert feed["met"] == (feed["measured"] <= feed["threshold"] == 1.05)
    verdict = "MET" if feed["met"] else "NOT MET"
    assert f"target {verdict}: {feed['target']} = {feed['measured']:.3f} (threshold 1.05)" in out


def test_measured_peak_is_a_matmul():
    peak = matmul_flops_per_s(jnp.float32, 64, repeats=2)
    assert peak["size"] == 64 and peak["samples"] == 2
    assert peak["flops_per_s"] == pytest.approx(2 * 64**3 / (peak["median_ms"] / 1e3))
    assert peak["best_flops_per_s"] >= peak["flops_per_s"]


def test_timing_statistics():
    samples = (0.004, 0.001, 0.003, 0.002, 0.010)
    t = Timing(samples, calls=3)
    summary = t.summary()
    assert summary["median_ms"] == pytest.approx(3.0)
    assert summary["min_ms"] == pytest.approx(1.0)
    assert summary["p10_ms"] == pytest.approx(1e3 * np.percentile(samples, 10))
    assert summary["p90_ms"] == pytest.approx(1e3 * np.percentile(samples, 90))
    assert summary["samples"] == 5 and summary["calls_per_sample"] == 3
    # paired: repeat by repeat, so a load spike hitting both candidates cancels out
    slow = Timing(tuple(2 * s for s in samples), calls=1)
    assert paired_ratio(slow, t) == pytest.approx(2.0)
    other = Timing((0.002, 0.002, 0.006, 0.002, 0.010), calls=1)
    assert paired_ratio(other, t) == pytest.approx(float(np.median([0.5, 2, 2, 1, 1])))


def test_time_interleaved_calls_every_candidate():
    counts = {"a": 0, "b": 0}

    def make(name):
        def fn():
            counts[name] += 1
            return jnp.zeros(())
        return fn

    timings = time_interleaved({k: make(k) for k in counts}, repeats=4, warmup=2,
                               min_sample_s=0.0)
    for name, t in timings.items():
        assert len(t.samples_s) == 4 and t.calls == 1
        assert counts[name] == 2 + 1 + 4  # warm-up, sizing call, samples
    with pytest.raises(ValueError, match="repeats must be >= 1, got repeats=0"):
        time_interleaved({"a": make("a")}, repeats=0)


def test_compiled_cost_counts_matmul_flops():
    a = jnp.ones((32, 48))
    b = jnp.ones((48, 16))
    cost = compiled_cost(jax.jit(jnp.matmul).lower(a, b).compile())
    assert cost["flops"] == pytest.approx(2 * 32 * 48 * 16, rel=0.05)
    assert cost["argument_size_in_bytes"] == 4 * (32 * 48 + 48 * 16)
    assert cost["output_size_in_bytes"] == 4 * 32 * 16


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--norm-ops", "--shapes", "12x3"], "--shapes: each shape is NxHxWxC"),
        (["--repeats", "0"], "--repeats must be > 0, got --repeats=0"),
        (["--model-kwargs", "{bad"], "--model-kwargs must be a JSON object"),
        (["--model-kwargs", "[1]"], "--model-kwargs must be a JSON object, got '\\[1\\]'"),
        (["--dtypes", "int32"], "--dtypes must name float dtypes, got 'int32'"),
        (["--norms", ","], "--norms must list at least one value"),
        (["--batch-sizes", "0"], "--batch-sizes must be > 0"),
        (["--peak-tflops", "-1"], "--peak-tflops must be > 0"),
    ],
)
def test_bad_arguments(argv, match, capsys):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    with pytest.raises(ValueError, match=match):
        command.settings(parser.parse_args(argv))
    assert command.main(argv) == 1
    assert capsys.readouterr().err.startswith("error: ")


def test_unknown_norm_is_a_clear_error(capsys):
    assert command.main(["--quick", "--norm-ops", "--norms", "batch,gruop"]) == 1
    assert "unknown" in capsys.readouterr().err


def test_subcommand_wiring():
    parser = argparse.ArgumentParser(prog="normlab")
    command.add_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "--quick", "--norm-ops", "--groups", "4"])
    assert args.func is command.run and args.norm_ops and args.groups == 4


# ---- the fused GN/LN + PN path: input gradient vs float64 finite differences ----------------


ACTS = {"silu": lambda t: t / (1.0 + np.exp(-t)), "relu": lambda t: np.maximum(t, 0.0)}


def _ref_gn_pn(x, groups, act, g, b, pb, ps, n=200, eps=0.03, norm_eps=1e-5):
    """z = (φ(γ·GN(x) + β) − μ̃)/sqrt(σ̃² + ε), proxy over n Gaussian quantiles."""
    xg = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
    axes = (*range(1, x.ndim - 1), x.ndim)
    mu = xg.mean(axis=axes, keepdims=True)
    var = ((xg - mu) ** 2).mean(axis=axes, keepdims=True)
    y = ((xg - mu) / np.sqrt(var + norm_eps)).reshape(x.shape)
    phi = ACTS[act]
    u = np.array([NormalDist().inv_cdf((i + 0.5) / n) for i in range(n)])[:, None]
    a = phi(g * (pb + (1.0 + ps) * u) + b)
    return (phi(g * y + b) - a.mean(0)) / np.sqrt(a.var(0) + eps)


# relu takes the backward's shortcut for positively homogeneous φ, silu the general path
@pytest.mark.parametrize(
    ("groups", "shape", "act"),
    [(1, (2, 3, 2, 4), "relu"), (2, (2, 2, 3, 4), "silu"), (2, (3, 8), "relu")],
)
def test_fused_proxy_norm_input_gradient(groups, shape, act):
    rng = np.random.default_rng(groups)
    x = rng.normal(0.5, 1.5, shape).astype(np.float32)
    w = rng.normal(size=shape)  # a random readout: every output feeds the loss
    c = shape[-1]
    p = {"scale": rng.uniform(0.5, 1.5, c), "bias": rng.normal(0, 0.5, c),
         "proxy_bias": rng.normal(0, 0.3, c), "proxy_scale": rng.normal(0, 0.3, c)}
    module = (LayerNormProxy(activation=act) if groups == 1
              else GroupNormProxy(num_groups=groups, activation=act))
    variables = {"params": {"proxy": {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}}}
    dx = jax.jit(jax.grad(lambda x: jnp.sum(module.apply(variables, x) * w)))(jnp.asarray(x))
    params = [p[k] for k in ("scale", "bias", "proxy_bias", "proxy_scale")]
    (expected,) = fd_grads(lambda x: np.sum(_ref_gn_pn(x, groups, act, *params) * w), [x])
    # float32 sums over a few dozen terms: allow 1e-4 of the gradient's scale
    np.testing.assert_allclose(np.asarray(dx), expected, rtol=1e-4,
                               atol=1e-4 * np.max(np.abs(expected)))
    # the unfused path (taken when diagnostics record "preact") gives the same output
    z = module.apply(variables, x)
    z_diag, state = module.apply(variables, x, mutable=["intermediates"])
    assert "preact" in state["intermediates"]["proxy"]
    np.testing.assert_allclose(np.asarray(z_diag), np.asarray(z), rtol=1e-5, atol=1e-5)


# ---- the accelerator suite, --quick: every section, finite ratios (no timing asserts) -------


def test_gpu_suite_quick_has_every_section(tmp_path):
    from normlab.bench.suite import QUICK, SECTIONS, device_peak_flops

    result, out = _run(tmp_path, "--suite", "gpu", "--quick")
    suite = result["suite"]
    assert set(result) >= PROVENANCE and set(suite) >= set(SECTIONS)
    assert {(r["norm"], r["dtype"]) for r in suite["norm_ops"]} == {
        (n, d) for n in QUICK["norms"] for d in QUICK["norm_dtypes"]}
    for r in suite["norm_ops"]:
        ratios = [r["fwd_ratio_to_batch"], r["fwd_bwd_ratio_to_batch"]]
        if r["norm"] == "batch":
            ratios += [r["fwd_ratio_to_flax"], r["fwd_bwd_ratio_to_flax"]]
        assert all(math.isfinite(v) and v > 0 for v in ratios)
    (model,) = suite["models"]
    assert model["dtype"] == "bfloat16" and model["flops"] > 0
    assert model["images_per_s"] == pytest.approx(model["batch"] / (model["step_ms"] / 1e3))
    # the CPU has no datasheet peak: MFU omitted, with the note
    assert model["mfu"] is None and "no datasheet peak" in model["mfu_note"]
    assert device_peak_flops("NVIDIA H200", "bfloat16") == pytest.approx(989.4e12)
    assert device_peak_flops("TPU v5 lite", "float32") == pytest.approx(197e12)
    assert suite["input"]["streams"] and suite["input"]["transforms"]
    layouts = {p["layout"]: p for p in suite["parallel"]}
    assert set(layouts) == {"data", "tensor", "gpipe"}
    for p in layouts.values():
        assert (p["note"] is None) == (p["steps_per_s"] is not None)
        if p["note"] is None:
            assert math.isfinite(p["ratio_to_data"]) and p["steps_per_s"] > 0
    # the norm targets read the suite's rows: BN against flax's BN
    targets = {t["target"]: t for t in result["targets"]}
    for mode, name in (("fwd", "fwd"), ("fwd_bwd", "fwd+bwd")):
        t = targets[f"batch {name} / flax's, worst shape"]
        worst = max(r[f"{mode}_ratio_to_flax"] for r in suite["norm_ops"] if r["norm"] == "batch")
        assert t["measured"] == worst and t["threshold"] == 1.0 and t["met"] == (worst <= 1.0)
    table = (tmp_path / "out.md").read_text()
    assert "| model | dtype | batch | init s | compile s |" in table and "| gpipe |" in out
