"""BatchNorm (global, per-device, ghost, cross-device groups) and BatchRenorm vs float64 NumPy.

References are written from the formulas in float64 NumPy; float32 results are compared at 1e-5
(relative, with the same absolute floor), bfloat16 statistics at float32 tolerance. The
multi-device tests run under `shard_map` on the 8 fake CPU devices of conftest.py.
"""

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from finite_differences import fd_grads
from jax.sharding import PartitionSpec as P

from normlab.nn.batch_renorm import BatchRenorm
from normlab.nn.norms import BatchNorm
from normlab.registry import NORMS

F32 = {"rtol": 1e-5, "atol": 1e-5}
EPS = 1e-5

shard_map = getattr(jax, "shard_map", None)
if shard_map is None:  # older jax
    from jax.experimental.shard_map import shard_map


def _x(shape, seed=0, loc=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    return (loc + scale * rng.standard_normal(shape)).astype(np.float32)


def _affine(channels, seed=1):
    rng = np.random.default_rng(seed)
    scale = (1 + 0.5 * rng.standard_normal(channels)).astype(np.float32)
    bias = rng.standard_normal(channels).astype(np.float32)
    return scale, bias


def _variables(module, x, scale, bias):
    variables = module.init(jax.random.key(0), x)
    return {**variables, "params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}}


def _train_step(module, variables, x):
    y, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
    return y, {**variables, **updates}


# ---- float64 references, from the formulas ------------------------------------------------------


def ref_batch_stats(x):
    axes = tuple(range(x.ndim - 1))
    return x.mean(axes), ((x - x.mean(axes)) ** 2).mean(axes)


def ref_bn(x, scale, bias, mean, var, eps=EPS):
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def ref_ghost_bn(x, ghost, scale, bias, eps=EPS):
    """y and the mean over ghost batches of their mean and variance."""
    means, variances, ys = [], [], []
    for start in range(0, x.shape[0], ghost):
        mean, var = ref_batch_stats(x[start : start + ghost])
        ys.append(ref_bn(x[start : start + ghost], scale, bias, mean, var, eps))
        means.append(mean)
        variances.append(var)
    return np.concatenate(ys), np.mean(means, axis=0), np.mean(variances, axis=0)




# ---- BatchNorm on one device -------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 5, 6), (2, 3, 2, 4, 3)])
def test_train_output_and_running_averages(shape):
    bn = BatchNorm(momentum=0.8)
    scale, bias = _affine(shape[-1])
    batches = [_x(shape, seed=s, loc=s - 1.0, scale=1.0 + s) for s in range(3)]
    variables = _variables(bn, batches[0], scale, bias)
    ra_mean, ra_var = np.zeros(shape[-1]), np.ones(shape[-1])
    for x in batches:
        y, variables = _train_step(bn, variables, x)
        mean, var = ref_batch_stats(x.astype(np.float64))
        np.testing.assert_allclose(y, ref_bn(x, scale, bias, mean, var), **F32)
        ra_mean, ra_var = 0.8 * ra_mean + 0.2 * mean, 0.8 * ra_var + 0.2 * var
        np.testing.assert_allclose(variables["batch_stats"]["mean"], ra_mean, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(variables["batch_stats"]["var"], ra_var, rtol=1e-5)


def test_unbiased_running_variance():
    shape = (4, 3, 2, 5)
    bn = BatchNorm(momentum=0.5, unbiased_running_var=True)
    batches = [_x(shape, seed=10 + s, scale=2.0) for s in range(3)]
    variables = bn.init(jax.random.key(0), batches[0])
    n = 4 * 3 * 2
    ra_var = np.ones(5)
    for x in batches:
        y, variables = _train_step(bn, variables, x)
        mean, var = ref_batch_stats(x.astype(np.float64))
        # the output still uses the biased variance; only the running average is corrected
        np.testing.assert_allclose(y, ref_bn(x, 1.0, 0.0, mean, var), **F32)
        ra_var = 0.5 * ra_var + 0.5 * var * n / (n - 1)
        np.testing.assert_allclose(variables["batch_stats"]["var"], ra_var, rtol=1e-5)


def test_init_does_not_update_running_stats():
    x = _x((4, 3, 3, 2), loc=5.0)
    variables = BatchNorm().init(jax.random.key(0), x, train=True)
    np.testing.assert_array_equal(variables["batch_stats"]["mean"], np.zeros(2))
    np.testing.assert_array_equal(variables["batch_stats"]["var"], np.ones(2))


def test_eval_is_affine_map_with_running_stats():
    shape = (6, 3, 4, 5)
    bn = BatchNorm()
    scale, bias = _affine(5)
    rng = np.random.default_rng(20)
    ra_mean = rng.standard_normal(5).astype(np.float32)
    ra_var = rng.uniform(0.2, 3.0, 5).astype(np.float32)
    variables = _variables(bn, _x(shape), scale, bias)
    variables["batch_stats"] = {"mean": jnp.asarray(ra_mean), "var": jnp.asarray(ra_var)}
    x = _x(shape, seed=21, loc=1.0)
    a = scale / np.sqrt(ra_var.astype(np.float64) + EPS)
    b = bias - ra_mean * a
    y, updates = bn.apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(y, x * a + b, **F32)
    np.testing.assert_array_equal(updates["batch_stats"]["var"], ra_var)  # eval changes nothing
    single = bn.apply(variables, x[:1])  # eval does not depend on the rest of the batch
    np.testing.assert_allclose(single, y[:1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("train", [True, False])
def test_gradients(train):
    shape = (3, 2, 2, 3)
    bn = BatchNorm()
    x, w = _x(shape, seed=30, loc=0.5), _x(shape, seed=31)
    scale, bias = _affine(3)
    ra_mean, ra_var = np.array([0.1, -0.2, 0.3]), np.array([0.5, 1.5, 2.0])
    stats = {"mean": jnp.asarray(ra_mean, jnp.float32), "var": jnp.asarray(ra_var, jnp.float32)}

    def loss(x, params):
        y, _ = bn.apply({"params": params, "batch_stats": stats}, x, train=train,
                        mutable=["batch_stats"])
        return jnp.sum(y * w)

    def ref_loss(x, s, b):
        mean, var = ref_batch_stats(x) if train else (ra_mean, ra_var)
        return np.sum(ref_bn(x, s, b, mean, var) * w)

    params = {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}
    dx, dparams = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), params)
    ex, es, eb = fd_grads(ref_loss, [x, scale, bias])
    # Gradients sum O(size) float32 terms, so they carry ~1e-6 absolute rounding error.
    np.testing.assert_allclose(dx, ex, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dparams["scale"], es, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dparams["bias"], eb, rtol=1e-4, atol=1e-5)


def test_bfloat16_input_gives_float32_statistics():
    x = jnp.asarray(_x((8, 3, 3, 4), seed=40, loc=2.0, scale=3.0), jnp.bfloat16)
    x_rounded = np.asarray(x, ml_dtypes.bfloat16).astype(np.float64)
    bn = BatchNorm(momentum=0.0)  # running stats := batch stats
    y, variables = _train_step(bn, bn.init(jax.random.key(0), x), x)
    mean, var = ref_batch_stats(x_rounded)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(variables["batch_stats"]["mean"], mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(variables["batch_stats"]["var"], var, rtol=1e-5)
    # bf16 output: 8 significant bits, so rounding y costs up to 2^-9·|y| (|y| < 4 here)
    np.testing.assert_allclose(np.asarray(y, np.float64), ref_bn(x_rounded, 1, 0, mean, var),
                               rtol=1e-2, atol=1e-2)


# ---- ghost batches ----------------------------------------------------------------------------


def test_ghost_batch_of_whole_batch_is_batch_norm():
    x = _x((6, 3, 2, 4), seed=50, loc=1.0)
    scale, bias = _affine(4)
    bn, ghost = BatchNorm(momentum=0.7), BatchNorm(momentum=0.7, ghost_batch_size=6)
    y_bn, v_bn = _train_step(bn, _variables(bn, x, scale, bias), x)
    y_gh, v_gh = _train_step(ghost, _variables(ghost, x, scale, bias), x)
    np.testing.assert_allclose(y_gh, y_bn, rtol=1e-6, atol=1e-6)
    for name in ("mean", "var"):
        np.testing.assert_allclose(v_gh["batch_stats"][name], v_bn["batch_stats"][name],
                                   rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("shape", "ghost"), [((8, 3, 2, 4), 2), ((12, 5), 4), ((6, 2, 2, 3), 3)])
def test_ghost_batches(shape, ghost):
    scale, bias = _affine(shape[-1])
    module = BatchNorm(momentum=0.6, ghost_batch_size=ghost)
    batches = [_x(shape, seed=60 + s, loc=s, scale=1 + s) for s in range(3)]
    variables = _variables(module, batches[0], scale, bias)
    ra_mean, ra_var = np.zeros(shape[-1]), np.ones(shape[-1])
    for x in batches:
        y, variables = _train_step(module, variables, x)
        y_ref, mean, var = ref_ghost_bn(x.astype(np.float64), ghost, scale, bias)
        np.testing.assert_allclose(y, y_ref, **F32)
        ra_mean, ra_var = 0.6 * ra_mean + 0.4 * mean, 0.6 * ra_var + 0.4 * var
        np.testing.assert_allclose(variables["batch_stats"]["mean"], ra_mean, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(variables["batch_stats"]["var"], ra_var, rtol=1e-5)
    # eval uses the running statistics whatever the batch size
    y_eval = module.apply(variables, batches[0][:1])
    np.testing.assert_allclose(y_eval, ref_bn(batches[0][:1], scale, bias, ra_mean, ra_var), **F32)


def test_ghost_unbiased_running_variance_counts_one_ghost_batch():
    x = _x((8, 3, 2, 2), seed=70, scale=2.0)
    module = BatchNorm(momentum=0.0, ghost_batch_size=4, unbiased_running_var=True)
    _, variables = _train_step(module, module.init(jax.random.key(0), x), x)
    _, _, var = ref_ghost_bn(x.astype(np.float64), 4, 1.0, 0.0)
    n = 4 * 3 * 2
    np.testing.assert_allclose(variables["batch_stats"]["var"], var * n / (n - 1), rtol=1e-5)


# ---- several devices: shard_map over the 8 fake CPU devices --------------------------------------


MESH = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def _sharded_train(module, variables, x):
    """Train-mode apply under shard_map; running stats come back stacked per device (8, C)."""

    def step(x_local):
        y, updates = module.apply(variables, x_local, train=True, mutable=["batch_stats"])
        stats = updates["batch_stats"]
        return y, stats["mean"][None], stats["var"][None]

    run = shard_map(step, mesh=MESH, in_specs=P("data"), out_specs=P("data"))
    return jax.jit(run)(x)


def test_global_statistics_match_one_device():
    x = _x((16, 3, 2, 5), seed=80, loc=1.0, scale=2.0)
    scale, bias = _affine(5)
    module = BatchNorm(momentum=0.5, axis_name="data")
    variables = _variables(module, x[:2], scale, bias)  # init outside shard_map: no collective
    y, ra_mean, ra_var = _sharded_train(module, variables, x)
    mean, var = ref_batch_stats(x.astype(np.float64))
    np.testing.assert_allclose(y, ref_bn(x, scale, bias, mean, var), **F32)
    for device in range(8):  # every replica holds the global running stats
        np.testing.assert_allclose(ra_mean[device], 0.5 * mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ra_var[device], 0.5 + 0.5 * var, rtol=1e-5)
    one_device, _ = _train_step(BatchNorm(momentum=0.5), variables, x)
    np.testing.assert_allclose(y, one_device, rtol=1e-5, atol=1e-5)
    # the unbiased correction counts the values of the whole global batch, n = 16·3·2
    unbiased = BatchNorm(momentum=0.0, axis_name="data", unbiased_running_var=True)
    _, _, ra_var = _sharded_train(unbiased, variables, x)
    np.testing.assert_allclose(ra_var[0], var * 96 / 95, rtol=1e-5)


def test_jit_on_a_sharded_batch_uses_global_statistics():
    x = _x((16, 3, 2, 5), seed=86, loc=-1.0, scale=2.0)
    module = BatchNorm(momentum=0.0)
    variables = module.init(jax.random.key(0), x)
    x_sharded = jax.device_put(x, jax.sharding.NamedSharding(MESH, P("data")))
    assert len(x_sharded.sharding.device_set) == 8
    y, updated = jax.jit(functools.partial(_train_step, module))(variables, x_sharded)
    mean, var = ref_batch_stats(x.astype(np.float64))
    np.testing.assert_allclose(y, ref_bn(x, 1, 0, mean, var), **F32)
    np.testing.assert_allclose(updated["batch_stats"]["var"], var, rtol=1e-5)


def test_global_statistics_gradients_match_one_device():
    x, w = _x((16, 2, 2, 3), seed=81, loc=0.5), _x((16, 2, 2, 3), seed=82)
    scale, bias = _affine(3)
    sharded_bn, bn = BatchNorm(axis_name="data"), BatchNorm()
    stats = bn.init(jax.random.key(0), x)["batch_stats"]

    def sharded_loss(params, x):
        def apply(params, x_local):
            y, _ = sharded_bn.apply({"params": params, "batch_stats": stats}, x_local,
                                    train=True, mutable=["batch_stats"])
            return y

        y = shard_map(apply, mesh=MESH, in_specs=(P(), P("data")), out_specs=P("data"))(params, x)
        return jnp.sum(y * w)

    def loss(params, x):
        y, _ = bn.apply({"params": params, "batch_stats": stats}, x, train=True,
                        mutable=["batch_stats"])
        return jnp.sum(y * w)

    params = {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}
    sharded = jax.jit(jax.grad(sharded_loss, argnums=(0, 1)))(params, jnp.asarray(x))
    single = jax.grad(loss, argnums=(0, 1))(params, jnp.asarray(x))
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("groups", [[[0, 1, 2, 3], [4, 5, 6, 7]], [[0, 2, 4, 6], [1, 3, 5, 7]]])
def test_cross_device_groups(groups):
    x = _x((16, 2, 3, 4), seed=83, loc=-1.0, scale=1.5)
    module = BatchNorm(momentum=0.0, axis_name="data", axis_index_groups=groups)
    y, ra_mean, ra_var = _sharded_train(module, module.init(jax.random.key(0), x[:2]), x)
    for group in groups:
        rows = np.concatenate([np.arange(2 * d, 2 * d + 2) for d in group])
        sub_batch = x[rows].astype(np.float64)
        mean, var = ref_batch_stats(sub_batch)
        np.testing.assert_allclose(y[rows], ref_bn(sub_batch, 1, 0, mean, var), **F32)
        for device in group:
            np.testing.assert_allclose(ra_mean[device], mean, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(ra_var[device], var, rtol=1e-5)


def test_per_device_statistics_without_axis_name():
    x = _x((16, 2, 3, 4), seed=84, loc=2.0)
    module = BatchNorm(momentum=0.0)
    y, ra_mean, ra_var = _sharded_train(module, module.init(jax.random.key(0), x[:2]), x)
    for device in range(8):
        shard = x[2 * device : 2 * device + 2].astype(np.float64)
        mean, var = ref_batch_stats(shard)
        np.testing.assert_allclose(y[2 * device : 2 * device + 2], ref_bn(shard, 1, 0, mean, var),
                                   **F32)
        np.testing.assert_allclose(ra_var[device], var, rtol=1e-5)


def test_ghost_batches_across_devices_average_running_stats():
    x = _x((16, 2, 2, 3), seed=85, loc=0.5, scale=2.0)
    module = BatchNorm(momentum=0.0, ghost_batch_size=1, axis_name="data")
    y, ra_mean, ra_var = _sharded_train(module, module.init(jax.random.key(0), x[:2]), x)
    y_ref, mean, var = ref_ghost_bn(x.astype(np.float64), 1, 1.0, 0.0)
    np.testing.assert_allclose(y, y_ref, **F32)
    for device in range(8):
        np.testing.assert_allclose(ra_mean[device], mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ra_var[device], var, rtol=1e-5)


def test_bad_index_groups():
    module = BatchNorm(axis_name="data", axis_index_groups=[[0, 1, 2], [3, 4, 5, 6, 7]])
    x = _x((16, 3))
    with pytest.raises(ValueError, match="axis_index_groups"):
        _sharded_train(module, module.init(jax.random.key(0), x[:2]), x)


# ---- BatchRenorm -------------------------------------------------------------------------------


def _renorm_variables(module, x, scale, bias, ra_mean, ra_var):
    variables = _variables(module, x, scale, bias)
    variables["batch_stats"] = {"mean": jnp.asarray(ra_mean, jnp.float32),
                                "var": jnp.asarray(ra_var, jnp.float32)}
    return variables


def ref_renorm(x, scale, bias, ra_mean, ra_var, r_max, d_max, eps=EPS):
    mean, var = ref_batch_stats(x)
    sigma_b, sigma = np.sqrt(var + eps), np.sqrt(ra_var + eps)
    r = np.clip(sigma_b / sigma, 1 / r_max, r_max)
    d = np.clip((mean - ra_mean) / sigma, -d_max, d_max)
    return ((x - mean) / sigma_b * r + d) * scale + bias, r, d


RA_MEAN = np.array([0.0, 1.5, -0.3, 0.2, -2.0])
RA_VAR = np.array([1.0, 0.1, 4.0, 0.8, 9.0])


def test_renorm_train_eval_and_running_stats():
    x = _x((6, 3, 2, 5), seed=90, loc=0.2, scale=1.5)
    scale, bias = _affine(5)
    module = BatchRenorm(r_max=1.5, d_max=0.5, momentum=0.9)
    variables = _renorm_variables(module, x, scale, bias, RA_MEAN, RA_VAR)
    y, updated = _train_step(module, variables, x)
    y_ref, r, d = ref_renorm(x.astype(np.float64), scale, bias, RA_MEAN, RA_VAR, 1.5, 0.5)
    assert np.any(r == 1.5) and np.any(np.abs(d) == 0.5)  # the clipping is exercised
    np.testing.assert_allclose(y, y_ref, **F32)
    mean, var = ref_batch_stats(x.astype(np.float64))
    np.testing.assert_allclose(updated["batch_stats"]["mean"], 0.9 * RA_MEAN + 0.1 * mean,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(updated["batch_stats"]["var"], 0.9 * RA_VAR + 0.1 * var, rtol=1e-5)
    y_eval = module.apply(variables, x)
    np.testing.assert_allclose(y_eval, ref_bn(x, scale, bias, RA_MEAN, RA_VAR), **F32)


def test_renorm_without_clipping_room_is_batch_norm():
    x = _x((6, 3, 2, 5), seed=91, loc=-0.5, scale=2.0)
    scale, bias = _affine(5)
    renorm = BatchRenorm(r_max=1.0, d_max=0.0, momentum=0.7)
    bn = BatchNorm(momentum=0.7)
    y_rn, v_rn = _train_step(renorm, _renorm_variables(renorm, x, scale, bias, RA_MEAN, RA_VAR), x)
    y_bn, v_bn = _train_step(bn, _renorm_variables(bn, x, scale, bias, RA_MEAN, RA_VAR), x)
    np.testing.assert_allclose(y_rn, y_bn, rtol=1e-6, atol=1e-6)
    for name in ("mean", "var"):
        np.testing.assert_allclose(v_rn["batch_stats"][name], v_bn["batch_stats"][name],
                                   rtol=1e-6, atol=1e-7)


def test_renorm_gradients_treat_r_and_d_as_constants():
    shape = (4, 2, 2, 5)
    x, w = _x(shape, seed=92, loc=0.3), _x(shape, seed=93)
    scale, bias = _affine(5)
    module = BatchRenorm(r_max=1.5, d_max=0.5)
    stats = {"mean": jnp.asarray(RA_MEAN, jnp.float32), "var": jnp.asarray(RA_VAR, jnp.float32)}

    def loss(x, params):
        y, _ = module.apply({"params": params, "batch_stats": stats}, x, train=True,
                            mutable=["batch_stats"])
        return jnp.sum(y * w)

    x64 = x.astype(np.float64)
    _, r, d = ref_renorm(x64, scale, bias, RA_MEAN, RA_VAR, 1.5, 0.5)

    def ref_loss(x, s, b):  # r and d frozen at their values for the unperturbed x
        mean, var = ref_batch_stats(x)
        return np.sum((((x - mean) / np.sqrt(var + EPS) * r + d) * s + b) * w)

    params = {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}
    dx, dparams = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), params)
    ex, es, eb = fd_grads(ref_loss, [x, scale, bias])
    np.testing.assert_allclose(dx, ex, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dparams["scale"], es, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dparams["bias"], eb, rtol=1e-4, atol=1e-5)


def test_renorm_global_statistics_under_shard_map():
    x = _x((16, 2, 2, 5), seed=94, loc=1.0)
    module = BatchRenorm(r_max=2.0, d_max=1.0, momentum=0.0, axis_name="data")
    variables = _renorm_variables(module, x[:2], np.ones(5), np.zeros(5), RA_MEAN, RA_VAR)
    y, ra_mean, ra_var = _sharded_train(module, variables, x)
    y_ref, _, _ = ref_renorm(x.astype(np.float64), 1.0, 0.0, RA_MEAN, RA_VAR, 2.0, 1.0)
    np.testing.assert_allclose(y, y_ref, **F32)
    mean, var = ref_batch_stats(x.astype(np.float64))
    np.testing.assert_allclose(ra_var[3], var, rtol=1e-5)


# ---- registry and errors ---------------------------------------------------------------------


def test_registry_names():
    assert NORMS.get("batch") is BatchNorm
    assert NORMS.get("batch_renorm") is BatchRenorm
    assert NORMS.build("batch", ghost_batch_size=4).ghost_batch_size == 4


@pytest.mark.parametrize(
    ("module", "shape", "match"),
    [
        (BatchNorm(ghost_batch_size=3), (8, 4), "ghost_batch_size=3"),
        (BatchNorm(ghost_batch_size=0), (8, 4), "ghost_batch_size=0"),
        (BatchNorm(epsilon=-1.0), (8, 4), "epsilon=-1.0"),
        (BatchNorm(momentum=1.5), (8, 4), "momentum=1.5"),
        (BatchNorm(), (8,), r"x.shape=\(8,\)"),
        (BatchRenorm(r_max=0.5), (8, 4), "r_max=0.5"),
        (BatchRenorm(d_max=-1.0), (8, 4), "d_max=-1.0"),
        (BatchRenorm(epsilon=-1e-3), (8, 4), "epsilon=-0.001"),
        (BatchRenorm(momentum=-0.1), (8, 4), "momentum=-0.1"),
    ],
)
def test_value_errors(module, shape, match):
    with pytest.raises(ValueError, match=match):
        module.init(jax.random.key(0), jnp.zeros(shape), train=True)


def test_ghost_size_is_only_checked_in_train_mode():
    module = BatchNorm(ghost_batch_size=4)
    variables = module.init(jax.random.key(0), jnp.zeros((8, 3)))
    assert module.apply(variables, jnp.zeros((3, 3))).shape == (3, 3)
    with pytest.raises(ValueError, match="divide the batch size N=6"):
        module.apply(variables, jnp.zeros((6, 3)), train=True, mutable=["batch_stats"])

