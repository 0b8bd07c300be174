"""LayerNorm, InstanceNorm, GroupNorm, RMSNorm, Identity and the statistics core vs float64 NumPy.

Every reference below is written from the formulas of SPEC §1.1 in float64 NumPy. float32 results
are compared at 1e-5 (relative, with the same absolute floor for values near 0); bfloat16 outputs
at 1e-2, which bf16's 8 significant bits explain (rounding y costs up to 2^-9 relative and |y|
stays below ~4), while their statistics are compared at float32 tolerance.
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from finite_differences import fd_grads

from normlab.nn.norms import BatchNorm, GroupNorm, Identity, InstanceNorm, LayerNorm, RMSNorm
from normlab.nn.stats import group_moments, mean_square, moments
from normlab.registry import NORMS

F32 = {"rtol": 1e-5, "atol": 1e-5}
BF16 = {"rtol": 1e-2, "atol": 1e-2}
EPS = 1e-5


def _x(shape, seed=0, loc=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    return (loc + scale * rng.standard_normal(shape)).astype(np.float32)


def _affine(channels, seed=1):
    rng = np.random.default_rng(seed)
    scale = (1 + 0.5 * rng.standard_normal(channels)).astype(np.float32)
    bias = rng.standard_normal(channels).astype(np.float32)
    return scale, bias


def _bf16_round(x):
    return np.asarray(x, ml_dtypes.bfloat16).astype(np.float64)


# ---- float64 references, from the formulas ------------------------------------------------------


def ref_standardize(x, axes, eps=EPS):
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def ref_layer(x, scale, bias, eps=EPS):
    return ref_standardize(x, tuple(range(1, x.ndim)), eps) * scale + bias


def ref_instance(x, scale, bias, eps=EPS):
    return ref_standardize(x, tuple(range(1, x.ndim - 1)), eps) * scale + bias


def ref_group(x, num_groups, scale, bias, eps=EPS):
    n, channels = x.shape[0], x.shape[-1]
    x_grouped = x.reshape(n, -1, num_groups, channels // num_groups)
    return ref_standardize(x_grouped, (1, 3), eps).reshape(x.shape) * scale + bias


def ref_rms(x, scale, bias, eps=EPS):
    mean_square_ = (x**2).mean(axis=tuple(range(1, x.ndim)), keepdims=True)
    return x / np.sqrt(mean_square_ + eps) * scale + bias




def _apply(module, x, scale=None, bias=None, **kw):
    variables = module.init(jax.random.key(0), x)
    params = dict(variables.get("params", {}))
    if scale is not None:
        params["scale"] = jnp.asarray(scale)
    if bias is not None:
        params["bias"] = jnp.asarray(bias)
    return module.apply({"params": params}, x, **kw)


# ---- forward values --------------------------------------------------------------------------

SHAPES = [(4, 6), (3, 5, 4, 8), (2, 7, 3, 12), (2, 3, 4, 2, 6)]


@pytest.mark.parametrize("shape", SHAPES)
def test_layer_norm(shape):
    x = _x(shape, loc=0.5, scale=2.0)
    scale, bias = _affine(shape[-1])
    y = _apply(LayerNorm(), x, scale, bias, train=True)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, ref_layer(x.astype(np.float64), scale, bias), **F32)


@pytest.mark.parametrize("shape", [s for s in SHAPES if len(s) > 2])
def test_instance_norm(shape):
    x = _x(shape, seed=2, loc=-1.0, scale=3.0)
    scale, bias = _affine(shape[-1])
    y = _apply(InstanceNorm(), x, scale, bias)
    np.testing.assert_allclose(y, ref_instance(x.astype(np.float64), scale, bias), **F32)


@pytest.mark.parametrize(
    ("shape", "kw", "groups"),
    [
        ((4, 6), {"num_groups": 2}, 2),
        ((3, 5, 4, 8), {"num_groups": 4}, 4),
        ((3, 5, 4, 8), {"group_size": 2}, 4),
        ((2, 7, 3, 12), {"num_groups": 3}, 3),
        ((2, 7, 3, 12), {"group_size": 6}, 2),
        ((2, 3, 4, 2, 6), {"num_groups": 6}, 6),
        ((2, 4, 4, 64), {"num_groups": 32}, 32),
        ((2, 3, 4, 16), {"num_groups": 2}, 2),
        ((2, 3, 4, 32), {"num_groups": 2}, 2),  # groups of >= 16 channels take another path
        ((3, 3, 3, 48), {"group_size": 16}, 3),
    ],
)
def test_group_norm(shape, kw, groups):
    x = _x(shape, seed=3, loc=1.0, scale=0.5)
    scale, bias = _affine(shape[-1])
    y = _apply(GroupNorm(**kw), x, scale, bias)
    np.testing.assert_allclose(y, ref_group(x.astype(np.float64), groups, scale, bias), **F32)


@pytest.mark.parametrize("shape", SHAPES)
def test_rms_norm(shape):
    x = _x(shape, seed=4, loc=0.3)
    scale, bias = _affine(shape[-1])
    params = RMSNorm().init(jax.random.key(0), x)["params"]
    assert set(params) == {"scale"}  # no bias by default: RMSNorm does not re-center
    y = _apply(RMSNorm(), x, scale)
    np.testing.assert_allclose(y, ref_rms(x.astype(np.float64), scale, 0.0), **F32)
    y = _apply(RMSNorm(use_bias=True), x, scale, bias)
    np.testing.assert_allclose(y, ref_rms(x.astype(np.float64), scale, bias), **F32)


def test_identity():
    x = _x((2, 3, 3, 4))
    np.testing.assert_array_equal(Identity().apply({}, x, train=True), x)
    assert Identity().init(jax.random.key(0), x) == {}


def test_default_params_and_no_affine():
    x = _x((3, 4, 4, 8), seed=5)
    params = GroupNorm(num_groups=2).init(jax.random.key(0), x)["params"]
    np.testing.assert_array_equal(params["scale"], np.ones(8))
    np.testing.assert_array_equal(params["bias"], np.zeros(8))
    assert params["scale"].dtype == jnp.float32
    bare = LayerNorm(use_scale=False, use_bias=False)
    assert bare.init(jax.random.key(0), x) == {}
    y = bare.apply({}, x)
    np.testing.assert_allclose(y, ref_layer(x.astype(np.float64), 1.0, 0.0), **F32)


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_epsilon(epsilon):
    x = _x((2, 3, 3, 4), seed=6)
    y = _apply(LayerNorm(epsilon=epsilon), x)
    np.testing.assert_allclose(y, ref_layer(x.astype(np.float64), 1.0, 0.0, epsilon), **F32)


def test_large_mean_stays_exact():
    # |μ|/σ = 100: a one-pass E[x²] − E[x]² in float32 would lose every digit of σ² here.
    x = _x((4, 6, 6, 8), seed=7, loc=100.0, scale=1.0)
    mean, var = moments(jnp.asarray(x), (0, 1, 2))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean.ravel(), x64.mean((0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(var.ravel(), x64.var((0, 1, 2)), rtol=1e-4)
    # normalize's folded multiply-add costs ~ulp(1)·|μ|/σ ≈ 1e-5 here, hence 5e-5.
    y = _apply(LayerNorm(), x)
    np.testing.assert_allclose(y, ref_layer(x64, 1.0, 0.0), rtol=5e-5, atol=5e-5)


# ---- exactness where a folded x·a + (β − μ·a) would cancel -------------------------------------


def _train_apply(module, x, scale, bias):
    variables = module.init(jax.random.key(0), x)
    variables = {**variables, "params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}}
    y, _ = module.apply(variables, x, train=True, mutable=["batch_stats"])
    return np.asarray(y, np.float64)


@pytest.mark.parametrize(
    ("module", "shape"),
    [
        (BatchNorm(), (1, 8)),  # one example: every channel's batch variance is 0
        (GroupNorm(group_size=1), (3, 1, 1, 8)),  # one value per group: σ² = 0
        (InstanceNorm(), (3, 1, 1, 8)),
    ],
)
def test_zero_variance_gives_exactly_the_bias(module, shape):
    # One value per group, so μ = x exactly and (x − μ)/sqrt(0 + ε)·γ + β = β. Folded,
    # y = x·a + (β − μ·a) with a = γ/√ε ≈ 316·γ rounds x·a and μ·a apart: β ± 4e-6 here
    # (β ± 3e-5 for |x| ~ 10). (A group of several equal values is not exact in float32 either
    # way: their float32 mean need not equal them.)
    x = _x(shape, seed=40, loc=3.0, scale=3.0)
    scale, bias = _affine(shape[-1], seed=41)
    y = _train_apply(module, x, scale, bias)
    np.testing.assert_allclose(y, np.broadcast_to(bias, shape), rtol=1e-7, atol=1e-7)


def _min_std(x, axes):
    return np.sqrt(x.var(axis=axes)).min()


@pytest.mark.parametrize(
    ("module", "ref", "min_std"),
    [
        (BatchNorm(), lambda x, s, b: ref_standardize(x, (0, 1, 2)) * s + b,
         lambda x: _min_std(x, (0, 1, 2))),
        (LayerNorm(), ref_layer, lambda x: _min_std(x, (1, 2, 3))),
        (GroupNorm(num_groups=2), lambda x, s, b: ref_group(x, 2, s, b),
         lambda x: _min_std(x.reshape(8, 16, 2, 4), (1, 3))),
        (InstanceNorm(), ref_instance, lambda x: _min_std(x, (1, 2))),
    ],
    ids=["batch", "layer", "group", "instance"],
)
def test_mean_large_relative_to_std(module, ref, min_std):
    # x = 1000 + N(0, 1): μ in float32 is off by half an ulp of 1000 from its rounding and by
    # about as much again from the float32 sums behind it (the per-example norms merge
    # per-channel means), which moves y by |γ|/σ times that. Unit u = ulp(1000)·max|γ|/min σ;
    # measured 0.6 u (BN) to 1.3 u (IN), bound 2 u. The folded form x·a + (β − μ·a) also
    # rounds x·a ≈ 1000·γ/σ: BN then errs by 1.8 u, a one-pass variance by ~100 u.
    x = _x((8, 4, 4, 8), seed=42, loc=1000.0, scale=1.0)
    scale, bias = _affine(8, seed=43)
    x64 = x.astype(np.float64)
    expected = ref(x64, scale.astype(np.float64), bias.astype(np.float64))
    bound = np.spacing(np.float32(1000.0)) * np.abs(scale).max() / min_std(x64)
    y = _train_apply(module, x, scale, bias)
    np.testing.assert_allclose(y, expected, rtol=0, atol=2 * bound)


@pytest.mark.parametrize("name", NORMS.names())
@pytest.mark.parametrize("dtype", [jnp.complex64, jnp.int32, jnp.bool_])
def test_every_norm_rejects_inputs_that_are_not_real_floating(name, dtype):
    cls = NORMS.get(name)
    module = NORMS.build(name, **({"num_groups": 2} if cls.takes_groups else {}))
    x = jnp.ones((2, 3, 3, 4), dtype)
    with pytest.raises(ValueError, match=f"input dtype {jnp.dtype(dtype).name} is not "
                                         r"supported; accepted: real floating dtypes"):
        module.init(jax.random.key(0), x)
    if cls.has_running_stats:  # the eval path normalizes with the running statistics
        variables = module.init(jax.random.key(0), jnp.ones(x.shape, jnp.float32))
        with pytest.raises(ValueError, match=jnp.dtype(dtype).name):
            module.apply(variables, x, train=False)


# ---- equivalences ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 6), (3, 5, 4, 8), (2, 3, 3, 16)])
def test_layer_norm_is_group_norm_with_one_group(shape):
    x = _x(shape, seed=8, loc=2.0)
    scale, bias = _affine(shape[-1])
    y_ln = _apply(LayerNorm(), x, scale, bias)
    y_gn = _apply(GroupNorm(num_groups=1), x, scale, bias)
    np.testing.assert_allclose(y_ln, y_gn, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 5, 4, 8), (2, 3, 4, 2, 6)])
def test_instance_norm_is_group_norm_with_group_size_one(shape):
    x = _x(shape, seed=9, loc=-2.0)
    scale, bias = _affine(shape[-1])
    y_in = _apply(InstanceNorm(), x, scale, bias)
    y_gn = _apply(GroupNorm(group_size=1), x, scale, bias)
    np.testing.assert_allclose(y_in, y_gn, rtol=1e-6, atol=1e-6)


# ---- dtypes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "ref"),
    [
        (LayerNorm(), ref_layer),
        (InstanceNorm(), ref_instance),
        (GroupNorm(num_groups=2), lambda x, s, b: ref_group(x, 2, s, b)),
        (RMSNorm(use_bias=True), ref_rms),
    ],
)
def test_bfloat16_input_float32_statistics(module, ref):
    x = jnp.asarray(_x((3, 4, 5, 8), seed=10, loc=0.5, scale=2.0), jnp.bfloat16)
    x_rounded = _bf16_round(x)
    scale, bias = _affine(8)
    y = _apply(module, x, scale, bias)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float64), ref(x_rounded, scale, bias), **BF16)
    # With a float32 output nothing is rounded to bf16 after the input: float32 accuracy shows
    # that the statistics were not computed in bf16.
    y32 = _apply(module.clone(dtype=jnp.float32), x, scale, bias)
    assert y32.dtype == jnp.float32
    np.testing.assert_allclose(y32, ref(x_rounded, scale, bias), **F32)


def test_statistics_of_bfloat16_are_float32():
    x = jnp.asarray(_x((4, 5, 3, 8), seed=11, loc=3.0), jnp.bfloat16)
    x_rounded = _bf16_round(x)
    mean, var = moments(x, (0, 1, 2))
    assert mean.dtype == var.dtype == jnp.float32
    np.testing.assert_allclose(mean.ravel(), x_rounded.mean((0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(var.ravel(), x_rounded.var((0, 1, 2)), rtol=1e-5)
    nu2 = mean_square(x, (1, 2))
    assert nu2.dtype == jnp.float32
    np.testing.assert_allclose(nu2, (x_rounded**2).mean((1, 2), keepdims=True), rtol=1e-5)


# ---- statistics core -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "axes"),
    [((6, 5), (0,)), ((3, 4, 5, 6), (1, 2)), ((3, 4, 5, 6), (0, 1, 2)), ((3, 4, 5, 6), (-1, 1)),
     ((3, 4, 5, 6), (0, 2)), ((2, 1, 5, 3), (1, 2))],
)
def test_moments(shape, axes):
    x = _x(shape, seed=12, loc=1.5)
    mean, var = moments(jnp.asarray(x), axes)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axes, keepdims=True), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(var, x64.var(axes, keepdims=True), rtol=1e-5)


@pytest.mark.parametrize(
    ("shape", "groups"),
    [((3, 4, 5, 12), 3), ((5, 8), 4), ((2, 3, 3, 6), 6), ((2, 3, 3, 32), 2), ((4, 16), 1)],
)
def test_group_moments(shape, groups):
    x = _x(shape, seed=13, loc=-0.5)
    mean, var = group_moments(jnp.asarray(x), groups)
    n, channels = shape[0], shape[-1]
    x_grouped = x.astype(np.float64).reshape(n, -1, groups, channels // groups)
    stats_shape = (n,) + (1,) * (len(shape) - 2) + (channels,)
    expected_mean = np.repeat(x_grouped.mean((1, 3)), channels // groups, axis=1)
    expected_var = np.repeat(x_grouped.var((1, 3)), channels // groups, axis=1)
    np.testing.assert_allclose(mean, expected_mean.reshape(stats_shape), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(var, expected_var.reshape(stats_shape), rtol=1e-5)


def test_moments_forward_mode_derivative():
    x = _x((3, 4, 2, 5), seed=14)
    t = _x((3, 4, 2, 5), seed=15)
    _, (dmean, dvar) = jax.jvp(
        lambda v: moments(v, (0, 1, 2)), (jnp.asarray(x),), (jnp.asarray(t),)
    )
    h = 1e-6
    x64, t64 = x.astype(np.float64), t.astype(np.float64)
    expected_dmean = t64.mean((0, 1, 2), keepdims=True)
    expected_dvar = ((x64 + h * t64).var((0, 1, 2), keepdims=True)
                     - (x64 - h * t64).var((0, 1, 2), keepdims=True)) / (2 * h)
    np.testing.assert_allclose(dmean, expected_dmean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dvar, expected_dvar, rtol=1e-5, atol=1e-6)


# ---- gradients -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "ref", "shape"),
    [
        (LayerNorm(), ref_layer, (2, 3, 2, 4)),
        (LayerNorm(), ref_layer, (3, 5)),
        (InstanceNorm(), ref_instance, (2, 3, 2, 4)),
        (GroupNorm(num_groups=2), lambda x, s, b: ref_group(x, 2, s, b), (2, 3, 2, 4)),
        (GroupNorm(group_size=3), lambda x, s, b: ref_group(x, 2, s, b), (4, 6)),
        (GroupNorm(num_groups=2), lambda x, s, b: ref_group(x, 2, s, b), (2, 2, 2, 8)),
        (GroupNorm(num_groups=2), lambda x, s, b: ref_group(x, 2, s, b), (2, 2, 1, 32)),
        (RMSNorm(use_bias=True), ref_rms, (2, 3, 2, 4)),
    ],
)
def test_gradients(module, ref, shape):
    x = _x(shape, seed=16, loc=0.5)
    w = _x(shape, seed=17)
    scale, bias = _affine(shape[-1])

    def loss(x, params):
        return jnp.sum(module.apply({"params": params}, x) * w)

    params = {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}
    dx, dparams = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), params)
    ex, es, eb = fd_grads(lambda x, s, b: np.sum(ref(x, s, b) * w), [x, scale, bias])
    # Gradients sum O(size) float32 terms, so they carry ~1e-6 absolute rounding error.
    np.testing.assert_allclose(dx, ex, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dparams["scale"], es, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dparams["bias"], eb, rtol=1e-4, atol=1e-5)


# ---- registry and errors ---------------------------------------------------------------------


def test_registry_names():
    assert NORMS.get("layer") is LayerNorm
    assert NORMS.get("instance") is InstanceNorm
    assert NORMS.get("group") is GroupNorm
    assert NORMS.get("rms") is RMSNorm
    assert NORMS.get("none") is Identity
    assert NORMS.build("group", group_size=4).group_size == 4


@pytest.mark.parametrize(
    ("module", "shape", "match"),
    [
        (GroupNorm(num_groups=2, group_size=4), (2, 3, 3, 8), "num_groups=2, group_size=4"),
        (GroupNorm(), (2, 3, 3, 8), "exactly one of num_groups and group_size"),
        (GroupNorm(num_groups=3), (2, 3, 3, 8), "num_groups=3"),
        (GroupNorm(num_groups=0), (2, 3, 3, 8), "num_groups=0"),
        (GroupNorm(group_size=3), (2, 3, 3, 8), "group_size=3"),
        (GroupNorm(group_size=-1), (2, 8), "group_size=-1"),
        (InstanceNorm(), (4, 8), r"spatial axes, got x.shape=\(4, 8\)"),
        (LayerNorm(), (8,), r"x.shape=\(8,\)"),
        (LayerNorm(epsilon=-1e-5), (2, 8), "epsilon=-1e-05"),
        (InstanceNorm(epsilon=-1.0), (2, 3, 3, 8), "epsilon=-1.0"),
        (GroupNorm(num_groups=2, epsilon=-1.0), (2, 3, 3, 8), "epsilon=-1.0"),
        (RMSNorm(epsilon=-1.0), (2, 8), "epsilon=-1.0"),
    ],
)
def test_value_errors(module, shape, match):
    with pytest.raises(ValueError, match=match):
        module.init(jax.random.key(0), jnp.zeros(shape))
