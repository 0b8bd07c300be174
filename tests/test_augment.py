"""Batched augmentations vs float64 NumPy references, and the statistics of their random draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normlab.data.augment import (
    apply_brightness,
    apply_contrast,
    apply_crop,
    apply_cutout,
    apply_flip,
    apply_mixup,
    brightness_params,
    contrast_params,
    crop_params,
    cutout,
    cutout_params,
    flip_params,
    mixup,
    mixup_params,
    random_brightness,
    random_contrast,
    random_crop,
    random_flip,
)
from normlab.registry import AUGMENTATIONS

KEY = jax.random.key(42)


def _images(rng, n=4, h=8, w=7, c=3):
    return rng.normal(size=(n, h, w, c)).astype(np.float32)


def _within_5_sigma(sample_mean, mean, var, count):
    return abs(sample_mean - mean) < 5 * np.sqrt(var / count)


def test_registry_names():
    expected = {"flip": random_flip, "crop": random_crop, "brightness": random_brightness,
                "contrast": random_contrast, "cutout": cutout, "mixup": mixup}
    for name, fn in expected.items():
        assert AUGMENTATIONS.get(name) is fn


# ------------------------------------------------------------------------------- flip


def test_apply_flip_matches_reference(rng):
    x = _images(rng)
    flags = np.array([True, False, True, False])
    ref = np.where(flags[:, None, None, None], x[:, :, ::-1, :], x)
    np.testing.assert_array_equal(np.asarray(apply_flip(x, flags)), ref)


def test_random_flip_is_apply_of_its_params_and_jittable(rng):
    x = _images(rng, 6)
    flags = flip_params(KEY, 6, 0.5)
    expected = np.asarray(apply_flip(x, flags))
    np.testing.assert_array_equal(np.asarray(random_flip(x, key=KEY)), expected)
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda a, k: random_flip(a, key=k))(x, KEY)),
                                  expected)


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_flip_fraction(p):
    n = 20000
    flags = np.asarray(flip_params(KEY, n, p))
    assert _within_5_sigma(flags.mean(), p, p * (1 - p), n)
    assert not np.asarray(flip_params(KEY, 100, 0.0)).any()
    assert np.asarray(flip_params(KEY, 100, 1.0)).all()


def test_flip_fraction_observed_on_images():
    n = 4000
    x = np.broadcast_to(np.arange(5, dtype=np.float32)[None, None, :, None], (n, 1, 5, 1))
    y = np.asarray(random_flip(jnp.asarray(x), key=KEY))
    flipped = y[:, 0, 0, 0] == 4.0
    assert _within_5_sigma(flipped.mean(), 0.5, 0.25, n)


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_flip_bad_probability_raises(p):
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        random_flip(jnp.zeros((2, 4, 4, 1)), key=KEY, p=p)


# ------------------------------------------------------------------------------- crop


def _crop_ref(x, offsets, pad):
    n, h, w, _ = x.shape
    padded = np.zeros((n, h + 2 * pad, w + 2 * pad, x.shape[3]))
    padded[:, pad : pad + h, pad : pad + w] = x
    return np.stack([padded[i, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


@pytest.mark.parametrize("pad", [0, 1, 4])
def test_apply_crop_matches_reference(rng, pad):
    x = _images(rng, 5)
    offsets = rng.integers(0, 2 * pad + 1, size=(5, 2))
    offsets[0] = (0, 2 * pad)  # corners included
    offsets[1] = (2 * pad, 0)
    y = apply_crop(x, jnp.asarray(offsets, jnp.int32), pad)
    assert y.shape == x.shape
    np.testing.assert_array_equal(np.asarray(y, np.float64), _crop_ref(x, offsets, pad))


def test_crop_at_offset_pad_is_identity_and_random_crop_uses_its_params(rng):
    x = _images(rng, 3)
    centre = jnp.full((3, 2), 4, jnp.int32)
    np.testing.assert_array_equal(np.asarray(apply_crop(x, centre, 4)), x)
    expected = np.asarray(apply_crop(x, crop_params(KEY, 3, 4), 4))
    np.testing.assert_array_equal(np.asarray(random_crop(x, key=KEY, pad=4)), expected)
    jitted = jax.jit(lambda a, k: random_crop(a, key=k, pad=4))(x, KEY)
    np.testing.assert_array_equal(np.asarray(jitted), expected)


def test_crop_offsets_cover_0_to_2pad_uniformly():
    pad, n = 4, 18000
    offsets = np.asarray(crop_params(KEY, n, pad))
    values = 2 * pad + 1
    assert offsets.min() == 0 and offsets.max() == 2 * pad
    for axis in range(2):
        counts = np.bincount(offsets[:, axis], minlength=values)
        p = 1 / values
        assert np.all(np.abs(counts / n - p) < 5 * np.sqrt(p * (1 - p) / n))


@pytest.mark.parametrize("pad", [-1, 1.5])
def test_crop_bad_pad_raises(pad):
    with pytest.raises(ValueError, match="pad must be an int >= 0"):
        random_crop(jnp.zeros((2, 4, 4, 1)), key=KEY, pad=pad)


# ------------------------------------------------------------------ brightness/contrast


def test_apply_brightness_matches_reference(rng):
    x = _images(rng)
    delta = rng.uniform(-0.3, 0.3, size=4).astype(np.float32)
    ref = x.astype(np.float64) + delta[:, None, None, None].astype(np.float64)
    np.testing.assert_allclose(np.asarray(apply_brightness(x, delta)), ref, rtol=1e-6, atol=1e-6)
    expected = np.asarray(apply_brightness(x, brightness_params(KEY, 4, 0.3)))
    np.testing.assert_array_equal(np.asarray(random_brightness(x, key=KEY, max_delta=0.3)),
                                  expected)


def test_brightness_draws_are_uniform():
    m, n = 0.4, 20000
    delta = np.asarray(brightness_params(KEY, n, m), np.float64)
    assert delta.min() >= -m and delta.max() <= m
    assert _within_5_sigma(delta.mean(), 0.0, m**2 / 3, n)  # Var U(−m, m) = m²/3
    assert _within_5_sigma((delta < 0).mean(), 0.5, 0.25, n)


def _contrast_ref(x, factor):
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=(1, 2), keepdims=True)
    return (x - mean) * np.asarray(factor, np.float64)[:, None, None, None] + mean


def test_apply_contrast_matches_reference(rng):
    x = _images(rng) + 2.0
    factor = rng.uniform(0.5, 1.5, size=4).astype(np.float32)
    np.testing.assert_allclose(np.asarray(apply_contrast(x, factor)), _contrast_ref(x, factor),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(apply_contrast(x, np.ones(4, np.float32))), x,
                               rtol=1e-6, atol=1e-6)
    expected = np.asarray(apply_contrast(x, contrast_params(KEY, 4, 0.6, 1.4)))
    np.testing.assert_array_equal(
        np.asarray(random_contrast(x, key=KEY, lower=0.6, upper=1.4)), expected
    )


def test_contrast_draws_are_uniform():
    lo, hi, n = 0.6, 1.4, 20000
    f = np.asarray(contrast_params(KEY, n, lo, hi), np.float64)
    assert f.min() >= lo and f.max() <= hi
    assert _within_5_sigma(f.mean(), (lo + hi) / 2, (hi - lo) ** 2 / 12, n)


def test_brightness_contrast_bfloat16(rng):
    x = jnp.asarray(_images(rng) + 2.0, jnp.bfloat16)
    factor = np.array([0.5, 0.8, 1.2, 1.5], np.float32)
    y = apply_contrast(x, factor)
    assert y.dtype == jnp.bfloat16
    # Computed in float32 from the bf16 inputs, then rounded once to bf16 (rel. error ≤ 2^-9);
    # outputs are O(1)–O(5), so an absolute 2^-8 · 8 covers the rounding.
    ref = _contrast_ref(np.asarray(x, np.float64), factor)
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=2**-8, atol=2**-5)
    delta = np.array([0.1, -0.2, 0.3, 0.0], np.float32)
    yb = apply_brightness(x, delta)
    assert yb.dtype == jnp.bfloat16
    refb = np.asarray(x, np.float64) + delta[:, None, None, None]
    np.testing.assert_allclose(np.asarray(yb, np.float64), refb, rtol=2**-8, atol=2**-5)


def test_brightness_contrast_bad_arguments_raise():
    x = jnp.zeros((2, 4, 4, 1))
    with pytest.raises(ValueError, match="max_delta must be >= 0"):
        random_brightness(x, key=KEY, max_delta=-0.1)
    with pytest.raises(ValueError, match="lower <= upper"):
        random_contrast(x, key=KEY, lower=1.2, upper=0.8)
    with pytest.raises(ValueError, match="lower=-0.5"):
        random_contrast(x, key=KEY, lower=-0.5, upper=0.8)


# ----------------------------------------------------------------------------- cutout


def _cutout_ref(x, centres, size):
    y = np.array(x, np.float64)
    h, w = x.shape[1:3]
    for i, (cy, cx) in enumerate(centres):
        top, left = cy - size // 2, cx - size // 2
        for r in range(max(top, 0), min(top + size, h)):
            for c in range(max(left, 0), min(left + size, w)):
                y[i, r, c, :] = 0.0
    return y


@pytest.mark.parametrize("size", [0, 3, 4, 20])
def test_apply_cutout_matches_reference(rng, size):
    x = _images(rng, 5, 9, 8)
    centres = np.array([[0, 0], [8, 7], [4, 4], [0, 7], [6, 1]])  # corners clip the square
    y = apply_cutout(x, jnp.asarray(centres, jnp.int32), size)
    np.testing.assert_array_equal(np.asarray(y, np.float64), _cutout_ref(x, centres, size))


def test_cutout_uses_its_params_and_centres_are_uniform(rng):
    x = _images(rng, 4, 9, 8)
    expected = np.asarray(apply_cutout(x, cutout_params(KEY, 4, 9, 8), 4))
    np.testing.assert_array_equal(np.asarray(cutout(x, key=KEY, size=4)), expected)
    np.testing.assert_array_equal(
        np.asarray(jax.jit(lambda a, k: cutout(a, key=k, size=4))(x, KEY)), expected
    )
    n = 18000
    centres = np.asarray(cutout_params(KEY, n, 9, 8))
    for axis, extent in enumerate((9, 8)):
        counts = np.bincount(centres[:, axis], minlength=extent)
        assert len(counts) == extent
        p = 1 / extent
        assert np.all(np.abs(counts / n - p) < 5 * np.sqrt(p * (1 - p) / n))


def test_cutout_area():
    n, h, w, size = 4000, 10, 10, 6
    ones = jnp.ones((n, h, w, 1))
    key = jax.random.key(3)
    zeroed = (np.asarray(cutout(ones, key=key, size=size))[..., 0] == 0).sum(axis=(1, 2))
    centres = np.asarray(cutout_params(key, n, h, w))

    def clipped_length(c, extent):
        start = c - size // 2
        return np.minimum(start + size, extent) - np.maximum(start, 0)

    # The zeroed area is the square clipped at the border ...
    np.testing.assert_array_equal(zeroed, clipped_length(centres[:, 0], h)
                                  * clipped_length(centres[:, 1], w))
    # ... and its mean over uniform centres is E[len_y]·E[len_x] (independent axes).
    len_y = clipped_length(np.arange(h), h).astype(np.float64)
    len_x = clipped_length(np.arange(w), w).astype(np.float64)
    expected_area = len_y.mean() * len_x.mean()
    var_area = (len_y**2).mean() * (len_x**2).mean() - expected_area**2
    assert _within_5_sigma(zeroed.mean(), expected_area, var_area, n)


@pytest.mark.parametrize("size", [-1, 2.5])
def test_cutout_bad_size_raises(size):
    with pytest.raises(ValueError, match="size must be an int >= 0"):
        cutout(jnp.zeros((2, 4, 4, 1)), key=KEY, size=size)


# ------------------------------------------------------------------------------ mixup


def test_apply_mixup_matches_reference(rng):
    x = _images(rng, 6)
    labels = np.eye(5, dtype=np.float32)[rng.integers(0, 5, size=6)]
    lam = np.float32(0.3)
    perm = rng.permutation(6)
    xm, ym = apply_mixup(x, labels, jnp.asarray(lam), jnp.asarray(perm))
    lam64 = np.float64(lam)
    np.testing.assert_allclose(np.asarray(xm), lam64 * x + (1 - lam64) * x[perm],
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ym), lam64 * labels + (1 - lam64) * labels[perm],
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(ym).sum(axis=1), 1.0, rtol=1e-6)


def test_mixup_uses_its_params_and_is_jittable(rng):
    x = _images(rng, 6)
    labels = np.eye(4, dtype=np.float32)[rng.integers(0, 4, size=6)]
    lam, perm = mixup_params(KEY, 6, 0.4)
    assert sorted(np.asarray(perm).tolist()) == list(range(6))
    expected = apply_mixup(x, labels, lam, perm)
    for got in (mixup(x, labels, key=KEY, alpha=0.4),
                jax.jit(lambda a, b, k: mixup(a, b, key=k, alpha=0.4))(x, labels, KEY)):
        for g, e in zip(got, expected, strict=True):
            # Same draws; under jit XLA may fuse λ·a + (1 − λ)·b differently (last-bit changes).
            np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_lambda_is_symmetric_beta(alpha):
    num = 8000
    keys = jax.random.split(jax.random.key(5), num)
    lam = np.asarray(jax.vmap(lambda k: mixup_params(k, 4, alpha)[0])(keys), np.float64)
    assert lam.min() >= 0.0 and lam.max() <= 1.0
    var = 1.0 / (4.0 * (2.0 * alpha + 1.0))  # Var Beta(α, α)
    assert _within_5_sigma(lam.mean(), 0.5, var, num)
    # The second moment pins α: E[λ²] = Var + 1/4; its sample variance is bounded by E[λ⁴].
    assert _within_5_sigma((lam**2).mean(), var + 0.25, (lam**4).mean(), num)


def test_mixup_bad_arguments_raise():
    x = jnp.zeros((4, 4, 4, 1))
    onehot = jnp.eye(3)[jnp.array([0, 1, 2, 0])]
    for alpha in (0.0, -1.0):
        with pytest.raises(ValueError, match="alpha must be > 0"):
            mixup(x, onehot, key=KEY, alpha=alpha)
    with pytest.raises(ValueError, match="float one-hot/soft targets"):
        mixup(x, jnp.zeros((4, 3), jnp.int32), key=KEY)
    with pytest.raises(ValueError, match="shape \\(N, K\\)"):
        mixup(x, jnp.zeros((4,)), key=KEY)


def test_images_must_be_float_nhwc():
    with pytest.raises(ValueError, match="float NHWC"):
        random_flip(jnp.zeros((4, 4, 1)), key=KEY)
    with pytest.raises(ValueError, match="float NHWC"):
        random_crop(jnp.zeros((2, 4, 4, 1), jnp.uint8), key=KEY)
