"""GPipe over the `stage` axis: microbatch BatchNorm, layouts, a pipelined ResNet, bad shapes.

The MLP pipeline is compared with one device in tests/test_parallel_equivalence.py; here:
BatchNorm inside a pipeline normalizes each microbatch (checked against a float64 NumPy
reference over the right rows), the stacked layout round-trips (optimizer state included), a
ResNet's runs of blocks pipeline to the same loss and gradients as the plain model, and shapes
that cannot be pipelined fail with a clear message.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from normlab.models.cnn import SmallCNN
from normlab.models.mlp import MLP
from normlab.models.resnet import ResNet
from normlab.nn.norms import BatchNorm
from normlab.nn.segments import Repeated
from normlab.parallel.mesh import build_mesh
from normlab.parallel.pipeline import PipelinedModel
from normlab.parallel.plan import ParallelPlan
from normlab.train.defaults import base_config

EPS = 1e-3


class BNStack(nn.Module):
    """`depth` BatchNorm layers in a row (momentum 0: running stats = the step's stats)."""

    depth: int = 4
    norm: str = "batch"
    norm_kwargs: Any = None

    def _bn(self, **kw):
        return BatchNorm(momentum=0.0, epsilon=EPS, **dict(self.norm_kwargs or {}), **kw)

    @nn.compact
    def __call__(self, x, *, train):
        for i in range(self.depth):
            x = self._bn(name=f"layer_{i}")(x, train=train)
        return x

    def pipeline_segments(self):
        return [Repeated(tuple(f"layer_{i}" for i in range(self.depth)), self._bn(parent=None))]


def test_batch_norm_in_a_pipeline_normalizes_microbatches():
    mesh = build_mesh({"data": 2, "stage": 4})
    model = PipelinedModel(BNStack(norm_kwargs={"axis_name": "data"}), mesh, microbatches=2)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(16, 3)) * rng.uniform(0.5, 3, (16, 1)) + rng.normal(size=(16, 1)))
    x = x.astype(np.float32)
    variables = model.stack(model.canonical.init(jax.random.key(0), x, train=False))
    y, updates = jax.jit(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])
    )(variables, x)
    stats = model.unstack(updates["batch_stats"])
    # Data shard d holds rows 8d..8d+7; microbatch m is rows 4m..4m+3 of every shard, and the
    # global scope normalizes it over all shards: rows {8d + 4m + i : d ∈ {0, 1}, i < 4}.
    y_ref = np.empty((16, 3))
    means, variances = np.zeros((4, 3)), np.zeros((4, 3))
    for m in range(2):
        rows = [8 * d + 4 * m + i for d in range(2) for i in range(4)]
        h = x[rows].astype(np.float64)
        for layer in range(4):
            mean, var = h.mean(0), h.var(0)
            means[layer] += mean / 2
            variances[layer] += var / 2
            h = (h - mean) / np.sqrt(var + EPS)
        y_ref[rows] = h
    np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-5, atol=1e-5)
    for layer in range(4):
        got = stats[f"layer_{layer}"]
        np.testing.assert_allclose(np.asarray(got["mean"]), means[layer], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(got["var"]), variances[layer], rtol=1e-5)
    assert not np.allclose(variances[0], x.astype(np.float64).var(0), rtol=1e-3)  # ≠ whole batch


def test_stacked_layout_round_trips_with_the_optimizer_state():
    mesh = build_mesh({"data": 4, "stage": 2})
    model = PipelinedModel(MLP(depth=5, width=8, norm="batch"), mesh, microbatches=1)
    shapes = jax.eval_shape(lambda: model.canonical.init(jax.random.key(0), jnp.ones((2, 6)),
                                                       train=False))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), shapes)
    opt_state = optax.adam(1e-3).init(variables["params"])
    opt_state = jax.tree.map(lambda a: a + rng.normal(size=np.shape(a)), opt_state)
    tree = {"variables": variables, "opt": opt_state}
    stacked = model.stack(tree)
    kernel = stacked["variables"]["params"]["layer_01..layer_04"]["dense"]["kernel"]
    assert kernel.shape == (4, 8, 8) and "layer_02" not in stacked["variables"]["params"]
    assert stacked["opt"][0].mu["layer_01..layer_04"]["dense"]["kernel"].shape == (4, 8, 8)
    assert stacked["variables"]["batch_stats"]["layer_01..layer_04"]["norm_act"]["norm"][
        "mean"].shape == (4, 8)
    back = model.unstack(stacked)
    assert jax.tree.structure(back) == jax.tree.structure(tree)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(tree), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_pipelined_resnet_matches_the_plain_model():
    resnet = ResNet(stage_sizes=(3,), base_width=4, cifar_stem=True, preact=True,
                    num_classes=5, norm="group", norm_kwargs={"num_groups": 2})
    model = PipelinedModel(resnet, build_mesh({"data": 4, "stage": 2}), microbatches=2)
    names = [s.names for s in model.segments if isinstance(s, Repeated)]
    assert names == [("layer_02", "layer_03")]  # blocks 1..n−1 of the stage
    x = jax.random.normal(jax.random.key(1), (8, 4, 4, 3))
    # random values of the init's shapes: compiling a ResNet's init costs seconds here
    shapes = jax.eval_shape(lambda: resnet.init(jax.random.key(0), x, train=False))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32) * 0.3, shapes)

    def loss(apply, params, variables):
        return jnp.mean(apply({**variables, "params": params}, x, train=True) ** 2)

    ref, ref_grads = jax.jit(jax.value_and_grad(lambda p, v: loss(resnet.apply, p, v)))(
        variables["params"], variables
    )
    stacked = model.stack(variables)
    got, grads = jax.jit(jax.value_and_grad(lambda p, v: loss(model.apply, p, v)))(
        stacked["params"], stacked
    )
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(ref_grads))
    for a, b in zip(jax.tree.leaves(model.unstack(grads)), jax.tree.leaves(ref_grads),
                    strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5 * scale)  # float32 sums of 8·4·4 terms


def _plan(**fields):
    c = base_config()
    c.batch_size = 16
    for name, value in fields.items():
        if name == "microbatches":
            c.pipeline.microbatches = value
        else:
            c[name] = value
    return ParallelPlan.from_config(c)


@pytest.mark.parametrize(
    "model, mesh, match",
    [
        (MLP(depth=4, width=8), {"data": 4, "stage": 2},
         r"3 identical layers layer_01..layer_03 are not divisible by mesh.stage=2"),
        (MLP(widths=(8, 8, 16)), {"data": 4, "stage": 2}, "equal width"),
        (SmallCNN(), {"data": 4, "stage": 2}, "SmallCNN cannot be pipelined"),
        (MLP(depth=5, width=8), {"data": 2, "model": 2, "stage": 2},
         "stage=2 with mesh.model=2 is not supported"),
        (ResNet(stage_sizes=(3, 3), residual_init="fixup"), {"data": 4, "stage": 2},
         "no Fixup and no stochastic depth"),
        (ResNet(stage_sizes=(2, 2)), {"data": 4, "stage": 2}, "no run of identical layers"),
    ],
)
def test_models_that_cannot_be_pipelined(model, mesh, match):
    with pytest.raises(ValueError, match=match):
        _plan(mesh=mesh).adapt_model(model)


def test_microbatches_must_split_each_data_shard():
    with pytest.raises(ValueError, match=r"microbatches=3 does not divide the 4 examples"):
        _plan(mesh={"data": 4, "stage": 2}, microbatches=3)
    with pytest.raises(ValueError, match="and 1 unless mesh.stage > 1"):
        _plan(microbatches=2)
