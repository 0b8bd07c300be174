"""L1/L2 penalties, the decay mask and label-smoothed cross-entropy vs float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normlab.nn.losses import softmax_cross_entropy
from normlab.nn.penalties import default_decay_mask, l1_penalty, l2_penalty
from normlab.registry import REGULARIZERS


def _params():
    rng = np.random.default_rng(0)
    f = lambda *shape: rng.normal(size=shape).astype(np.float32)
    return {
        "conv": {"kernel": f(3, 3, 2, 4), "bias": f(4)},
        # a norm's scale as the pipeline stacks it, (layers, C): 2-D, and still not decayed
        "norm": {"scale": f(2, 4), "bias": f(4)},
        "dense": {"kernel": f(4, 5), "bias": f(5)},
    }


def _kernels_only(params):
    return [params["conv"]["kernel"], params["dense"]["kernel"]]


def _all_leaves(params):
    return [leaf for group in params.values() for leaf in group.values()]


def _l2_ref(leaves, coef):
    return coef * 0.5 * sum(np.sum(np.asarray(w, np.float64) ** 2) for w in leaves)


def _l1_ref(leaves, coef):
    return coef * sum(np.sum(np.abs(np.asarray(w, np.float64))) for w in leaves)


def test_registry_names():
    assert REGULARIZERS.get("l2") is l2_penalty
    assert REGULARIZERS.get("l1") is l1_penalty
    assert REGULARIZERS.get("label_smoothing") is softmax_cross_entropy


def test_default_decay_mask_selects_kernels():
    mask = default_decay_mask(_params())
    assert mask == {
        "conv": {"kernel": True, "bias": False},
        "norm": {"scale": False, "bias": False},
        "dense": {"kernel": True, "bias": False},
    }


@pytest.mark.parametrize("coef", [0.0, 5e-4, 0.3])
def test_l2_and_l1_without_mask_cover_every_leaf(coef):
    params = _params()
    leaves = _all_leaves(params)
    np.testing.assert_allclose(float(l2_penalty(params, coef)), _l2_ref(leaves, coef), rtol=1e-5)
    np.testing.assert_allclose(float(l1_penalty(params, coef)), _l1_ref(leaves, coef), rtol=1e-5)


@pytest.mark.parametrize(
    "mask",
    [
        default_decay_mask,  # params -> pytree of bools (the optax form)
        lambda path, leaf: path[-1].key == "kernel",  # (path, leaf) -> bool
        "pytree",
        "prefix",
    ],
    ids=["params_fn", "path_fn", "pytree", "prefix"],
)
def test_masks_select_kernels(mask):
    params = _params()
    if mask == "pytree":
        mask = default_decay_mask(params)
    elif mask == "prefix":  # a bool at a subtree covers its leaves; conv bias then decays too
        mask = {"conv": True, "norm": False, "dense": {"kernel": True, "bias": False}}
        leaves = [params["conv"]["kernel"], params["conv"]["bias"], params["dense"]["kernel"]]
        np.testing.assert_allclose(float(l2_penalty(params, 0.1, mask)), _l2_ref(leaves, 0.1),
                                   rtol=1e-5)
        return
    leaves = _kernels_only(params)
    np.testing.assert_allclose(float(l2_penalty(params, 0.1, mask)), _l2_ref(leaves, 0.1),
                               rtol=1e-5)
    np.testing.assert_allclose(float(l1_penalty(params, 0.1, mask)), _l1_ref(leaves, 0.1),
                               rtol=1e-5)


def test_gradients_are_coef_w_and_coef_sign_w_on_masked_leaves():
    params = _params()
    coef = 0.2
    g2 = jax.grad(lambda p: l2_penalty(p, coef, default_decay_mask))(params)
    g1 = jax.grad(lambda p: l1_penalty(p, coef, default_decay_mask))(params)
    for group, leaves in params.items():
        for name, w in leaves.items():
            decayed = name == "kernel"
            w64 = np.asarray(w, np.float64)
            ref2 = coef * w64 if decayed else np.zeros_like(w64)
            ref1 = coef * np.sign(w64) if decayed else np.zeros_like(w64)
            np.testing.assert_allclose(np.asarray(g2[group][name]), ref2, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(np.asarray(g1[group][name]), ref1, rtol=1e-6, atol=1e-7)


def test_bfloat16_params_are_summed_in_float32():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(64, 64)), jnp.bfloat16)
    penalty = l2_penalty({"kernel": w}, 1.0)
    assert penalty.dtype == jnp.float32
    # Reference from the same bf16 values: only float32 accumulation error remains.
    np.testing.assert_allclose(float(penalty), _l2_ref([np.asarray(w, np.float64)], 1.0),
                               rtol=1e-5)


def test_penalty_under_jit_with_traced_coef():
    params = _params()
    value = jax.jit(lambda p, c: l2_penalty(p, c))(params, 0.5)
    np.testing.assert_allclose(float(value), _l2_ref(_all_leaves(params), 0.5), rtol=1e-5)


@pytest.mark.parametrize("fn", [l2_penalty, l1_penalty])
@pytest.mark.parametrize("coef", [-1e-4, float("nan")])
def test_bad_coef_raises(fn, coef):
    with pytest.raises(ValueError, match="coef must be >= 0, got coef="):
        fn(_params(), coef)


# --------------------------------------------------------------------------- losses


def _log_softmax64(z):
    z = np.asarray(z, np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def _xent_ref(logits, targets, eps):
    k = logits.shape[-1]
    t = (1 - eps) * np.asarray(targets, np.float64) + eps / k
    return np.mean(-(t * _log_softmax64(logits)).sum(axis=-1))


def _onehot64(labels, k):
    return np.eye(k)[labels]


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("shape", [(8, 10), (3, 5, 4)])
def test_cross_entropy_integer_labels(eps, shape):
    rng = np.random.default_rng(0)
    logits = (3 * rng.normal(size=shape)).astype(np.float32)
    labels = rng.integers(0, shape[-1], size=shape[:-1]).astype(np.int32)
    loss = softmax_cross_entropy(logits, labels, label_smoothing=eps)
    assert loss.shape == () and loss.dtype == jnp.float32
    ref = _xent_ref(logits, _onehot64(labels, shape[-1]), eps)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_cross_entropy_soft_targets_and_onehot_match_integer_labels(eps):
    rng = np.random.default_rng(0)
    n, k = 6, 7
    logits = rng.normal(size=(n, k)).astype(np.float32)
    soft = rng.dirichlet(np.ones(k), size=n).astype(np.float32)
    loss = softmax_cross_entropy(logits, soft, label_smoothing=eps, num_classes=k)
    np.testing.assert_allclose(float(loss), _xent_ref(logits, soft, eps), rtol=1e-5)
    labels = rng.integers(0, k, size=n)
    onehot = np.eye(k, dtype=np.float32)[labels]
    np.testing.assert_allclose(
        float(softmax_cross_entropy(logits, onehot, label_smoothing=eps)),
        float(softmax_cross_entropy(logits, labels.astype(np.int32), label_smoothing=eps)),
        rtol=1e-6,
    )


@pytest.mark.parametrize("eps", [0.0, 0.15])
def test_cross_entropy_gradient_is_softmax_minus_smoothed_target(eps):
    rng = np.random.default_rng(0)
    n, k = 5, 6
    logits = rng.normal(size=(n, k)).astype(np.float32)
    labels = rng.integers(0, k, size=n).astype(np.int32)
    grad = jax.grad(lambda z: softmax_cross_entropy(z, labels, label_smoothing=eps))(logits)
    t = (1 - eps) * _onehot64(labels, k) + eps / k
    ref = (np.exp(_log_softmax64(logits)) - t) / n  # d/dz of the batch mean
    np.testing.assert_allclose(np.asarray(grad), ref, rtol=1e-5, atol=1e-7)


def test_cross_entropy_bfloat16_logits_computed_in_float32():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(16, 10)), jnp.bfloat16)
    labels = rng.integers(0, 10, size=16).astype(np.int32)
    loss = softmax_cross_entropy(logits, labels, label_smoothing=0.1)
    assert loss.dtype == jnp.float32
    # Reference on the same bf16 values: the loss itself is float32, so 1e-5 holds.
    ref = _xent_ref(np.asarray(logits, np.float64), _onehot64(labels, 10), 0.1)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)


def test_cross_entropy_bad_arguments_raise():
    logits = jnp.zeros((4, 3))
    labels = jnp.zeros((4,), jnp.int32)
    for eps in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
            softmax_cross_entropy(logits, labels, label_smoothing=eps)
    with pytest.raises(ValueError, match="num_classes=5 does not match"):
        softmax_cross_entropy(logits, labels, num_classes=5)
    with pytest.raises(ValueError, match="integer labels must have shape"):
        softmax_cross_entropy(logits, jnp.zeros((4, 1), jnp.int32))
    with pytest.raises(ValueError, match="soft labels must have the logits' shape"):
        softmax_cross_entropy(logits, jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="class axis"):
        softmax_cross_entropy(jnp.zeros(()), jnp.zeros((), jnp.int32))
