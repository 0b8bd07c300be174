"""BatchNorm statistics scopes (SPEC §1.1) under jit sharding, shard_map and pmap, against NumPy.

A batch of 32 rows on 8 devices (4 rows each). Each scope normalizes every subset of rows with
that subset's own mean and biased variance (float64 NumPy reference, written from the formula):
  global: all 32 rows · per_device: rows 4d..4d+3 · ghost(G): rows Gk..Gk+G−1 whatever the
  device count · groups(2): rows 0..15 (devices 0-3) and 16..31 (devices 4-7).
With momentum 0 the running statistics are the step's statistics: the mean over subsets of their
means and of their variances (in the mapped modes after the trainer's pmean across devices).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from normlab.models.mlp import MLP
from normlab.models.vgg import VGG
from normlab.nn.norms import BatchNorm
from normlab.parallel.bn_scope import bn_scope_kwargs, scoped_norm_kwargs
from normlab.parallel.mesh import build_mesh
from normlab.parallel.plan import ParallelPlan
from normlab.train.defaults import base_config

B, C, EPS = 32, 3, 1e-5


def _x():
    rng = np.random.default_rng(0)
    # a different offset and scale per row block, so that wrong subsets give wrong statistics
    shift = np.repeat(rng.normal(size=(8, 1)) * 3, 4, axis=0)
    scale = np.repeat(rng.uniform(0.5, 2, size=(8, 1)), 4, axis=0)
    return (rng.normal(size=(B, C)) * scale + shift).astype(np.float32)


def ref(x, subset_size):
    """(y, running mean, running var) with statistics over consecutive subsets of rows."""
    x = x.astype(np.float64).reshape(-1, subset_size, C)
    mean, var = x.mean(1, keepdims=True), x.var(1, keepdims=True)
    y = (x - mean) / np.sqrt(var + EPS)
    return y.reshape(B, C), mean.mean((0, 1)), var.mean((0, 1))


SUBSET = {"global": 32, "per_device": 4, "ghost": 2, "groups": 16}
ARGS = dict(global_batch=B, ghost_batch_size=2, groups=2)


def run_jit(scope, data=8, ghost=2):
    kwargs = bn_scope_kwargs(scope, mapped=False, data_size=data, **{**ARGS, "ghost_batch_size":
                                                                    ghost})
    bn = BatchNorm(momentum=0.0, epsilon=EPS, **kwargs)
    x = _x()
    variables = bn.init(jax.random.key(0), x)
    mesh = build_mesh({"data": data}, jax.devices()[:data])
    x_sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
    y, upd = jax.jit(lambda v, x: bn.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x_sharded
    )
    stats = upd["batch_stats"]
    return np.asarray(y), np.asarray(stats["mean"]), np.asarray(stats["var"])


def run_mapped(scope, how):
    """y and the per-device running statistics (8, C) under shard_map or pmap."""
    bn = BatchNorm(momentum=0.0, epsilon=EPS, **bn_scope_kwargs(scope, mapped=True, data_size=8,
                                                                **ARGS))
    x = _x()
    variables = bn.init(jax.random.key(0), x[:4])  # collectives are skipped while initializing

    def local(x):
        y, upd = bn.apply(variables, x, train=True, mutable=["batch_stats"])
        return y, upd["batch_stats"]["mean"][None], upd["batch_stats"]["var"][None]

    if how == "pmap":
        y, mean, var = jax.pmap(local, axis_name="data")(x.reshape(8, 4, C))
        mean, var = mean[:, 0], var[:, 0]
    else:
        mesh = build_mesh({"data": 8})
        y, mean, var = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P("data"),
                                             out_specs=P("data")))(x)
    return np.asarray(y).reshape(B, C), np.asarray(mean), np.asarray(var)


@pytest.mark.parametrize("scope", sorted(SUBSET))
def test_jit_scopes_match_numpy(scope):
    y, mean, var = run_jit(scope)
    y_ref, mean_ref, var_ref = ref(_x(), SUBSET[scope])
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, var_ref, rtol=1e-5)


@pytest.mark.parametrize("how", ["shard_map", "pmap"])
@pytest.mark.parametrize("scope", sorted(SUBSET))
def test_mapped_scopes_match_numpy(scope, how):
    y, mean_D, var_D = run_mapped(scope, how)
    y_ref, mean_ref, var_ref = ref(_x(), SUBSET[scope])
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    # the trainer averages running statistics over the devices after each mapped step
    np.testing.assert_allclose(mean_D.mean(0), mean_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var_D.mean(0), var_ref, rtol=1e-5)
    if scope in ("per_device", "groups"):  # before that average: each device's own subset
        size = SUBSET[scope]
        x = _x().astype(np.float64)
        for device in range(8):
            rows = x[device * 4 // size * size:][:size]
            np.testing.assert_allclose(var_D[device], rows.var(0), rtol=1e-5)


def test_ghost_batches_do_not_depend_on_the_device_count():
    y_ref, mean_ref, var_ref = ref(_x(), 8)
    for data in (1, 2, 8):  # a ghost batch of 8 spans 2 devices' rows when data=8
        y, mean, var = run_jit("ghost", data=data, ghost=8)
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(var, var_ref, rtol=1e-5)


def test_scope_keyword_arguments():
    assert bn_scope_kwargs("global", mapped=False, global_batch=64, data_size=8) == {}
    assert bn_scope_kwargs("global", mapped=True, global_batch=64, data_size=8) == {
        "axis_name": "data"
    }
    assert bn_scope_kwargs("per_device", mapped=False, global_batch=64, data_size=8) == {
        "ghost_batch_size": 8
    }
    assert bn_scope_kwargs("groups", mapped=True, global_batch=64, data_size=4, groups=2) == {
        "axis_name": "data", "axis_index_groups": [[0, 1], [2, 3]]
    }
    # inside a pipeline a mapped norm sees microbatches: B/(D·M) rows
    with pytest.raises(ValueError, match="ghost_batch_size >= 1 dividing the 4 examples"):
        bn_scope_kwargs("ghost", mapped=True, global_batch=64, data_size=4, microbatches=4,
                        ghost_batch_size=8)


def test_plan_passes_the_scope_to_the_model():
    c = base_config()
    c.batch_size, c.bn_scope, c.ghost_batch_size = 32, "ghost", 4
    model, run_model = ParallelPlan.from_config(c).adapt_model(MLP(norm="batch"))
    assert model.norm_kwargs == {"ghost_batch_size": 4} and run_model is model
    c.parallel_mode, c.bn_scope = "pmap", "global"
    model, _ = ParallelPlan.from_config(c).adapt_model(MLP(norm="batch", norm_kwargs={
        "momentum": 0.9}))
    assert model.norm_kwargs == {"momentum": 0.9, "axis_name": "data"}
    model, _ = ParallelPlan.from_config(c).adapt_model(MLP(norm="group", norm_kwargs={
        "num_groups": 2}))
    assert model.norm_kwargs == {"num_groups": 2}  # no batch statistics: nothing to add
    model, _ = ParallelPlan.from_config(c).adapt_model(VGG(fc_norm="batch"))
    assert model.norm_kwargs == model.fc_norm_kwargs == {"axis_name": "data"}  # every norm
    with pytest.raises(ValueError, match="needs a model whose norms are fields"):
        ParallelPlan.from_config(c).adapt_model(nn.Dense(3))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(scope="ghost", ghost_batch_size=5), "ghost_batch_size >= 1 dividing the global"),
        (dict(scope="ghost", ghost_batch_size=0), "ghost_batch_size >= 1"),
        (dict(scope="groups", groups=3), "bn_groups >= 1 dividing the 8 devices"),
        (dict(scope="ghostly"), "unknown bn_scope 'ghostly'; valid: global, per_device"),
    ],
)
def test_bad_scopes(kwargs, match):
    scope = kwargs.pop("scope")
    with pytest.raises(ValueError, match=match):
        bn_scope_kwargs(scope, mapped=False, global_batch=B, data_size=8, **kwargs)


def test_scopes_need_a_batch_norm():
    with pytest.raises(ValueError, match="bn_scope='per_device' needs a norm with batch"):
        scoped_norm_kwargs("group", {}, "per_device", {"ghost_batch_size": 4})
    with pytest.raises(ValueError, match=r"norm='batch_renorm' has no \['ghost_batch_size'\]"):
        scoped_norm_kwargs("batch_renorm", {}, "ghost", {"ghost_batch_size": 4})
    with pytest.raises(ValueError, match=r"model.norm_kwargs sets \['axis_name'\]"):
        scoped_norm_kwargs("batch", {"axis_name": "x"}, "global", {})


def test_mapped_batch_norm_has_no_statistics_outside_a_mapped_axis():
    """Why the scopes differ by mode: under plain jit, a mapped axis name is unbound."""
    bn = BatchNorm(axis_name="data")
    variables = bn.init(jax.random.key(0), jnp.ones((4, C)))
    with pytest.raises(NameError, match="unbound axis name"):
        jax.jit(lambda v: bn.apply(v, jnp.ones((4, C)), train=True, mutable=["batch_stats"]))(
            variables
        )
