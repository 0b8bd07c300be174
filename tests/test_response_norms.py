"""FilterResponseNorm + TLU, EvoNorm-B0 and EvoNorm-S0 vs float64 NumPy references.

References are written from the papers' formulas in float64 NumPy. float32 results are compared
at 1e-5 (relative, with the same absolute floor); gradients at 1e-4 since they sum O(size)
float32 terms; bfloat16 outputs at 1e-2, which bf16's 8 significant bits explain.
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from finite_differences import fd_grads
from jax.sharding import PartitionSpec as P

from normlab.nn.response_norms import EvoNormB0, EvoNormS0, FilterResponseNorm
from normlab.registry import NORMS

F32 = {"rtol": 1e-5, "atol": 1e-5}
GRAD = {"rtol": 1e-4, "atol": 1e-5}

shard_map = getattr(jax, "shard_map", None)
if shard_map is None:  # older jax
    from jax.experimental.shard_map import shard_map


def _x(shape, seed=0, loc=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    return (loc + scale * rng.standard_normal(shape)).astype(np.float32)


def _params(channels, names, seed=1):
    rng = np.random.default_rng(seed)
    values = {
        "scale": 1 + 0.5 * rng.standard_normal(channels),
        "bias": rng.standard_normal(channels),
        "threshold": 0.3 * rng.standard_normal(channels),
        "v": 1 + 0.5 * rng.standard_normal(channels),
    }
    return {name: values[name].astype(np.float32) for name in names}




def _check_grads(module, x, params, ref, extra_variables=None, train=False):
    """jax.grad of Σ y·w w.r.t. x and every param vs finite differences of the reference."""
    w = _x(x.shape, seed=99)
    names = sorted(params)

    def loss(x, params):
        variables = {"params": params, **(extra_variables or {})}
        y, _ = module.apply(variables, x, train=train, mutable=["batch_stats"])
        return jnp.sum(y * w)

    jax_params = {k: jnp.asarray(v) for k, v in params.items()}
    dx, dparams = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), jax_params)
    expected = fd_grads(
        lambda x, *ps: np.sum(ref(x, **dict(zip(names, ps, strict=True))) * w),
        [x] + [params[k] for k in names],
    )
    np.testing.assert_allclose(dx, expected[0], **GRAD)
    for name, grad in zip(names, expected[1:], strict=True):
        np.testing.assert_allclose(dparams[name], grad, **GRAD, err_msg=name)


# ---- float64 references, from the formulas ------------------------------------------------------


def ref_frn(x, scale, bias, threshold=None, epsilon=1e-6):
    nu2 = (x**2).mean(axis=tuple(range(1, x.ndim - 1)), keepdims=True)
    y = x / np.sqrt(nu2 + abs(epsilon)) * scale + bias
    return y if threshold is None else np.maximum(y, threshold)


def ref_evonorm_b0(x, scale, bias, v, var_batch=None, eps=1e-5):
    if var_batch is None:
        var_batch = x.var(axis=tuple(range(x.ndim - 1)))
    var_instance = x.var(axis=tuple(range(1, x.ndim - 1)), keepdims=True)
    denominator = np.maximum(np.sqrt(var_batch + eps), v * x + np.sqrt(var_instance + eps))
    return x / denominator * scale + bias


def ref_evonorm_s0(x, num_groups, scale, bias, v, eps=1e-5):
    n, channels = x.shape[0], x.shape[-1]
    grouped = x.reshape(n, -1, num_groups, channels // num_groups)
    var = np.broadcast_to(grouped.var(axis=(1, 3), keepdims=True), grouped.shape).reshape(x.shape)
    return x / (1 + np.exp(-v * x)) / np.sqrt(var + eps) * scale + bias


# ---- FilterResponseNorm ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (2, 3, 2, 2, 4), (5, 6)])
def test_frn_forward(shape):
    x = _x(shape, seed=2, loc=0.5, scale=2.0)
    params = _params(shape[-1], ["scale", "bias", "threshold"])
    frn = FilterResponseNorm()
    assert set(frn.init(jax.random.key(0), x)["params"]) == {"scale", "bias", "threshold"}
    y = frn.apply({"params": params}, x, train=True)
    np.testing.assert_allclose(y, ref_frn(x.astype(np.float64), **params), **F32)
    no_tlu = FilterResponseNorm(use_tlu=False, epsilon=1e-3)
    params.pop("threshold")
    y = no_tlu.apply({"params": params}, x)
    np.testing.assert_allclose(y, ref_frn(x.astype(np.float64), **params, epsilon=1e-3), **F32)


def test_frn_learnable_epsilon_uses_its_absolute_value():
    x = _x((4, 6), seed=3)
    frn = FilterResponseNorm(learnable_epsilon=True, epsilon=1e-2)
    params = frn.init(jax.random.key(0), x)["params"]
    np.testing.assert_allclose(params["epsilon"], 1e-2)
    params = {**_params(6, ["scale", "bias", "threshold"]), "epsilon": np.float32(-0.05)}
    y = frn.apply({"params": params}, x)
    np.testing.assert_allclose(y, ref_frn(x.astype(np.float64), **params), **F32)


def test_frn_gradients():
    x = _x((2, 3, 2, 4), seed=4, loc=0.2)
    params = {**_params(4, ["scale", "bias", "threshold"]), "epsilon": np.float32(0.1)}
    frn = FilterResponseNorm(learnable_epsilon=True)
    _check_grads(frn, x, params, ref_frn)


# ---- EvoNorm-B0 ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (3, 2, 2, 3, 4)])
def test_evonorm_b0_train_eval_and_running_var(shape):
    module = EvoNormB0(momentum=0.7)
    params = _params(shape[-1], ["scale", "bias", "v"])
    batches = [_x(shape, seed=10 + s, loc=s - 1.0, scale=1.0 + s) for s in range(3)]
    variables = module.init(jax.random.key(0), batches[0], train=True)
    assert set(variables["params"]) == {"scale", "bias", "v"}
    np.testing.assert_array_equal(variables["batch_stats"]["var"], np.ones(shape[-1]))
    variables = {**variables, "params": params}
    ra_var = np.ones(shape[-1])
    for x in batches:
        y, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
        variables = {**variables, **updates}
        x64 = x.astype(np.float64)
        np.testing.assert_allclose(y, ref_evonorm_b0(x64, **params), **F32)
        ra_var = 0.7 * ra_var + 0.3 * x64.var(axis=tuple(range(x.ndim - 1)))
        np.testing.assert_allclose(variables["batch_stats"]["var"], ra_var, rtol=1e-5)
    x = _x(shape, seed=20)
    y = module.apply(variables, x)
    np.testing.assert_allclose(y, ref_evonorm_b0(x.astype(np.float64), **params, var_batch=ra_var),
                               **F32)


@pytest.mark.parametrize("train", [True, False])
def test_evonorm_b0_gradients(train):
    x = _x((3, 2, 3, 4), seed=21, loc=0.3)
    ra_var = np.array([0.5, 1.0, 2.0, 0.3])
    stats = {"batch_stats": {"var": jnp.asarray(ra_var, jnp.float32)}}

    def ref(x, **params):
        return ref_evonorm_b0(x, **params, var_batch=None if train else ra_var)

    _check_grads(EvoNormB0(), x, _params(4, ["scale", "bias", "v"]), ref, stats, train)


def test_evonorm_b0_global_statistics_under_shard_map():
    x = _x((16, 2, 2, 3), seed=22, loc=1.0, scale=2.0)
    module = EvoNormB0(momentum=0.0, axis_name="data")
    variables = module.init(jax.random.key(0), x[:2])
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))

    def step(x_local):
        y, updates = module.apply(variables, x_local, train=True, mutable=["batch_stats"])
        return y, updates["batch_stats"]["var"][None]

    y, ra_var = jax.jit(shard_map(step, mesh=mesh, in_specs=P("data"), out_specs=P("data")))(x)
    x64 = x.astype(np.float64)
    ones, zeros = np.ones(3), np.zeros(3)
    np.testing.assert_allclose(y, ref_evonorm_b0(x64, ones, zeros, ones), **F32)
    np.testing.assert_allclose(ra_var[5], x64.var(axis=(0, 1, 2)), rtol=1e-5)


# ---- EvoNorm-S0 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "kw", "groups"),
    [
        ((3, 4, 5, 8), {"num_groups": 4}, 4),
        ((3, 4, 5, 8), {"group_size": 2}, 4),
        ((2, 3, 3, 64), {}, 32),  # the default: the largest divisor of C that is <= 32
        ((2, 3, 3, 48), {}, 24),  # 32 does not divide 48
        ((2, 3, 3, 8), {}, 8),  # fewer than 32 channels: C groups
        ((2, 3, 3, 3), {}, 3),
        ((2, 3, 3, 12), {"num_groups": 16}, 12),
        ((5, 6), {"num_groups": 2}, 2),
    ],
)
def test_evonorm_s0_forward(shape, kw, groups):
    x = _x(shape, seed=30, loc=0.5, scale=1.5)
    params = _params(shape[-1], ["scale", "bias", "v"])
    module = EvoNormS0(**kw)
    assert set(module.init(jax.random.key(0), x)["params"]) == {"scale", "bias", "v"}
    y = module.apply({"params": params}, x, train=True)
    np.testing.assert_allclose(y, ref_evonorm_s0(x.astype(np.float64), groups, **params), **F32)


def test_evonorm_s0_gradients():
    x = _x((2, 3, 2, 4), seed=31, loc=0.3)

    def ref(x, **params):
        return ref_evonorm_s0(x, 2, **params)

    _check_grads(EvoNormS0(num_groups=2), x, _params(4, ["scale", "bias", "v"]), ref)


# ---- dtypes, registry, errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "names", "ref"),
    [
        (FilterResponseNorm(), ["scale", "bias", "threshold"], ref_frn),
        (EvoNormB0(), ["scale", "bias", "v"], ref_evonorm_b0),
        (EvoNormS0(num_groups=2), ["scale", "bias", "v"],
         lambda x, **p: ref_evonorm_s0(x, 2, **p)),
    ],
)
def test_bfloat16_input_float32_statistics(module, names, ref):
    x = jnp.asarray(_x((4, 3, 3, 4), seed=40, loc=0.5, scale=2.0), jnp.bfloat16)
    x_rounded = np.asarray(x, ml_dtypes.bfloat16).astype(np.float64)
    params = _params(4, names)
    variables = {"params": params, "batch_stats": {"var": jnp.ones(4)}}
    y, _ = module.apply(variables, x, train=True, mutable=["batch_stats"])
    assert y.dtype == jnp.bfloat16
    # bf16 output: 8 significant bits, so rounding y costs up to 2^-9·|y| (|y| < 4 here)
    np.testing.assert_allclose(np.asarray(y, np.float64), ref(x_rounded, **params),
                               rtol=1e-2, atol=1e-2)
    y32, _ = module.clone(dtype=jnp.float32).apply(variables, x, train=True,
                                                   mutable=["batch_stats"])
    assert y32.dtype == jnp.float32  # float32 accuracy: the statistics were not taken in bf16
    np.testing.assert_allclose(y32, ref(x_rounded, **params), **F32)


def test_registry_names():
    assert NORMS.get("frn") is FilterResponseNorm
    assert NORMS.get("evonorm_b0") is EvoNormB0
    assert NORMS.get("evonorm_s0") is EvoNormS0


@pytest.mark.parametrize(
    ("module", "shape", "match"),
    [
        (EvoNormS0(num_groups=2, group_size=2), (2, 3, 3, 8), "num_groups=2, group_size=2"),
        (EvoNormS0(num_groups=3), (2, 3, 3, 8), "num_groups=3"),
        (EvoNormS0(num_groups=32), (2, 3, 3, 48), "num_groups=32"),  # explicit: must divide C
        (EvoNormS0(group_size=3), (2, 3, 3, 8), "group_size=3"),
        (EvoNormS0(epsilon=-1.0), (2, 3, 3, 8), "epsilon=-1.0"),
        (EvoNormB0(), (4, 8), r"spatial axes, got x.shape=\(4, 8\)"),
        (EvoNormB0(epsilon=-1.0), (2, 3, 3, 8), "epsilon=-1.0"),
        (EvoNormB0(momentum=2.0), (2, 3, 3, 8), "momentum=2.0"),
        (FilterResponseNorm(epsilon=-1e-6), (2, 3, 3, 8), "epsilon=-1e-06"),
        (FilterResponseNorm(), (8,), r"x.shape=\(8,\)"),
    ],
)
def test_value_errors(module, shape, match):
    with pytest.raises(ValueError, match=match):
        module.init(jax.random.key(0), jnp.zeros(shape))
