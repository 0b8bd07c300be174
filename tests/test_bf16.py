"""Mixed precision (`config.dtype = "bfloat16"`): bf16 compute, float32 params, statistics, logits.

Tolerances are in units of bfloat16's unit roundoff u = 2⁻⁸ (round to nearest, 8 significant
bits: |bf16(y) − y| ≤ u·|y|):
  * a norm given bf16 input computes in float32 and rounds once, at its output, so against the
    float32 norm on the same (bf16-representable) input it may differ by u·|y| per element plus
    float32 noise. A norm reducing its statistics in bf16 would be off by ~u·|μ|/σ everywhere,
    and the test inputs have |μ|/σ = 2.5, so that fails near y = 0;
  * a model: each Dense/Conv rounds its two operands and its output (≤ 3u relative each), norms
    re-standardize (gain ~1), so to first order the logits are within 3u per matmul/conv on the
    way, relative to their scale (the count is taken from the traced program);
  * training: see `test_bf16_training_tracks_float32`.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.extend.core import ClosedJaxpr, Jaxpr

from normlab.config import apply_overrides, load_config
from normlab.registry import MODELS, NORMS
from normlab.train.loop import train
from normlab.train.metrics import read_metrics
from normlab.train.validate import validate

REPO = Path(__file__).resolve().parents[1]
U = 2.0**-8  # bfloat16 unit roundoff
BF16 = jnp.bfloat16
NAMES = NORMS.names()
RUNNING = [n for n in NAMES if NORMS.get(n).has_running_stats]
MATMULS = ("dot_general", "conv_general_dilated")


def _build_norm(name, **extra):
    groups = {"num_groups": 2} if NORMS.get(name).takes_groups else {}
    return NORMS.build(name, **groups, **extra)


def _bf16_values(a) -> jnp.ndarray:
    """`a` rounded to bfloat16, held in float32: the same numbers in both precisions."""
    return jnp.asarray(np.asarray(a, np.float32)).astype(BF16).astype(jnp.float32)


def _dtypes(tree) -> set[str]:
    return {str(leaf.dtype) for leaf in jax.tree.leaves(tree)}


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", NAMES)
def test_norm_in_bf16_is_its_float32_output_rounded_once(name, train, rng):
    x = _bf16_values(3.0 + 1.2 * rng.normal(size=(8, 4, 4, 8)))
    norm = _build_norm(name)
    variables = norm.init(jax.random.key(0), x)
    # non-trivial γ, β (and proxy / threshold / v params), so the affine part is tested too
    params = jax.tree.map(
        lambda p: p + 0.3 * jnp.asarray(rng.normal(size=p.shape), p.dtype),
        variables.get("params", {}),
    )
    variables = {**variables, "params": params}
    if "batch_stats" in variables:  # eval with running statistics that are not 0 and 1
        _, updates = norm.apply(variables, x, train=True, mutable=["batch_stats"])
        variables = {**variables, **updates}

    def apply(v, x):
        return norm.apply(v, x, train=train, mutable=["batch_stats"])[0]

    y32 = np.asarray(apply(variables, x), np.float64)
    y16 = apply(variables, x.astype(BF16))
    assert y16.dtype == BF16
    err = np.abs(np.asarray(y16, np.float64) - y32)
    bound = U * np.abs(y32) + 1e-5 * np.abs(y32).max()
    assert np.all(err <= bound), f"{name}: max excess {np.max(err - bound):.3g}"


@pytest.mark.parametrize("sharded", [False, True], ids=["one_device", "sharded_batch"])
@pytest.mark.parametrize("name", RUNNING)
def test_running_stats_stay_float32_and_follow_the_float64_ema(name, sharded, rng):
    """Also with the bf16 batch sharded over 8 devices under jit, where XLA's cross-device
    reduction runs in its operand's dtype: the statistics must be reduced from float32."""
    momentum = 0.9
    mesh = jax.sharding.Mesh(jax.devices(), ("data",))
    place = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    # bf16 params must not make the statistics bf16 (their dtype is their own)
    norm = _build_norm(name, momentum=momentum, param_dtype=BF16)
    step = jax.jit(lambda v, x: norm.apply(v, x, train=True, mutable=["batch_stats"])[1])
    xs = [(5.0 + 0.5 * t + 2.0 * rng.normal(size=(8, 4, 4, 8))).astype(np.float32)
          for t in range(6)]
    variables = norm.init(jax.random.key(0), jnp.asarray(xs[0], BF16))
    expected = {"mean": np.zeros(8), "var": np.ones(8)}
    for x in xs:
        x16 = jnp.asarray(x, BF16)
        variables = {**variables, **step(variables, jax.device_put(x16, place) if sharded else x16)}
        x64 = np.asarray(x16, np.float64)
        batch = {"mean": x64.mean(axis=(0, 1, 2)), "var": x64.var(axis=(0, 1, 2))}
        expected = {k: momentum * expected[k] + (1 - momentum) * batch[k] for k in expected}
    stats = variables["batch_stats"]
    assert _dtypes(stats) == {"float32"}
    for key, value in stats.items():
        # float32 rounding of a few sums and EMA steps: ~1e-6 relative; a bf16 statistic would
        # be off by up to u = 4e-3 relative after each step
        np.testing.assert_allclose(np.asarray(value), expected[key], rtol=1e-5, err_msg=key)


def _matmul_operand_dtypes(jaxpr: Jaxpr) -> tuple[set[str], int]:
    """(dtypes of the operands of every matmul/conv, their number), sub-programs included."""
    dtypes, count = set(), 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in MATMULS:
            dtypes |= {str(v.aval.dtype) for v in eqn.invars}
            count += 1
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                if isinstance(sub, ClosedJaxpr | Jaxpr):
                    d, c = _matmul_operand_dtypes(getattr(sub, "jaxpr", sub))
                    dtypes, count = dtypes | d, count + c
    return dtypes, count


# one of each model class and block type, tiny
MODEL_CASES = {
    "mlp": ("mlp", dict(depth=2, width=16, norm="batch"), (8, 8, 8, 1)),
    "cnn": ("cnn", dict(features=(4, 8), norm="group", norm_kwargs={"num_groups": 2}),
            (8, 8, 8, 1)),
    "vgg": ("vgg", dict(stages=((4,), (8,)), fc_widths=(16,), dropout_rate=0.0, norm="batch"),
            (8, 8, 8, 3)),
    "resnet_v1": ("resnet8", dict(width_multiplier=0.25, norm="batch"), (8, 16, 16, 3)),
    "resnet_v2_bottleneck": ("resnet", dict(
        stage_sizes=(1, 1), block="bottleneck", base_width=4, preact=True, num_classes=10,
        norm="group+proxy", norm_kwargs={"num_groups": 2}), (8, 32, 32, 3)),
    "resnet_v1_frn": ("resnet8", dict(width_multiplier=0.25, norm="frn", activation="identity"),
                      (8, 16, 16, 3)),
}


@pytest.mark.parametrize("case", MODEL_CASES)
def test_model_bf16_computes_in_bf16_with_float32_params_and_logits(case, rng):
    name, kwargs, shape = MODEL_CASES[case]
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    model32 = MODELS.build(name, **kwargs)
    model16 = MODELS.build(name, dtype=BF16, **kwargs)
    variables = model16.init(jax.random.key(0), x, train=False)
    assert _dtypes(variables) == {"float32"}
    assert jax.tree.structure(variables) == jax.tree.structure(
        jax.eval_shape(lambda: model32.init(jax.random.key(0), x, train=False)))

    def forward(model):
        return lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])

    dtypes16, matmuls = _matmul_operand_dtypes(jax.make_jaxpr(forward(model16))(variables, x).jaxpr)
    assert dtypes16 == {"bfloat16"}, "every Dense/Conv must run in bf16"
    dtypes32, _ = _matmul_operand_dtypes(jax.make_jaxpr(forward(model32))(variables, x).jaxpr)
    assert dtypes32 == {"float32"}

    (y16, new16), (y32, _) = forward(model16)(variables, x), forward(model32)(variables, x)
    assert y16.dtype == jnp.float32 and _dtypes(new16) <= {"float32"}
    y16, y32 = np.asarray(y16, np.float64), np.asarray(y32, np.float64)
    assert np.max(np.abs(y16 - y32)) <= 3 * U * matmuls * np.abs(y32).max()


def test_dtype_is_validated_and_reaches_the_model(digits_config):
    config = digits_config("dtype=float16")
    with pytest.raises(ValueError, match=r"^dtype must be one of float32, bfloat16, got 'float16'"):
        validate(config)
    config = digits_config()
    config.model.dtype = "bfloat16"
    with pytest.raises(ValueError, match="set the compute dtype with config.dtype"):
        validate(config)
    from normlab.train.build import build_model

    assert build_model(digits_config("dtype=bfloat16"), 10).dtype == BF16
    assert build_model(digits_config(), 10).dtype == jnp.float32


# Every step's train_loss logged (not a mean over 5), one checkpoint at the end (step 20).
PER_STEP = ("steps_per_call=1", "log_every_steps=1", "eval_every_steps=0",
            "checkpoint_every_steps=20")
# (config, overrides, rtol of each step's train_loss). Both runs see the same batches. Step 1
# (equal params) differs only by the forward rounding (measured 0.01-0.03%); later steps add the
# drift of params trained on bf16 gradients, which grows with depth: measured at most 0.2% for
# the 3-layer MLP, whose loss falls 2.7 -> 0.7, and 5% for the 20-layer, 4-channel ResNet, whose
# float32 loss itself moves by 5-15% from batch to batch. The rtol is that maximum with ~1.5x
# margin: a bf16 run off its float32 track by more than float32's own batch noise fails.
# The ResNet's bf16 forward and backward are checked per layer above (every conv on bf16
# operands, float32 logits); its 20 training steps barely move the loss, so tracking it would
# prove little for a minute of CI: the MLP, whose loss falls 2.7 -> 0.7, is the training check.
TRAINING_CASES = {
    "mlp_batch": (f"{REPO}/configs/mnist_mlp.py:dataset=digits,norm=batch,runlocal", (), 0.003),
}


def _train_losses(spec, overrides, workdir) -> tuple[list[float], dict]:
    config = load_config(spec)
    apply_overrides(config, [*overrides, *PER_STEP])
    train(config, workdir, progress=False)
    losses = [r["train_loss"] for r in read_metrics(workdir) if "train_loss" in r]
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    state = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(steps[-1]) / "state")
    return losses, state


@pytest.mark.slow
@pytest.mark.parametrize("case", TRAINING_CASES)
def test_bf16_training_tracks_float32(case, tmp_path):
    spec, overrides, rtol = TRAINING_CASES[case]
    losses32, _ = _train_losses(spec, overrides, tmp_path / "f32")
    losses16, state = _train_losses(spec, (*overrides, "dtype=bfloat16"), tmp_path / "bf16")
    assert len(losses16) == len(losses32) == 20
    assert losses16 != losses32, "the bf16 run computed in float32"
    np.testing.assert_allclose(losses16, losses32, rtol=rtol)
    floating = {jax.tree_util.keystr(path): np.asarray(leaf).dtype
                for path, leaf in jax.tree_util.tree_leaves_with_path(state)
                if jnp.issubdtype(np.asarray(leaf).dtype, jnp.floating)}
    assert any(path.startswith("['params']") for path in floating)
    assert {str(dtype) for dtype in floating.values()} == {"float32"}, floating


def test_pipelined_model_computes_in_bf16_with_float32_logits(rng):
    """A pipelined model runs its segments, not its `__call__`: they cast too."""
    from normlab.parallel.mesh import build_mesh
    from normlab.parallel.pipeline import PipelinedModel

    x = jnp.asarray(rng.normal(size=(8, 4, 4, 1)), jnp.float32)
    plain = MODELS.build("mlp", depth=3, width=8, norm="none", dtype=BF16)
    piped = PipelinedModel(plain, build_mesh({"data": 4, "stage": 2}), microbatches=2)
    variables = plain.init(jax.random.key(0), x, train=False)

    def forward(v, x):
        return piped.apply(v, x, train=False)

    stacked = piped.stack(variables)
    dtypes, matmuls = _matmul_operand_dtypes(jax.make_jaxpr(forward)(stacked, x).jaxpr)
    assert dtypes == {"bfloat16"} and matmuls >= 2
    y = jax.jit(forward)(stacked, x)
    assert y.dtype == jnp.float32
    # the plain model's bf16 operations on the same values (equal here); another order of a
    # float32 sum could flip at most one rounding (2u) per matmul
    y_plain = np.asarray(plain.apply(variables, x, train=False))
    np.testing.assert_allclose(y, y_plain, rtol=0, atol=2 * U * matmuls * np.abs(y_plain).max())
