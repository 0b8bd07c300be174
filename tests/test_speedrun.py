"""The CIFAR-10 speed trainer's parts (configs/cifar10_speedrun.py), each against float64 NumPy
references written from the formulas: the patch-whitening stem whitens the patches it was
fitted on, alternating flip mirrors each image in exactly every other epoch, test-time
augmentation averages the views it claims, reflect-padded translations, the triangular
schedule with a separate norm-bias lr and Lookahead; and the config's runlocal trains."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from normlab.data.augment import apply_crop
from normlab.data.loader import EpochSampler
from normlab.models.speednet import SpeedNet
from normlab.nn.patch_whitening import PatchWhitening
from normlab.train.optim import build_optimizer
from normlab.train.step import augment_batch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets"


def _patches64(x, p):
    """Every p×p patch, flattened in (dy, dx, c) order, float64."""
    x = np.asarray(x, np.float64)
    n, h, w, c = x.shape
    rows = [x[:, dy : dy + h - p + 1, dx : dx + w - p + 1, :] for dy in range(p) for dx in range(p)]
    return np.stack(rows, axis=-2).reshape(-1, p * p * c)


def _correlated_images(rng, n=48, size=12):
    """Images whose neighbouring pixels and channels are correlated (as in natural images)."""
    white = rng.normal(size=(n, size + 1, size + 1, 3))
    smooth = white[:, 1:, 1:] + 0.8 * white[:, :-1, 1:] + 0.6 * white[:, 1:, :-1]
    return (smooth @ np.array([[1.0, 0.5, 0.2], [0.0, 1.0, 0.4], [0.0, 0.0, 1.0]]) + 0.3)


# ------------------------------------------------------------------------- patch whitening


@pytest.mark.parametrize("basis", ["pca", "zca"])
def test_patch_whitening_whitens_the_patches_it_was_fitted_on(rng, basis):
    x = jnp.asarray(_correlated_images(rng), jnp.float32)
    layer = PatchWhitening(patch_size=2, eps=1e-6, basis=basis)
    variables = layer.init(jax.random.key(0), x, train=False)
    y, stats = layer.apply(variables, x, train=True, mutable=["batch_stats"])
    z = np.asarray(y, np.float64).reshape(-1, 24)
    np.testing.assert_array_equal(z[:, 12:], -z[:, :12])  # the negated copy
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(z[:, :12].T, bias=True), np.eye(12), atol=2e-3)

    # fitted once: later calls, in training on other data as in evaluation, keep W and μ
    fitted = {**variables, **stats}
    other = jnp.asarray(_correlated_images(rng) * 3.0, jnp.float32)
    _, again = layer.apply(fitted, other, train=True, mutable=["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, again["batch_stats"], stats["batch_stats"])
    np.testing.assert_allclose(layer.apply(fitted, x, train=False), y, rtol=1e-5, atol=1e-5)


def test_patch_whitening_pca_components_have_variance_lam_over_lam_plus_eps(rng):
    x = _correlated_images(rng)
    eps = 0.05
    layer = PatchWhitening(patch_size=2, eps=eps)
    variables = layer.init(jax.random.key(0), jnp.asarray(x, jnp.float32), train=False)
    y, _ = layer.apply(variables, jnp.asarray(x, jnp.float32), train=True, mutable=["batch_stats"])
    lam = np.linalg.eigvalsh(np.cov(_patches64(x, 2).T, bias=True))[::-1]
    z = np.asarray(y, np.float64).reshape(-1, 24)[:, :12]
    np.testing.assert_allclose(np.cov(z.T, bias=True), np.diag(lam / (lam + eps)), atol=2e-4)


# --------------------------------------------------------------------------- alternating flip


def test_alternating_flip_flips_each_image_in_exactly_alternate_epochs():
    n, batch, epochs = 40, 8, 4
    sampler = EpochSampler(n, batch, seed=3)
    # image i: a ramp along the width (mirroring reverses it) whose height encodes i
    ramp = np.arange(6, dtype=np.float32)
    images = (np.arange(n, dtype=np.float32)[:, None, None, None] * 10 + ramp[None, None, :, None])
    images = np.broadcast_to(images, (n, 2, 6, 1))
    options = {"alternating_flip": {"steps_per_epoch": sampler.steps_per_epoch, "seed": 0}}
    flipped = np.full((epochs, n), -1)
    for step in range(epochs * sampler.steps_per_epoch):
        idx = sampler.batch_indices(step)
        out, _ = augment_batch(jax.random.key(step), jnp.asarray(images[idx]),
                               jnp.zeros((batch, 2)), options, example_ids=jnp.asarray(idx),
                               step=jnp.asarray(step))
        out = np.asarray(out)
        is_flipped = out[:, 0, 0, 0] > out[:, 0, -1, 0]
        np.testing.assert_array_equal(np.where(is_flipped[:, None, None, None],
                                               images[idx][:, :, ::-1], images[idx]), out)
        epoch = step // sampler.steps_per_epoch
        assert (flipped[epoch, idx] == -1).all()  # each image once per epoch
        flipped[epoch, idx] = is_flipped
    assert (flipped[1:] == 1 - flipped[:-1]).all()  # every image, every epoch: the other way
    assert 0.25 < flipped[0].mean() < 0.75  # a fair coin decides which epochs

    with pytest.raises(ValueError, match="index in the training split"):
        augment_batch(jax.random.key(0), jnp.asarray(images[:2]), jnp.zeros((2, 2)), options)


@pytest.mark.parametrize("fill, mode", [("reflect", "reflect"), ("zeros", "constant")])
def test_crop_fill_matches_numpy_padding(rng, fill, mode):
    x = rng.normal(size=(3, 5, 6, 2)).astype(np.float32)
    offsets = np.array([[0, 4], [2, 2], [4, 1]])
    padded = np.pad(x.astype(np.float64), ((0, 0), (2, 2), (2, 2), (0, 0)), mode=mode)
    expected = np.stack([padded[i, dy : dy + 5, dx : dx + 6] for i, (dy, dx) in enumerate(offsets)])
    y = apply_crop(jnp.asarray(x), jnp.asarray(offsets, jnp.int32), pad=2, fill=fill)
    np.testing.assert_array_equal(np.asarray(y, np.float64), expected)
    with pytest.raises(ValueError, match="valid: zeros, reflect"):
        apply_crop(jnp.asarray(x), jnp.asarray(offsets, jnp.int32), pad=2, fill="wrap")


# ------------------------------------------------------------------- test-time augmentation


@pytest.fixture(scope="module")
def tiny_speednet():
    """A fitted 8-wide SpeedNet (BN, one training call) and a batch of images."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16, 16, 3)), jnp.float32)
    model = SpeedNet(widths=(8, 8, 8), norm_kwargs={"momentum": 0.4, "use_scale": False})
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)
    stats = _train_apply(model, variables, x)[1]
    return model, {**variables, **stats}, np.asarray(x)


def _train_apply(model, variables, x):
    return jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x)


def _eval_apply(model, variables, x):
    return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)


@pytest.mark.parametrize("tta", ["flip", "flip_translate"])
def test_tta_logits_are_the_weighted_mean_of_the_views(tiny_speednet, tta):
    model, variables, x = tiny_speednet
    mirror = lambda a: a[:, :, ::-1]  # noqa: E731
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    down_right, up_left = padded[:, :16, :16], padded[:, 2:, 2:]  # content moved by (+1, +1)
    np.testing.assert_array_equal(down_right[:, 1:, 1:], x[:, :-1, :-1])
    views = {"flip": [(x, 0.5), (mirror(x), 0.5)],
             "flip_translate": [(x, 0.25), (mirror(x), 0.25), (down_right, 0.125),
                                (mirror(down_right), 0.125), (up_left, 0.125),
                                (mirror(up_left), 0.125)]}[tta]
    single = model.clone(tta="none")
    # every view in one batch (eval mode: each image's logits are its own), split, weighted
    each = _eval_apply(single, variables, jnp.asarray(np.concatenate([v for v, _ in views])))
    each = np.asarray(each, np.float64).reshape(len(views), len(x), -1)
    expected = sum(w * logits for (_, w), logits in zip(views, each, strict=True))
    got = _eval_apply(model.clone(tta=tta), variables, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=1e-5, atol=1e-6)
    # training never augments at test time: the train-mode logits are the image's own
    train_logits = _train_apply(model.clone(tta=tta), variables, jnp.asarray(x))[0]
    single_logits = _train_apply(single, variables, jnp.asarray(x))[0]
    np.testing.assert_array_equal(train_logits, single_logits)


# ---------------------------------------------------------------------------------- optimizer


def test_nesterov_triangular_norm_bias_lr_and_lookahead_match_float64_reference(rng):
    total, every, mu, lr0, scale, alpha, power = 11, 3, 0.85, 0.5, 4.0, 0.9, 2.0
    params = {"layer": {"conv": {"kernel": rng.normal(size=(3,))},
                        "norm": {"bias": rng.normal(size=(2,))}}}
    grads = [{"layer": {"conv": {"kernel": rng.normal(size=(3,))},
                        "norm": {"bias": rng.normal(size=(2,))}}} for _ in range(total)]
    tx, lr_fn = build_optimizer(
        optimizer={"name": "nesterov", "momentum": mu, "norm_bias_lr": scale,
                   "lookahead": {"every": every, "alpha": alpha, "power": power}},
        schedule={"name": "triangular", "peak": 0.3, "start": 0.2, "end": 0.1},
        base_lr=lr0, total_steps=total)

    def lr_ref(t):  # from the formula: 0.2 → 1 over round(0.3·11) = 3 steps, then → 0.1 at 11
        return lr0 * (0.2 + 0.8 * t / 3 if t < 3 else 1 + (0.1 - 1) * (t - 3) / 8)

    np.testing.assert_allclose([float(lr_fn(t)) for t in range(total + 1)],
                               [lr_ref(t) for t in range(total + 1)], rtol=1e-6)

    def flat(tree):  # {"kernel": ..., "bias": ...} in float64
        return {"kernel": np.array(tree["layer"]["conv"]["kernel"], np.float64),
                "bias": np.array(tree["layer"]["norm"]["bias"], np.float64)}

    w = flat(params)
    slow = {k: v.copy() for k, v in w.items()}
    v = {k: np.zeros_like(a) for k, a in w.items()}
    state = tx.init(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params))
    p32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    for t in range(total):
        g = flat(grads[t])
        for k in w:
            v[k] = mu * v[k] + g[k]  # Nesterov (Sutskever form): w ← w − η·(g + μv)
            w[k] = w[k] - lr_ref(t) * (scale if k == "bias" else 1.0) * (g[k] + mu * v[k])
        count = t + 1
        if count % every == 0 or count == total:
            a = 1.0 if count == total else alpha * (count / total) ** power
            for k in w:
                slow[k] = a * slow[k] + (1 - a) * w[k]
                w[k] = slow[k].copy()
        updates, state = tx.update(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), grads[t]),
                                   state, p32)
        p32 = optax.apply_updates(p32, updates)
    np.testing.assert_allclose(p32["layer"]["conv"]["kernel"], w["kernel"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p32["layer"]["norm"]["bias"], w["bias"], rtol=1e-5, atol=1e-6)


def test_optimizer_wrapper_options_are_checked():
    from normlab.train.optim import split_optimizer_options

    with pytest.raises(ValueError, match="optimizer.lookahead: unknown option"):
        split_optimizer_options({"name": "sgd", "lookahead": {"evry": 5}})
    with pytest.raises(ValueError, match="norm_bias_lr must be a number > 0"):
        split_optimizer_options({"name": "sgd", "norm_bias_lr": 0})


# ------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("size", ["", "runlocal,"])
def test_speedrun_config_is_valid_with_every_norm(size):
    from normlab.config import load_config
    from normlab.registry import NORMS
    from normlab.train.validate import validate

    for norm in NORMS.names():  # E13 swaps every norm into the same recipe
        config = load_config(f"{REPO}/configs/cifar10_speedrun.py:{size}norm={norm}")
        validate(config)
        fused = NORMS.get(norm).self_activated
        assert config.model.activation == ("identity" if fused else "gelu"), norm
        assert config.model.stem_activation == "gelu"


@pytest.mark.slow  # ~15 s CPU: preparing CIFAR-10 once, 12 steps, the 6-view evaluation
@pytest.mark.skipif(not (DATA / "cifar10" / "data_batch_1.npz").is_file(),
                    reason=f"CIFAR-10 archives not found in {DATA}")  # as the other data tests
def test_speedrun_runlocal_trains(tmp_path, monkeypatch):
    import json

    from normlab.config import load_config
    from normlab.train.loop import train

    monkeypatch.setenv("NORMLAB_DATA_DIR", str(DATA))
    monkeypatch.setenv("NORMLAB_TFDS_DIR", str(tmp_path / "tfds"))
    config = load_config(f"{REPO}/configs/cifar10_speedrun.py:runlocal")
    # one device: the 8 fake ones would only split 128 images eight ways on 2 cores
    summary = train(config, tmp_path / "run", progress=False, devices=jax.devices()[:1])
    assert summary["finished"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
    ce = [r["train_loss"] - r["train_l2"] for r in rows if "train_loss" in r]  # without the L2
    assert len(ce) == 12 and np.mean(ce[-3:]) < np.mean(ce[:3]) - 0.05
    assert summary["final"]["eval_examples"] == 250 and summary["final"]["eval_accuracy"] > 0.15
