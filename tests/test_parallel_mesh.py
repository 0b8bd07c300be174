"""Mesh and parallel config checks, logical-axis rules, a tensor-parallel ResNet, launcher args.

Every bad shape or rule must fail before anything compiles, with a message naming the field and
the value; logical annotations must cost nothing outside the annotation context.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from normlab.models.mlp import MLP
from normlab.models.resnet import ResNet
from normlab.nn.logical import activation_sharding, annotating, constrain, logical_to_mesh
from normlab.parallel.distributed import initialize, under_slurm
from normlab.parallel.logical import DEFAULT_RULES, parse_rules
from normlab.parallel.mesh import build_mesh, resolve_axis_sizes
from normlab.parallel.plan import ParallelPlan
from normlab.train.defaults import base_config
from normlab.train.state import init_state
from normlab.train.validate import validate


def _config(**fields):
    c = base_config()
    c.batch_size = 16
    for name, value in fields.items():
        c[name] = value
    return c


def test_mesh_sizes():
    assert resolve_axis_sizes({"data": -1, "model": 2}, 8) == {"data": 4, "model": 2, "stage": 1}
    mesh = build_mesh({"data": 2, "model": 2, "stage": 2})
    assert mesh.axis_names == ("data", "model", "stage") and mesh.devices.shape == (2, 2, 2)
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize(
    "sizes, match",
    [
        ({"data": 3, "model": 2}, r"uses 6 devices, but 8 are available"),
        ({"data": -1, "model": -1}, "at most one axis may be -1"),
        ({"data": -1, "model": 3}, "cannot be split"),
        ({"data": 0}, "'data' must be positive or -1, got 0"),
    ],
)
def test_bad_mesh_shapes(sizes, match):
    with pytest.raises(ValueError, match=match):
        ParallelPlan.from_config(_config(mesh=sizes))


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(batch_size=12), "batch_size=12 is not divisible by the 8 devices"),
        (dict(parallel_mode="pjit"), "unknown parallel_mode 'pjit'; valid: jit, pmap"),
        (dict(parallel_mode="pmap", mesh={"data": 4, "model": 2}), "pmap' is data parallelism"),
        (dict(bn_scope="ghost", ghost_batch_size=3), "ghost_batch_size >= 1 dividing"),
        (dict(sharding_rules=(("mlp", "tensor"),)), "mesh axis 'tensor'; valid mesh axes"),
    ],
)
def test_bad_parallel_configs_fail_before_compiling(fields, match):
    with pytest.raises(ValueError, match=match):
        ParallelPlan.from_config(_config(**fields))


def test_validate_checks_the_parallel_fields():
    c = _config(bn_scope="local")
    c.total_steps = 10
    with pytest.raises(ValueError, match="unknown bn_scope 'local'"):
        validate(c)


def test_rules():
    assert parse_rules([["batch", "data"], ("mlp", "model"), ("mlp", "model")]) == (
        ("batch", "data"), ("mlp", "model"))
    assert logical_to_mesh(("embed", "mlp"), DEFAULT_RULES) == P(None, "model")
    assert logical_to_mesh((None, "batch"), DEFAULT_RULES) == P(None, "data")
    with pytest.raises(ValueError, match="conflicting rules for logical axis 'mlp': 'model' and"):
        parse_rules([("mlp", "model"), ("mlp", "data")])
    with pytest.raises(ValueError, match="each rule must be a"):
        parse_rules([("mlp", "model", "data")])
    with pytest.raises(ValueError, match="no rule for logical axis 'heads'"):
        logical_to_mesh(("heads",), DEFAULT_RULES)
    with pytest.raises(ValueError, match="logical axes 'embed' and 'mlp' both map to mesh axis"):
        logical_to_mesh(("embed", "mlp"), (("embed", "model"), ("mlp", "model")))


def _init_fn(model, example_x):
    return lambda: init_state(model, optax.sgd(0.1), jax.random.PRNGKey(0), example_x)


def test_a_rule_conflict_inside_a_parameter_is_an_error():
    rules = (("batch", "data"), ("embed", "model"), ("mlp", "model"), ("classes", None))
    plan = ParallelPlan.from_config(_config(mesh={"data": 4, "model": 2}, sharding_rules=rules))
    model, _ = plan.adapt_model(MLP(depth=2, width=8))
    with pytest.raises(ValueError, match=r"params/layer_00/dense/kernel: logical axes 'embed' and"):
        plan.abstract(_init_fn(model, np.zeros((1, 4))), model, np.zeros((1, 4)))


def test_annotations_only_inside_their_contexts():
    model = MLP(depth=2, width=8)
    x = jnp.ones((2, 4))
    def init():
        return model.init(jax.random.key(0), x, train=False)

    plain = jax.jit(init)()
    with annotating():  # read while tracing
        boxed = jax.jit(init)()
    assert isinstance(plain["params"]["layer_00"]["dense"]["kernel"], jax.Array)
    unboxed = nn.meta.unbox(boxed)
    assert jax.tree.structure(unboxed) == jax.tree.structure(plain)
    for a, b in zip(jax.tree.leaves(unboxed), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(a, b)
    assert constrain(x, ("batch", "mlp")) is x
    mesh = build_mesh({"data": 4, "model": 2})
    with activation_sharding(mesh, DEFAULT_RULES):
        y = jax.jit(lambda x: constrain(x * 2, ("batch", "mlp")))(jnp.ones((8, 4)))
    assert y.sharding == NamedSharding(mesh, P("data", "model"))


def test_tensor_parallel_resnet_shards_convs_and_matches_one_device():
    resnet = ResNet(stage_sizes=(1, 1), base_width=4, cifar_stem=True, num_classes=3,
                    norm="batch")
    x = jax.random.normal(jax.random.key(1), (8, 6, 6, 3))
    states = {}
    for name, sizes, devices in [("tp", {"data": 4, "model": 2}, None),
                                 ("one", {"data": 1}, jax.devices()[:1])]:
        plan = ParallelPlan.from_config(_config(batch_size=8, mesh=sizes), devices)
        model, _ = plan.adapt_model(resnet)
        example = np.zeros((1, 6, 6, 3))
        abstract = plan.abstract(_init_fn(model, example), model, example)
        states[name] = abstract
    params = states["tp"].params
    block = params["layer_01"]
    assert block["conv1"]["kernel"].sharding.spec == P(None, None, None, "model")  # column
    assert block["conv2"]["kernel"].sharding.spec == P(None, None, "model", None)  # row
    assert block["norm_act2"]["norm"]["scale"].sharding.spec == P(None)  # conv2 out: embed
    assert block["norm_act1"]["norm"]["scale"].sharding.spec == P("model")  # conv1 out: mlp
    assert params["layer_02"]["conv_shortcut"]["kernel"].sharding.spec == P(None, None, None,
                                                                            None)
    # The same forward pass on the 4×2 mesh with those shardings and on one device. Random
    # parameters of the abstract shapes: compiling the ResNet's init costs seconds here.
    rng = np.random.default_rng(0)
    values = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32) * 0.5, params)
    stats = jax.tree.map(lambda a: np.ones(a.shape, np.float32), states["tp"].batch_stats)
    placed = jax.device_put(values, jax.tree.map(lambda a: a.sharding, params))

    def forward(params, x):
        variables = {"params": params, "batch_stats": stats}
        return resnet.apply(variables, x, train=True, mutable=["batch_stats"])[0]

    mesh = params["head"]["kernel"].sharding.mesh
    with activation_sharding(mesh, DEFAULT_RULES):  # read while tracing: its own jit
        got = jax.jit(lambda p, x: forward(p, x))(placed, x)
    ref = jax.jit(forward)(values, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_distributed_arguments():
    assert initialize() is False or under_slurm()  # a plain run: nothing to join
    with pytest.raises(ValueError, match="give all of --coordinator, --num-processes and"):
        initialize("127.0.0.1:1234")
    with pytest.raises(ValueError, match="0 <= process_id < num_processes"):
        initialize("127.0.0.1:1234", 2, 2)
    with pytest.raises(ValueError, match="coordinator must be host:port"):
        initialize("127.0.0.1", 2, 0)
