"""Models: every model × a set of norms trains; MLP forward vs NumPy; ResNet structure, sizes,
residual inits, stochastic depth; layer naming (depth order) and argument errors."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from normlab.models import layer_name
from normlab.models.cnn import SmallCNN
from normlab.models.mlp import MLP
from normlab.models.resnet import ResNet
from normlab.models.vgg import VGG
from normlab.nn.dropout import StochasticDepth
from normlab.registry import CONVOLUTIONS, MODELS

NUM_CLASSES = 3
NORM_KWARGS = {
    "group": {"num_groups": 2},
    "group+proxy": {"num_groups": 2},
    "evonorm_s0": {"num_groups": 2},
}
BATCH_DEPENDENT = {"batch", "batch_renorm"}
ALL_NORMS = [
    "batch", "layer", "instance", "group", "layer+proxy", "group+proxy", "none", "frn",
    "evonorm_s0", "batch_renorm",
]
# instance norm and FRN normalize over spatial positions: they have no meaning on (N, C)
DENSE_NORMS = [n for n in ALL_NORMS if n not in ("instance", "frn")]
ACTIVATIONS = ["relu", "silu", "tanh"]
FUSED = {"frn", "evonorm_s0", "evonorm_b0"}  # norms with their own nonlinearity


def _build(model: str, norm: str, activation: str) -> nn.Module:
    kw = {
        "norm": norm,
        "activation": activation,
        "norm_kwargs": NORM_KWARGS.get(norm),
        "num_classes": NUM_CLASSES,
    }
    if model == "mlp":
        return MLP(depth=2, width=8, **kw)
    if model == "cnn":
        return SmallCNN(features=(4, 8), **kw)
    if model == "vgg":
        return VGG(stages=((4,), (8, 8)), fc_widths=(8,), dropout_rate=0.25, **kw)
    return ResNet(stage_sizes=(1, 1), base_width=4, cifar_stem=True,
                  preact=model == "resnet_v2", **kw)


# The full norm set on ResNet v1 (stem, blocks, identity-activation NormAct, projection norm),
# subsets elsewhere: every model wires its norms through the same NormAct.
CASES = (
    [("resnet_v1", n) for n in ALL_NORMS]
    + [("mlp", n) for n in ("batch", "layer+proxy", "none", "evonorm_s0", "batch_renorm")]
    + [("cnn", n) for n in ("batch", "group+proxy")]
    + [("resnet_v2", n) for n in ("batch", "group+proxy", "none")]
    + [("vgg", n) for n in ("batch", "layer+proxy")]
)


# These nets are tiny: XLA's optimization passes and fusion emitters cost far more compile time
# than they would save at run time (about 3× faster compiles).
FAST_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}


def _fast_run(fn, *args):
    """jit(fn)(*args), compiled with XLA's cheap settings (the defaults where an XLA lacks them)."""
    lowered = jax.jit(fn).lower(*args)
    try:
        compiled = lowered.compile(compiler_options=FAST_COMPILE)
    except jax.errors.JaxRuntimeError:  # an option this XLA does not know: speed only
        compiled = lowered.compile()
    return compiled(*args)


def _batch(shape=(4, 8, 8, 3)):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    labels = np.arange(shape[0]) % NUM_CLASSES
    return jnp.asarray(x), jnp.asarray(labels)


@pytest.mark.parametrize(("model_name", "norm"), CASES)
def test_init_forward_and_sgd_decreases_loss(model_name, norm):
    activation = ACTIVATIONS[CASES.index((model_name, norm)) % len(ACTIVATIONS)]
    if norm in FUSED:
        activation = "identity"
    model = _build(model_name, norm, activation)
    x, labels = _batch()
    dropout_key = jax.random.key(7)  # one fixed mask: the SGD objective is deterministic

    def loss_fn(params, state):
        logits, new_state = model.apply(
            {"params": params, **state}, x, train=True, rngs={"dropout": dropout_key},
            mutable=["batch_stats"],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (new_state, logits)

    def run(key):
        variables = model.init(key, x, train=False)
        logits_eval = model.apply(variables, x, train=False)

        def step(carry, _):
            params, state = carry
            (loss, (new_state, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, state)
            params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
            return (params, {**state, **new_state}), (loss, logits, new_state)

        state = {k: v for k, v in variables.items() if k != "params"}
        (params, state), (losses, logits, new_states) = jax.lax.scan(
            step, (variables["params"], state), None, length=5)
        first_state = jax.tree.map(lambda a: a[0], new_states)  # after one train forward
        return variables, logits[0], first_state, logits_eval, losses, loss_fn(params, state)[0]

    variables, logits_train, new_state, logits_eval, losses, final = _fast_run(
        run, jax.random.key(0))
    assert logits_train.shape == logits_eval.shape == (4, NUM_CLASSES)
    assert np.all(np.isfinite(logits_train)) and np.all(np.isfinite(logits_eval))
    assert np.all(np.isfinite(losses)) and np.isfinite(final)
    assert final < losses[0], (losses, final)
    has_stats = "batch_stats" in variables
    assert has_stats == (norm in BATCH_DEPENDENT)
    if has_stats:  # a train step moves the running statistics away from their init
        moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), variables["batch_stats"],
                             new_state["batch_stats"])
        assert all(jax.tree.leaves(moved))


def test_dense_models_reject_spatial_norms():
    x, _ = _batch()
    with pytest.raises(ValueError, match="InstanceNorm"):
        _build("mlp", "instance", "relu").init(jax.random.key(0), x, train=False)


# --------------------------------------------------------------------------- MLP vs NumPy


def _numpy_mlp(params, x, depth, norm, eps=1e-5):
    """float64 forward of Dense → (BN over the batch) → tanh, then the head; per-layer preacts."""
    h = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    preacts = []
    for i in range(depth):
        p = params[layer_name(i, depth)]
        z = h @ np.asarray(p["dense"]["kernel"], np.float64) + np.asarray(p["dense"]["bias"])
        if norm == "batch":
            bn = p["norm_act"]["norm"]
            z = (z - z.mean(0)) / np.sqrt(z.var(0) + eps) * np.asarray(bn["scale"]) + np.asarray(
                bn["bias"])
        preacts.append(z)
        h = np.tanh(z)
    head = params["head"]
    return h @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"]), preacts


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_mlp_matches_numpy_and_preacts_sort_in_depth_order(norm):
    depth = 12  # two-digit indices: "layer_10" must sort after "layer_02"
    model = MLP(depth=depth, width=5, norm=norm, activation="tanh", num_classes=4)
    x = np.random.default_rng(1).normal(size=(6, 2, 3)).astype(np.float32)
    variables = model.init(jax.random.key(3), x, train=False)
    # biases start at 0; make them nonzero so the test sees them
    params = jax.tree.map(lambda p: p + 0.1 if p.ndim == 1 else p, variables["params"])
    apply = jax.jit(lambda v, x: model.apply(v, x, train=True,
                                             mutable=["intermediates", "batch_stats"]))
    logits, state = apply({**variables, "params": params}, x)
    want_logits, want_preacts = _numpy_mlp(params, x, depth, norm)
    np.testing.assert_allclose(logits, want_logits, rtol=2e-5, atol=2e-6)
    # jax.tree flattens dicts in sorted-key order (jit returns sorted dicts as well)
    got = jax.tree.leaves(state["intermediates"])
    assert len(got) == depth
    for y, want in zip(got, want_preacts, strict=True):
        np.testing.assert_allclose(y, want, rtol=2e-5, atol=2e-6)


def test_layer_name_pads_to_sort_in_depth_order():
    assert layer_name(3, 30) == "layer_03"
    assert layer_name(3, 120) == "layer_003"
    names = [layer_name(i, 120) for i in range(120)]
    assert sorted(names) == names


# --------------------------------------------------------------------------- ResNet sizes


def _count(model, shape):
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones(shape), train=False))
    return sum(math.prod(p.shape) for p in jax.tree.leaves(shapes["params"]))


def _cifar_resnet_params(n, shortcut, classes=10):
    """Parameter count of He et al.'s CIFAR ResNet-(6n+2) with BN (γ, β), from the architecture."""
    total = 3 * 3 * 3 * 16 + 2 * 16
    c_in = 16
    for c in (16, 32, 64):
        for _ in range(n):
            total += 9 * c_in * c + 2 * c + 9 * c * c + 2 * c
            if c_in != c and shortcut == "projection":
                total += c_in * c + 2 * c
            c_in = c
    return total + 64 * classes + classes


def _imagenet_resnet_params(blocks, bottleneck, classes=1000):
    """Parameter count of torchvision's ResNet-18/34/50 (BN γ, β; no conv biases)."""
    total = 7 * 7 * 3 * 64 + 2 * 64
    c_in = 64
    for stage, n in enumerate(blocks):
        width = 64 * 2**stage
        c_out = 4 * width if bottleneck else width
        for b in range(n):
            if bottleneck:
                total += c_in * width + 9 * width * width + width * c_out + 2 * (2 * width + c_out)
            else:
                total += 9 * c_in * width + 9 * width * width + 4 * width
            if b == 0 and (stage > 0 or c_in != c_out):
                total += c_in * c_out + 2 * c_out
            c_in = c_out
    return total + c_in * classes + classes


@pytest.mark.parametrize(("shortcut", "n"), [("zero_pad", 3), ("projection", 3),
                                              ("zero_pad", 9)])
def test_cifar_resnet_param_counts(shortcut, n):
    name = f"resnet{6 * n + 2}"
    got = _count(MODELS.build(name, shortcut=shortcut), (1, 32, 32, 3))
    assert got == _cifar_resnet_params(n, shortcut)
    published = {20: 0.27e6, 56: 0.85e6}[6 * n + 2]  # He et al. 2016a, Table 6
    assert abs(got - published) / published < 0.01


@pytest.mark.parametrize(("name", "blocks", "bottleneck", "published"), [
    ("resnet18", (2, 2, 2, 2), False, 11.69e6),
    ("resnet34", (3, 4, 6, 3), False, 21.80e6),
    ("resnet50", (3, 4, 6, 3), True, 25.56e6),
])
def test_imagenet_resnet_param_counts(name, blocks, bottleneck, published):
    got = _count(MODELS.build(name), (1, 224, 224, 3))
    assert got == _imagenet_resnet_params(blocks, bottleneck)
    assert abs(got - published) / published < 0.01


# --------------------------------------------------------------------------- ResNet structure


def _captured(model, x):
    """(variables, intermediates with every module's output) of a train-mode forward at init."""

    def run(key):
        variables = model.init(key, x, train=False)
        _, state = model.apply(variables, x, train=True, capture_intermediates=True,
                               mutable=["intermediates", "batch_stats"])
        return variables, state["intermediates"]

    return _fast_run(run, jax.random.key(0))


def _out(inter, *path):
    for key in path:
        inter = inter[key]
    return np.asarray(inter["__call__"][0])


def test_preact_and_v1_structure():
    x, _ = _batch()
    kw = {"stage_sizes": (1, 1), "base_width": 4, "cifar_stem": True, "num_classes": 3}
    v1, inter1 = _captured(ResNet(**kw), x)
    v2, inter2 = _captured(ResNet(preact=True, **kw), x)
    p1, p2 = v1["params"], v2["params"]
    assert sorted(p1) == ["head", "layer_00", "layer_01", "layer_02"]
    assert sorted(p2) == ["head", "layer_00", "layer_01", "layer_02", "layer_03"]
    assert set(p1["layer_00"]) == {"conv", "norm_act"}  # v1 stem: conv → norm → act
    assert set(p2["layer_00"]) == {"conv"}  # v2 stem: the conv alone
    assert set(p1["layer_02"]) == {"conv1", "norm_act1", "conv2", "norm_act2", "conv_shortcut",
                                   "norm_act_shortcut"}
    assert set(p2["layer_02"]) == {"norm_act1", "conv1", "norm_act2", "conv2", "conv_shortcut"}
    assert set(p2["layer_03"]) == {"norm"}  # v2's final norm → act
    # v1 blocks end in an activation (ReLU: ≥ 0); v2 blocks end in the addition
    assert np.all(_out(inter1, "layer_01") >= 0) and np.any(_out(inter2, "layer_01") < 0)
    # v1: the last norm of the branch is a NormAct with identity activation (negative values)
    assert np.any(_out(inter1, "layer_01", "norm_act2") < 0)
    # v2: the projection reads the block's pre-activated input act(norm(x)) ≥ 0
    assert np.all(_out(inter2, "layer_02", "norm_act1") >= 0)
    # one preact per NormAct, v1 adds the post-addition "out_act"
    preacts1 = [p for p, _ in jax.tree_util.tree_flatten_with_path(inter1)[0]
                if "preact" in jax.tree_util.keystr(p)]
    assert len(preacts1) == 1 + 3 + 4  # stem, identity block, projection block


def test_bottleneck_shapes_and_stride_on_the_3x3_conv():
    model = ResNet(stage_sizes=(1, 1), block="bottleneck", base_width=4, num_classes=3)
    x, _ = _batch((2, 16, 16, 3))
    variables, inter = _captured(model, x)
    block = variables["params"]["layer_02"]
    assert block["conv1"]["kernel"].shape == (1, 1, 16, 8)
    assert block["conv2"]["kernel"].shape == (3, 3, 8, 8)
    assert block["conv3"]["kernel"].shape == (1, 1, 8, 32)
    assert _out(inter, "layer_00").shape == (2, 4, 4, 4)  # 7×7/2 conv, 3×3/2 max-pool
    assert _out(inter, "layer_02", "conv1").shape[1:3] == (4, 4)
    assert _out(inter, "layer_02", "conv2").shape[1:3] == (2, 2)


@pytest.mark.parametrize(("norm", "preact", "residual_init"), [
    ("batch", False, "zero_init_last"),  # v1: the last norm's γ is zeroed
    ("layer+proxy", False, "zero_init_last"),  # v1 + PN: PN's γ is zeroed, so PN outputs 0
    ("none", False, "zero_init_last"),  # v1 without norm: the last conv's kernel is zeroed
    ("batch", True, "zero_init_last"),  # v2: the last conv's kernel is zeroed
    ("batch", False, "standard"),  # the check below fails without zero_init_last
])
def test_zero_init_last_makes_every_block_the_identity(norm, preact, residual_init):
    x, _ = _batch()
    model = MODELS.build("resnet20", width_multiplier=0.25, norm=norm, preact=preact,
                         residual_init=residual_init)
    inter = _captured(model, x)[1]
    same = []
    for i in range(1, 10):
        y = _out(inter, layer_name(i, 11))
        if i in (4, 7):  # the first block of stages 2 and 3 projects its shortcut
            sub = ("conv_shortcut",) if preact else ("norm_act_shortcut",)
            shortcut = _out(inter, layer_name(i, 11), *sub)
            want = shortcut if preact else np.maximum(shortcut, 0)
        else:
            previous = _out(inter, layer_name(i - 1, 11))
            # v1 ends in relu(x + F(x)): the identity on x ≥ 0, but a PN stem can output x < 0
            want = previous if preact else np.maximum(previous, 0)
        same.append(np.allclose(y, want, rtol=0, atol=1e-6))
    assert same == [residual_init == "zero_init_last"] * 9


@pytest.mark.parametrize("residual_init", ["fixup", "skipinit"])
def test_norm_free_residual_inits(residual_init):
    x, _ = _batch()
    model = ResNet(stage_sizes=(2, 1), base_width=4, cifar_stem=True, num_classes=3,
                   norm="none", residual_init=residual_init)
    variables, inter = _captured(model, x)
    block = variables["params"]["layer_02"]
    if residual_init == "fixup":
        assert "ScalarMultiplier_0" in block and "ScalarBias_0" in block
        assert not np.any(block["conv2"]["kernel"])  # last layer of the branch: zero
        assert np.all(_out(inter) == 0)  # zero head (Zhang et al.): logits 0 at init
    else:
        assert block["SkipInit_0"]["alpha"] == 0
    np.testing.assert_array_equal(_out(inter, "layer_02"), _out(inter, "layer_01"))


def test_stochastic_depth_rates_increase_linearly():
    model = ResNet(stage_sizes=(2, 2), base_width=4, cifar_stem=True, num_classes=3,
                   stochastic_depth_rate=0.4)
    x, _ = _batch()
    rates = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, StochasticDepth) and context.method_name == "__call__":
            rates.append(context.module.rate)
        return next_fun(*args, **kwargs)

    def run(key):
        variables = model.init(jax.random.key(0), x, train=False)
        with nn.intercept_methods(record):  # runs while tracing: records each block's rate
            train = [model.apply(variables, x, train=True, rngs={"dropout": k},
                                 mutable=["batch_stats"])[0] for k in jax.random.split(key)]
        return train, model.apply(variables, x, train=False)

    (a, b), logits_eval = _fast_run(run, jax.random.key(1))
    np.testing.assert_allclose(rates, np.tile(0.4 * np.arange(1, 5) / 4, 2))  # 2 applies
    assert not np.allclose(a, b)  # branches dropped differently per key
    assert np.all(np.isfinite(logits_eval))


def test_conv_is_chosen_by_name():
    x, _ = _batch()
    model = ResNet(stage_sizes=(1,), base_width=4, cifar_stem=True, num_classes=3,
                   norm="group", norm_kwargs={"num_groups": 2}, conv="weight_std")
    seen = set()

    def record(next_fun, args, kwargs, context):
        seen.add(type(context.module))
        return next_fun(*args, **kwargs)

    def run(key):
        with nn.intercept_methods(record):
            return model.apply(model.init(key, x, train=False), x, train=False)

    logits = _fast_run(run, jax.random.key(0))
    assert CONVOLUTIONS.get("weight_std") in seen and nn.Conv not in seen
    assert np.all(np.isfinite(logits))


def test_registry_presets():
    for name in ("mlp", "cnn", "vgg", "vgg11", "vgg16", "resnet", "resnet20", "resnet32",
                 "resnet56", "resnet110", "resnet18", "resnet34", "resnet50"):
        assert name in MODELS
    assert MODELS.build("resnet110").stage_sizes == (18, 18, 18)
    assert MODELS.build("resnet56", num_classes=100).num_classes == 100
    with pytest.raises(ValueError, match="valid model names"):
        MODELS.get("resnet19")


def test_vgg11_preset_on_cifar_sized_input():
    model = MODELS.build("vgg11", width_multiplier=1 / 16, fc_widths=(256,), num_classes=3)
    x, _ = _batch((2, 32, 32, 3))

    def run(key):
        variables = model.init(key, x, train=False)
        return variables, model.apply(variables, x, train=True, rngs={"dropout": key},
                                      mutable=["batch_stats"])[0]

    variables, logits = _fast_run(run, jax.random.key(0))
    kernels = [variables["params"][layer_name(i, 9)]["conv"]["kernel"].shape[-1]
               for i in range(8)]
    assert kernels == [4, 8, 16, 16, 32, 32, 32, 32]
    assert variables["params"]["layer_08"]["dense"]["kernel"].shape == (32, 16)  # 1×1×32 flat
    assert logits.shape == (2, 3) and np.all(np.isfinite(logits))


# --------------------------------------------------------------------------- argument errors

BAD_ARGS = [
    (MLP, {"depth": -1}, "depth"),
    (MLP, {"width": 0}, "width"),
    (MLP, {"widths": (4, 0)}, "widths"),
    (MLP, {"num_classes": 0}, "num_classes"),
    (MLP, {"dropout_rate": 1.0}, "dropout_rate"),
    (SmallCNN, {"features": ()}, "features"),
    (SmallCNN, {"convs_per_stage": 0}, "convs_per_stage"),
    (SmallCNN, {"dropout_rate": -0.1}, "dropout_rate"),
    (VGG, {"stages": ((4,), ())}, "stages"),
    (VGG, {"fc_widths": (0,)}, "fc_widths"),
    (VGG, {"width_multiplier": 0.0}, "width_multiplier"),
    (VGG, {"dropout_rate": 1.5}, "dropout_rate"),
    (ResNet, {"stage_sizes": (1, 0)}, "stage_sizes"),
    (ResNet, {"block": "wide"}, "block"),
    (ResNet, {"shortcut": "dense"}, "shortcut"),
    (ResNet, {"base_width": 0}, "base_width"),
    (ResNet, {"width_multiplier": -1.0}, "width_multiplier"),
    (ResNet, {"num_classes": 0}, "num_classes"),
    (ResNet, {"stochastic_depth_rate": 1.0}, "stochastic_depth_rate"),
    (ResNet, {"norm": "batchnorm"}, "valid norm names"),
    (ResNet, {"norm": "batch", "norm_kwargs": {"use_scale": False},
              "residual_init": "zero_init_last"}, "zero the last conv"),
    (ResNet, {"norm": "batch", "residual_init": "fixup"}, "zero the last conv"),
    (SmallCNN, {"activation": "relu6"}, "valid activation names"),
    (MLP, {"kernel_init": "he"}, "valid initializer names"),
    (ResNet, {"residual_init": "zero"}, "valid residual_init names"),
    (SmallCNN, {"conv": "ws"}, "valid conv names"),
]


@pytest.mark.parametrize(("cls", "kwargs", "match"), BAD_ARGS)
def test_bad_arguments_raise(cls, kwargs, match):
    x, _ = _batch()
    with pytest.raises(ValueError, match=match):
        cls(**kwargs).init(jax.random.key(0), x, train=False)


@pytest.mark.parametrize("cls", [SmallCNN, VGG, ResNet])
def test_conv_models_need_nhwc(cls):
    with pytest.raises(ValueError, match="NHWC"):
        cls().init(jax.random.key(0), jnp.ones((2, 8, 8)), train=False)


def test_mlp_needs_a_batch_axis():
    with pytest.raises(ValueError, match="ndim >= 2"):
        MLP().init(jax.random.key(0), jnp.ones((8,)), train=False)
