"""Diagnostics (SPEC §1.10) against float64 NumPy references written from the formulas."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normlab.train.diagnostics import (
    activation_stats,
    collect_preacts,
    grad_update_norms,
    layer_diagnostics,
    percentiles,
    power_decomposition,
    unit_names,
    unit_percentiles,
)

SHAPES = [(6, 5, 4, 3), (8, 7, 5), (16, 7)]  # NHWC, (N, L, C), dense (N, C)


def rand(shape, seed=0, loc=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    return (loc + scale * rng.standard_normal(shape)).astype(np.float32)


def close(actual, expected, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


# ----------------------------------------------------------------- float64 NumPy references


def np_power(y):
    """Power decomposition from its definition, float64, positions = the middle axes."""
    y = np.asarray(y, np.float64)
    n, c = y.shape[0], y.shape[-1]
    y = y.reshape(n, -1, c)
    power_c = (y**2).mean(axis=(0, 1))
    inst_mean = y.mean(axis=1)  # (N, C)
    inst_var = ((y - inst_mean[:, None, :]) ** 2).mean(axis=1)
    inst_std = np.sqrt(inst_var)
    mu = y.mean(axis=(0, 1))
    return {
        "power_C": power_c,
        "sq_mean_C": mu**2,
        "instance_mean_var_C": inst_mean.var(axis=0),
        "instance_var_mean_C": inst_var.mean(axis=0),
        "instance_std_var_C": inst_std.var(axis=0),
        "power": power_c.mean(),
        "sq_mean_share": (mu**2).mean() / power_c.mean(),
        "instance_mean_var_share": inst_mean.var(axis=0).mean() / power_c.mean(),
        "instance_var_share": inst_var.mean(axis=0).mean() / power_c.mean(),
        "instance_mean_var": inst_mean.var(axis=0).mean(),
        "instance_std_var": inst_std.var(axis=0).mean(),
        "instance_std_var_norm": inst_std.var(axis=0).mean() / power_c.mean(),
    }


def np_saturated(y, activation, t):
    y = np.asarray(y, np.float64)
    if activation == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-y))
        return np.mean((s < 1 - t) | (s > t))
    return np.mean(np.abs(np.tanh(y)) > t)


def np_dead(y):
    y = np.asarray(y, np.float64)
    units = np.moveaxis(y, -1, 0).reshape(y.shape[-1], -1)
    return np.mean([not np.any(u > 0) for u in units])


def np_sq(tree):
    """Sum of squares over every array of a nested dict, float64."""
    if isinstance(tree, dict):
        return sum(np_sq(v) for v in tree.values())
    return np.sum(np.asarray(tree, np.float64) ** 2)


# ----------------------------------------------------------------------- power decomposition


@pytest.mark.parametrize("shape", SHAPES)
def test_power_decomposition_terms_and_identity(shape):
    y = rand(shape, seed=1, loc=0.3, scale=1.5)
    out = power_decomposition(jnp.asarray(y))
    ref = np_power(y)
    for key, expected in ref.items():
        assert out[key].dtype == jnp.float32, key
        close(out[key], expected, atol=1e-6 * ref["power"])
    # E[y²]_c = μ_c² + Var_n(μ_{n,c}) + E_n[σ²_{n,c}], per channel, on the returned terms
    total = out["sq_mean_C"] + out["instance_mean_var_C"] + out["instance_var_mean_C"]
    close(total, np.asarray(out["power_C"], np.float64))
    shares = out["sq_mean_share"] + out["instance_mean_var_share"] + out["instance_var_share"]
    close(shares, 1.0)


def test_power_decomposition_dense_has_no_instance_spread():
    # H = W = 1: μ_{n,c} = y_{n,c} and σ_{n,c} = 0, so all power is μ_c² + Var_n(y_{n,c}).
    y = rand((16, 5), seed=2, loc=1.0)
    out = power_decomposition(jnp.asarray(y))
    y64 = y.astype(np.float64)
    close(out["instance_mean_var_C"], y64.var(axis=0))
    np.testing.assert_array_equal(np.asarray(out["instance_var_mean_C"]), 0.0)
    np.testing.assert_array_equal(np.asarray(out["instance_std_var_C"]), 0.0)


def test_large_channel_offset_gives_sq_mean_share_one():
    offsets = np.array([1e3, -2e3, 5e2], np.float32)
    y = rand((8, 4, 4, 3), seed=3) + offsets
    out = power_decomposition(jnp.asarray(y))
    close(out["sq_mean_share"], np_power(y)["sq_mean_share"])
    assert float(out["sq_mean_share"]) > 1 - 1e-5


def test_identical_instance_statistics_give_zero_variability():
    # Every example holds the same spatial values per channel, in its own order: the instance
    # mean and std are the same for all n, as after InstanceNorm with an affine.
    rng = np.random.default_rng(4)
    base = rng.standard_normal((5 * 5, 3)).astype(np.float32) * [1.0, 2.0, 0.5] + [0.0, 1.0, -2.0]
    y = np.stack([base[rng.permutation(25)] for _ in range(6)]).reshape(6, 5, 5, 3)
    out = power_decomposition(jnp.asarray(y))
    close(out["instance_mean_var"], 0.0, atol=1e-10)
    close(out["instance_std_var"], 0.0, atol=1e-10)
    close(out["instance_std_var_norm"], 0.0, atol=1e-10)
    assert float(out["instance_var_share"]) > 0.1  # the power is still there, within instances


def test_power_decomposition_bf16_statistics_in_float32():
    # The reference sees the bf16-rounded values exactly; a float32 computation on them agrees
    # to float32 rounding, while bf16 accumulation would be off by ~1e-2.
    y = jnp.asarray(rand((8, 4, 4, 3), seed=5, loc=2.0), jnp.bfloat16)
    out = power_decomposition(y)
    ref = np_power(np.asarray(y.astype(jnp.float32)))
    for key in ("power_C", "sq_mean_share", "instance_mean_var", "instance_std_var"):
        assert out[key].dtype == jnp.float32
        close(out[key], ref[key], atol=1e-6 * ref["power"])


def test_power_decomposition_all_zero_input_gives_zero_shares():
    out = power_decomposition(jnp.zeros((4, 2, 2, 3)))
    for key in ("sq_mean_share", "instance_mean_var_share", "instance_std_var_norm"):
        assert float(out[key]) == 0.0


# ------------------------------------------------------------------------------- percentiles


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("q", [(15, 50, 85), (0, 2.5, 100)])
def test_percentiles_match_numpy_linear(shape, q):
    y = rand(shape, seed=6)
    unit = shape[-1] - 1
    out = percentiles(jnp.asarray(y), unit, q)
    expected = np.percentile(y[..., unit].astype(np.float64).ravel(), q, method="linear")
    assert out.shape == (len(q),) and out.dtype == jnp.float32
    close(out, expected)


def test_percentiles_bf16_input():
    y = jnp.asarray(rand((32, 4), seed=7), jnp.bfloat16)
    out = percentiles(y, 2)
    y64 = np.asarray(y.astype(jnp.float32), np.float64)  # exact bf16 values
    close(out, np.percentile(y64[:, 2], (15, 50, 85), method="linear"))


# -------------------------------------------------------------------------- activation_stats


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
@pytest.mark.parametrize("t", [0.98, 0.9])
def test_saturation_and_moments(shape, activation, t):
    y = rand(shape, seed=8, loc=0.5, scale=3.0)
    out = activation_stats(jnp.asarray(y), activation=activation, saturation_threshold=t)
    y64 = y.astype(np.float64)
    close(out["preact_mean"], y64.mean())
    close(out["preact_std"], y64.std())
    close(out["positive_fraction"], np.mean(y64 > 0))
    close(out["saturated_fraction"], np_saturated(y, activation, t))
    assert 0 < float(out["saturated_fraction"]) < 1
    assert "dead_fraction" not in out


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "gelu", "selu"])
def test_dead_units_constructed(activation):
    rng = np.random.default_rng(9)
    y = rng.standard_normal((6, 3, 3, 5)).astype(np.float32)
    y[..., 0] = -np.abs(y[..., 0])  # never fires
    y[..., 2] = 0.0  # relu(0) = 0: dead too
    y[..., 3] = -np.abs(y[..., 3])
    y[4, 1, 2, 3] = 0.1  # one example, one position fires: alive
    out = activation_stats(jnp.asarray(y), activation=activation)
    assert np_dead(y) == 0.4  # the construction: units 0 and 2 of 5
    close(out["dead_fraction"], np_dead(y))
    close(out["positive_fraction"], np.mean(y > 0))
    assert "saturated_fraction" not in out


def test_identity_has_neither_fraction():
    out = activation_stats(jnp.asarray(rand((4, 3))), activation="identity")
    assert set(out) == {"preact_mean", "preact_std", "positive_fraction"}


def test_activation_stats_bf16_input():
    y = jnp.asarray(rand((16, 4, 4, 3), seed=10, loc=3.0), jnp.bfloat16)
    out = activation_stats(y, activation="tanh")
    y64 = np.asarray(y.astype(jnp.float32), np.float64)
    assert out["preact_std"].dtype == jnp.float32
    close(out["preact_mean"], y64.mean())
    close(out["preact_std"], y64.std())


# ------------------------------------------------------------------------- grad_update_norms


def make_tree(seed, zero_layer=False):
    rng = np.random.default_rng(seed)
    tree = {
        f"layer_{i}": {
            "kernel": rng.standard_normal((3, 2)).astype(np.float32),
            "bias": rng.standard_normal((2,)).astype(np.float32),
        }
        for i in range(11)
    }
    tree["head"] = {"inner": {"scale": rng.standard_normal((4,)).astype(np.float32)}}
    if zero_layer:
        tree["layer_3"] = {k: np.zeros_like(v) for k, v in tree["layer_3"].items()}
    return jax.tree_util.tree_map(jnp.asarray, tree)


def test_grad_update_norms_match_numpy():
    grads, updates, params = make_tree(11), make_tree(12), make_tree(13, zero_layer=True)
    updates["layer_5"] = jax.tree_util.tree_map(jnp.zeros_like, updates["layer_5"])
    params["layer_5"] = jax.tree_util.tree_map(jnp.zeros_like, params["layer_5"])
    out = grad_update_norms(grads, updates, params)
    layers = [f"layer_{i}" for i in range(11)]
    expected_order = ["head", *layers]  # natural order: layer_10 after layer_9
    per_layer = [k.split("/")[1] for k in out if k.count("/") == 2]
    assert list(dict.fromkeys(per_layer)) == expected_order
    sq = {"grad_norm": 0.0, "update_norm": 0.0, "param_norm": 0.0}
    for layer in expected_order:
        for key, tree in (("grad_norm", grads), ("update_norm", updates), ("param_norm", params)):
            sq[key] += np_sq(tree[layer])
            close(out[f"diag/{layer}/{key}"], np.sqrt(np_sq(tree[layer])))
        u, p = np.sqrt(np_sq(updates[layer])), np.sqrt(np_sq(params[layer]))
        ratio = out[f"diag/{layer}/update_ratio"]
        if layer == "layer_3":  # params zero, update not
            assert np.isinf(float(ratio))
        elif layer == "layer_5":  # both zero
            assert float(ratio) == 0.0
        else:
            close(ratio, u / p)
    for key, value in sq.items():
        close(out[f"diag/{key}"], np.sqrt(value))
    close(out["diag/update_ratio"], np.sqrt(sq["update_norm"] / sq["param_norm"]))


# ---------------------------------------------------------------------------- collect_preacts


class Sower(nn.Module):
    """Sows its input to tanh as "preact", like NormAct does (plus a name to be ignored)."""

    @nn.compact
    def __call__(self, x):
        y = nn.Dense(3)(x)
        self.sow("intermediates", "preact", y)
        self.sow("intermediates", "other", 2 * y)
        return jnp.tanh(y)


class Deep(nn.Module):
    @nn.compact
    def __call__(self, x):
        for i in range(12):
            x = Sower(name=f"layer_{i}")(x)
        return x


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        return Sower()(Sower()(x))


class Nested(nn.Module):
    @nn.compact
    def __call__(self, x):
        for _ in range(11):
            x = Block()(x)  # Block_0 .. Block_10, each with Sower_0, Sower_1
        head = Sower(name="head")
        return head(head(x))  # one module called twice sows a 2-tuple


@pytest.mark.parametrize("jit", [False, True])
def test_collect_preacts_depth_order(jit):
    x = jnp.asarray(rand((4, 3), seed=14))
    model = Deep()
    variables = model.init(jax.random.key(0), x)
    apply = functools.partial(model.apply, mutable=["intermediates"])
    _, state = (jax.jit(apply) if jit else apply)(variables, x)
    preacts = collect_preacts(state)
    assert list(preacts) == [f"layer_{i}" for i in range(12)]
    assert list(collect_preacts(state["intermediates"])) == list(preacts)
    # layer_0's preact from the math: x W + b
    p = variables["params"]["layer_0"]["Dense_0"]
    x64 = np.asarray(x, np.float64)
    close(preacts["layer_0"], x64 @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"]))
    # each layer's input is tanh of the previous preact
    for i in range(1, 12):
        p = variables["params"][f"layer_{i}"]["Dense_0"]
        prev = np.tanh(np.asarray(preacts[f"layer_{i - 1}"], np.float64))
        expected = prev @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"])
        close(preacts[f"layer_{i}"], expected, atol=1e-5)


def test_collect_preacts_nested_and_repeated():
    x = jnp.asarray(rand((4, 3), seed=15))
    model = Nested()
    variables = model.init(jax.random.key(1), x)
    _, state = jax.jit(functools.partial(model.apply, mutable=["intermediates"]))(variables, x)
    expected = [f"Block_{b}/Sower_{s}" for b in range(11) for s in range(2)] + ["head/0", "head/1"]
    preacts = collect_preacts(state)
    assert list(preacts) == expected
    close(preacts["head/1"], np.asarray(state["intermediates"]["head"]["preact"][1]))


def test_collect_preacts_without_preact_is_empty():
    assert collect_preacts({"intermediates": {"Dense_0": {"other": (jnp.ones(2),)}}}) == {}


# -------------------------------------------------------------------------- layer_diagnostics


def test_layer_diagnostics_flat_metrics_vs_numpy():
    conv = rand((6, 4, 4, 5), seed=16, loc=0.2)
    dense = rand((12, 5), seed=17, loc=-0.1)
    preacts = {"conv_2": jnp.asarray(conv), "dense_10": jnp.asarray(dense)}
    out = layer_diagnostics(preacts, activation="relu", unit=3)
    moments = {"preact_mean", "preact_std", "positive_fraction", "dead_fraction"}
    power = {"power", "sq_mean_share", "instance_mean_var_share"}
    common = moments | power | {"p15", "p50", "p85"}
    spatial = {"instance_var_share", "instance_std_var_norm"}
    assert list(out)[0].startswith("diag/conv_2/") and list(out)[-1].startswith("diag/dense_10/")
    assert {k.split("/")[-1] for k in out if "/conv_2/" in k} == common | spatial
    assert {k.split("/")[-1] for k in out if "/dense_10/" in k} == common
    for name, y in (("conv_2", conv), ("dense_10", dense)):
        y64 = y.astype(np.float64)
        ref = np_power(y)
        pct = np.percentile(y64[..., 3].ravel(), (15, 50, 85), method="linear")
        close(out[f"diag/{name}/preact_std"], y64.std())
        close(out[f"diag/{name}/dead_fraction"], np_dead(y))
        close(out[f"diag/{name}/p15"], pct[0])
        close(out[f"diag/{name}/p85"], pct[2])
        close(out[f"diag/{name}/sq_mean_share"], ref["sq_mean_share"])
        close(out[f"diag/{name}/instance_mean_var_share"], ref["instance_mean_var_share"])
        assert all(v.shape == () and v.dtype == jnp.float32 for v in out.values())
    close(out["diag/conv_2/instance_std_var_norm"], np_power(conv)["instance_std_var_norm"])


@pytest.mark.parametrize("shape", SHAPES)
def test_unit_percentiles_every_unit_vs_numpy(shape):
    y = rand(shape, seed=19, loc=0.3)
    flat = y.astype(np.float64).reshape(-1, shape[-1])
    q = (15.0, 50.0, 85.0)
    out = np.asarray(unit_percentiles(jnp.asarray(y), q), np.float64)
    assert out.shape == (3, shape[-1])
    # each unit's sample on its own, sorted, interpolated as Hyndman & Fan type 7
    for c in range(shape[-1]):
        x = np.sort(flat[:, c])
        h = (len(x) - 1) * np.asarray(q) / 100
        lo = np.floor(h).astype(int)
        ref = x[lo] + (h - lo) * (x[np.minimum(lo + 1, len(x) - 1)] - x[lo])
        close(out[:, c], ref)


def test_unit_names_sort_as_units():
    assert unit_names(3) == ["u0", "u1", "u2"]
    names = unit_names(101)
    assert names[7] == "u007" and names[100] == "u100" and sorted(names) == names


def test_layer_diagnostics_every_unit_of_the_named_layers_only():
    a, b = rand((20, 11), seed=20), rand((20, 3), seed=21)
    preacts = {"a": jnp.asarray(a), "b": jnp.asarray(b)}
    out = layer_diagnostics(preacts, activation="sigmoid", unit_layers=("a",))
    default = layer_diagnostics(preacts, activation="sigmoid")
    extra = sorted(set(out) - set(default))
    assert extra == sorted(f"diag/a/p{p}/u{c:02d}" for p in (15, 50, 85) for c in range(11))
    for p in (15, 50, 85):
        for c in (0, 10):
            close(out[f"diag/a/p{p}/u{c:02d}"], np.percentile(a[:, c].astype(np.float64), p))
        close(out[f"diag/a/p{p}/u00"], np.asarray(default[f"diag/a/p{p}"], np.float64))
    with pytest.raises(ValueError, match="unit_layers c not among the layers; valid: a, b"):
        layer_diagnostics(preacts, activation="sigmoid", unit_layers=("c",))


def test_layer_diagnostics_percentile_names_follow_q():
    out = layer_diagnostics({"a": jnp.asarray(rand((8, 2)))}, activation="tanh", q=(2.5, 97.5))
    assert "diag/a/p2.5" in out and "diag/a/p97.5" in out and "diag/a/saturated_fraction" in out


def test_jit_matches_eager():
    preacts = {"a": jnp.asarray(rand((6, 3, 3, 4), seed=18)), "b": jnp.asarray(rand((6, 4)))}
    diag = functools.partial(layer_diagnostics, activation="sigmoid", unit=1)
    eager, jitted = diag(preacts), jax.jit(diag)(preacts)
    assert sorted(eager) == sorted(jitted)  # jit returns dict keys sorted as strings
    for key in eager:
        close(jitted[key], np.asarray(eager[key], np.float64), rtol=1e-6, atol=1e-7)
    y = preacts["a"]
    for fn in (power_decomposition, functools.partial(activation_stats, activation="relu")):
        e, j = fn(y), jax.jit(fn)(y)
        for key in e:
            close(j[key], np.asarray(e[key], np.float64), rtol=1e-6, atol=1e-7)
    close(jax.jit(percentiles, static_argnums=1)(y, 2), np.asarray(percentiles(y, 2), np.float64))
    trees = make_tree(19), make_tree(20), make_tree(21)
    e, j = grad_update_norms(*trees), jax.jit(grad_update_norms)(*trees)
    for key in e:
        close(j[key], np.asarray(e[key], np.float64), rtol=1e-6)


# ----------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call",
    [
        lambda y: activation_stats(y, activation="relu"),
        lambda y: percentiles(y, 0),
        power_decomposition,
    ],
)
def test_one_dimensional_input_raises(call):
    with pytest.raises(ValueError, match=r"ndim >= 2, got \(5,\)"):
        call(jnp.ones(5))


def test_bad_arguments_raise():
    y = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="unknown activation 'sigmoidal'"):
        activation_stats(y, activation="sigmoidal")
    for t in (0.5, 1.0, 1.2):
        with pytest.raises(ValueError, match=f"saturation_threshold={t}"):
            activation_stats(y, activation="tanh", saturation_threshold=t)
    for unit in (3, -1):
        with pytest.raises(ValueError, match=rf"unit must be in \[0, 3\), got unit={unit}"):
            percentiles(y, unit)
    with pytest.raises(ValueError, match="unit=5"):
        layer_diagnostics({"a": y}, activation="relu", unit=5)
    for q in ((), (15, 101), (-1,)):
        with pytest.raises(ValueError, match="q must be"):
            percentiles(y, 0, q)
    params = make_tree(22)
    bad = dict(params)
    del bad["head"]
    with pytest.raises(ValueError, match="grads must have the tree structure of params"):
        grad_update_norms(bad, params, params)
    with pytest.raises(ValueError, match="updates must have the tree structure of params"):
        grad_update_norms(params, bad, params)
