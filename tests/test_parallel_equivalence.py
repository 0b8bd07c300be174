"""One device, 8-way data parallel (jit and pmap), 4×2 data × model and 2 data × 4 stages agree.

A few SGD steps of the same MLP on the same batches, assembled by `build_run` exactly as the
trainer assembles them, must give the same losses and parameters to float32 tolerance, with BN
(global scope) and with GN + Proxy Norm. The parameters must really be sharded as configured,
and the compiled step must contain the collectives each kind of parallelism needs.

The reference is the single-device run itself (the math is checked against NumPy elsewhere:
tests/test_models.py, tests/test_batch_norm.py); what is tested here is that distributing the
step does not change it. Tolerances: float32 summation order differs between layouts (a few
ulp per reduction). Gradients here reach |g| ≈ 7 (lr 0.1), so a few-ulp difference per step,
~1e-6·|g|, moves parameters (of order 0.1-1) by ~1e-6 over 3 steps: atol 1e-5. A real
distribution bug (a missing or doubled reduction, wrong BN statistics) moves them by
~lr·|g| ≈ 0.1. A bias right before BN has a true gradient of 0: its gradient is rounding noise.
"""

import re

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from normlab.train.defaults import base_config
from normlab.train.run import build_run

BATCH, STEPS = 16, 3
NORMS = {
    "batch": dict(norm="batch"),
    # groups of 8 channels: with 4-channel groups of a random 16-wide layer some group variances
    # are tiny, and 1/σ then amplifies rounding ~10× per step (conditioning, not parallelism)
    "group+proxy": dict(norm="group+proxy", norm_kwargs={"num_groups": 2}),
}
MODES = {
    "1 device": dict(mesh={"data": 1}, devices=1),
    "data 8 (jit)": dict(mesh={"data": 8}),
    "data 8 (pmap)": dict(mesh={"data": 8}, mode="pmap"),
    "data 4 × model 2": dict(mesh={"data": 4, "model": 2}),
    "data 2 × stage 4": dict(mesh={"data": 2, "stage": 4}),
}


def _config(norm, mesh, mode="jit", microbatches=1):
    """STEPS steps of plain SGD (lr 0.1) on the built-in digits, a 5-layer 16-wide ReLU MLP."""
    c = base_config()
    c.dataset, c.evals = "digits", {"eval": "test"}
    c.model = {"name": "mlp", "depth": 5, "width": 16, "activation": "relu", **NORMS[norm]}
    c.lr, c.batch_size, c.total_steps, c.steps_per_call = 0.1, BATCH, STEPS, STEPS
    c.log_every_steps = c.eval_every_steps = c.checkpoint_every_steps = STEPS
    c.mesh, c.parallel_mode = {"data": 1, "model": 1, "stage": 1, **mesh}, mode
    c.pipeline.microbatches = microbatches
    return c


_RUNS: dict = {}


def run(norm, mesh, mode="jit", devices=None, microbatches=1):
    """STEPS SGD steps; returns (losses, canonical state, run-layout state, compiled HLO).

    Cached: the sharding and HLO tests inspect the runs the equivalence test made.
    """
    key = (norm, tuple(sorted(mesh.items())), mode, devices, microbatches)
    if key not in _RUNS:
        _RUNS[key] = _run(norm, mesh, mode, devices, microbatches)
    return _RUNS[key]


_INITS: dict = {}


def _initial_state(norm):
    """One initial state per norm, on the host, placed into every mode's layout (compiling
    each mode's own init would cost seconds each)."""
    if norm not in _INITS:
        one = build_run(_config(norm, {"data": 1}), jax.devices()[:1])
        _INITS[norm] = jax.device_get(one.canonical())
    return _INITS[norm]


def _run(norm, mesh, mode, devices, microbatches):
    """The run as `normlab train` builds it (`build_run`), from the shared initial state."""
    config = _config(norm, mesh, mode, microbatches)
    r = build_run(config, jax.devices()[:devices] if devices else None,
                  initial=_initial_state(norm))
    args = (r.state, *r.data.chunk_args(0, STEPS))
    hlo = ""
    if mode == "jit":
        compiled = r.chunk.lower(*args).compile()
        hlo = compiled.as_text()
        state, metrics = compiled(*args)
    else:
        state, metrics = r.chunk(*args)
    r.state = state
    return np.asarray(metrics["train_loss"]), r.canonical(), state, hlo


def _host(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.slow
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_all_modes_agree_with_one_device(norm):
    ref_loss, ref_state, _, _ = run(norm, **MODES["1 device"])
    assert np.all(np.isfinite(ref_loss)) and ref_loss[-1] != ref_loss[0]  # it really trained
    for name, kwargs in MODES.items():
        if name == "1 device":
            continue
        # BN inside a pipeline normalizes microbatches: M = 1 keeps the math of one device
        micro = 2 if (norm != "batch" and "stage" in kwargs["mesh"]) else 1
        loss, state, _, _ = run(norm, microbatches=micro, **kwargs)
        np.testing.assert_allclose(loss, ref_loss, rtol=2e-6, err_msg=name)
        for a, b in zip(_host(state.params), _host(ref_state.params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)
        for a, b in zip(_host(state.batch_stats), _host(ref_state.batch_stats), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


def _mesh_groups(text: str) -> str:
    """XLA's iota form of replica groups, e.g. `mesh['axis_0'=4,'axis_1'=2] {'axis_0'}` (with
    an optional `device_ids=([4,2]T(1,0))`: the devices an iota of that shape, transposed),
    written out as explicit groups "{{0,2,4,6},{1,3,5,7}}": one group per value of the other
    axes, over the listed axes."""
    axes = re.match(r"mesh\[([^\]]*)\]", text).group(1)
    names = re.findall(r"'(\w+)'=\d+", axes)
    sizes = [int(n) for n in re.findall(r"=(\d+)", axes)]
    ids = re.search(r"device_ids=\(\[([0-9,]+)\]T\(([0-9,]+)\)\)", text)
    if ids:
        shape, perm = ([int(n) for n in g.split(",")] for g in ids.groups())
        devices = np.arange(np.prod(shape)).reshape(shape).transpose(perm).reshape(sizes)
    else:
        devices = np.arange(np.prod(sizes)).reshape(sizes)
    over = [names.index(n) for n in re.findall(r"'(\w+)'", text.split("}")[0].split("{")[-1])]
    rest = [i for i in range(len(sizes)) if i not in over]
    groups = devices.transpose(rest + over).reshape(-1, int(np.prod([sizes[i] for i in over])))
    return "{" + ",".join("{" + ",".join(map(str, g)) + "}" for g in groups) + "}"


def _groups(hlo: str, op: str) -> set[str]:
    """The replica/source-target groups of every `op` in the HLO text, as explicit groups
    (XLA prints groups it can describe as an iota over a mesh in that shorter form)."""
    pattern = rf"\b{op}(?:-start)?\(.*?(?:replica_groups|source_target_pairs)=(\{{[{{}}0-9,]*\}})"
    mesh = rf"\b{op}(?:-start)?\(.*?replica_groups=(mesh\[[^\]]*\][^{{]*\{{[^}}]*\}})"
    return set(re.findall(pattern, hlo)) | {_mesh_groups(m) for m in re.findall(mesh, hlo)}


def test_data_parallel_shards_the_batch_and_all_reduces():
    _, _, state, hlo = run("batch", mesh={"data": 8})
    assert state.params["layer_00"]["dense"]["kernel"].sharding.is_fully_replicated
    assert "all-reduce" in hlo  # gradient (and BN statistics) reductions over the 8 devices


def test_tensor_parallel_shards_parameters_by_logical_axes():
    _, _, state, hlo = run("batch", mesh={"data": 4, "model": 2})
    params = state.params
    # Megatron: layer_00 column-parallel, layer_01 row-parallel, norm params along channels
    assert params["layer_00"]["dense"]["kernel"].sharding.spec == P(None, "model")
    assert params["layer_00"]["dense"]["bias"].sharding.spec == P("model")
    assert params["layer_00"]["norm_act"]["norm"]["scale"].sharding.spec == P("model")
    assert params["layer_01"]["dense"]["kernel"].sharding.spec == P("model", None)
    assert params["layer_01"]["norm_act"]["norm"]["bias"].sharding.spec == P(None)
    assert params["head"]["kernel"].sharding.spec == P("model", None)  # after 5 layers: mlp
    shard = params["layer_00"]["dense"]["kernel"].addressable_shards[0].data
    assert shard.shape == (64, 8)  # (in = 8×8 pixels, out / 2)
    # device (d, m) is d·2 + m: model groups {0,1},{2,3},..., data groups {0,2,4,6},{1,3,5,7}
    model_groups, data_groups = "{{0,1},{2,3},{4,5},{6,7}}", "{{0,2,4,6},{1,3,5,7}}"
    model_ops = set().union(*(_groups(hlo, op) for op in ("all-reduce", "all-gather",
                                                          "reduce-scatter")))
    assert model_groups in model_ops  # row-parallel partial sums reduced over `model`
    assert data_groups in _groups(hlo, "all-reduce")  # gradients reduced over `data`


def test_pipeline_stacks_runs_over_stages_and_permutes():
    _, _, state, hlo = run("group+proxy", mesh={"data": 2, "stage": 4}, microbatches=2)
    stacked = state.params["layer_01..layer_04"]["dense"]["kernel"]
    assert stacked.shape == (4, 16, 16)
    assert stacked.sharding.spec == P("stage")
    assert stacked.addressable_shards[0].data.shape == (1, 16, 16)  # one layer per stage
    assert state.params["layer_00"]["dense"]["kernel"].sharding.spec == P()
    # device (d, s) is d·4 + s: microbatches move stage s → s+1 within each data shard
    assert "{{0,1},{1,2},{2,3},{4,5},{5,6},{6,7}}" in _groups(hlo, "collective-permute")
