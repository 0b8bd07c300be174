"""Host image transforms (normlab.data.transforms) against float64 NumPy references written from
the math: the inception crop's box distribution (a vectorised re-simulation of the sampling
process), the centre-crop fallback and the eval crop computed by hand, bilinear / area resizing,
the flip, determinism of the (seed, step, slot) keys, and the decoders (simplejpeg vs Pillow, the
Pillow-only fallback)."""

import io
import math

import numpy as np
import pytest
from PIL import Image

from normlab.data import transforms as T


def _encode(image: np.ndarray, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _smooth_image(rng, height, width) -> np.ndarray:
    """A natural-looking (low-frequency) RGB image: JPEG artefacts stay small on it."""
    base = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), np.uint8)
    return np.asarray(Image.fromarray(base).resize((width, height), Image.BICUBIC))


@pytest.fixture(scope="module")
def photo():
    """A 375 × 500 (H × W) image and its q90 JPEG bytes."""
    image = _smooth_image(np.random.default_rng(0), 375, 500)
    return image, _encode(image, quality=90)


def _reference_boxes(height, width, n, rng):
    """float64 re-simulation of the random resized crop, from its definition: per attempt
    a ~ U(0.08, 1), log r ~ U(log 3/4, log 4/3), box (w, h) = (sqrt(a·A·r), sqrt(a·A/r)) rounded;
    the first of 10 attempts that fits, else the fallback. Returns the area fractions and log
    aspects of the boxes that fit, and the fallback rate."""
    area = height * width
    a = rng.uniform(0.08, 1.0, (n, 10)) * area
    r = np.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3), (n, 10)))
    w, h = np.round(np.sqrt(a * r)), np.round(np.sqrt(a / r))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    found = fits.any(axis=1)
    first = np.argmax(fits, axis=1)[found]
    wf, hf = w[found, first], h[found, first]
    return wf * hf / area, np.log(wf / hf), 1 - found.mean()


@pytest.mark.parametrize("height,width", [(375, 500), (200, 200), (120, 400)])
def test_inception_crop_box_statistics_match_the_sampling_process(height, width):
    n = 3000
    boxes = np.array([T.inception_crop_box(height, width, T.example_rng(0, 7, s))
                      for s in range(n)])
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    fallback = T.center_crop_box(height, width)
    is_fallback = (boxes == fallback).all(axis=1)
    ok = ~is_fallback
    # a rounded box comes from a real box within half a pixel on each side
    frac_hi = (w[ok] + 0.5) * (h[ok] + 0.5) / (height * width)
    frac_lo = (w[ok] - 0.5) * (h[ok] - 0.5) / (height * width)
    assert (frac_hi >= 0.08).all() and (frac_lo <= 1.0).all()
    assert ((w[ok] + 0.5) / (h[ok] - 0.5) >= 3 / 4).all()
    assert ((w[ok] - 0.5) / (h[ok] + 0.5) <= 4 / 3).all()
    ref_frac, ref_log_aspect, ref_fallback = _reference_boxes(
        height, width, 200_000, np.random.default_rng(1))
    frac = w[ok] * h[ok] / (height * width)
    log_aspect = np.log(w[ok] / h[ok])
    se = lambda ref: 4 * ref.std() / math.sqrt(ok.sum())  # 4 standard errors
    assert abs(frac.mean() - ref_frac.mean()) < se(ref_frac)
    assert abs(log_aspect.mean() - ref_log_aspect.mean()) < se(ref_log_aspect)
    assert abs(np.quantile(frac, 0.25) - np.quantile(ref_frac, 0.25)) < 0.03
    assert abs(is_fallback.mean() - ref_fallback) < 4 * math.sqrt(
        max(ref_fallback, 1 / n) * (1 - ref_fallback) / n)


def test_inception_crop_falls_back_to_flax_centre_crop_when_no_box_fits():
    # 10 × 1000: any box of area >= 0.08·10⁴ with aspect <= 4/3 is >= 24 rows tall
    for slot in range(50):
        assert T.inception_crop_box(10, 1000, T.example_rng(3, 0, slot)) == (1, 496, 8, 8)
    # side = int(0.875 · 10) = 8, top = (10 - 8 + 1) // 2, left = (1000 - 8 + 1) // 2
    assert T.center_crop_box(10, 1000) == (1, 496, 8, 8)
    assert T.center_crop_box(1, 1) == (0, 0, 1, 1)  # no box of a 1-pixel image fits either
    assert T.inception_crop_box(1, 1, T.example_rng(0, 0, 0)) == (0, 0, 1, 1)
    tiny = _encode(np.full((3, 2, 3), 77, np.uint8), "PNG")
    out = T.TrainTransform(16)(tiny, T.example_rng(0, 0, 0))
    np.testing.assert_array_equal(out, np.full((16, 16, 3), 77, np.uint8))


def test_eval_transform_is_the_hand_computed_centre_crop():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (256, 320, 3), np.uint8)
    # short side already round(224·256/224) = 256: no resize; crop at ((256-224)//2, (320-224)//2)
    out = T.EvalTransform(224)(_encode(image, "PNG"))
    np.testing.assert_array_equal(out, image[16:240, 48:272])
    transform = T.EvalTransform(32)  # short side round(32·256/224) = round(36.57) = 37
    assert transform.resized_shape(300, 400) == (37, 49)  # round(400·37/300) = round(49.33)
    assert transform.resized_shape(400, 300) == (49, 37)
    assert T.EvalTransform(32)(_encode(image[:300], "PNG")).shape == (32, 32, 3)


def _bilinear_reference(image, height, width):
    """float64 bilinear interpolation with half-pixel centres (edge-clamped)."""
    h0, w0 = image.shape[:2]
    y = np.clip((np.arange(height) + 0.5) * h0 / height - 0.5, 0, h0 - 1)
    x = np.clip((np.arange(width) + 0.5) * w0 / width - 0.5, 0, w0 - 1)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    y1, x1 = np.minimum(y0 + 1, h0 - 1), np.minimum(x0 + 1, w0 - 1)
    fy, fx = (y - y0)[:, None, None], (x - x0)[None, :, None]
    im = image.astype(np.float64)
    top = im[y0][:, x0] * (1 - fx) + im[y0][:, x1] * fx
    bottom = im[y1][:, x0] * (1 - fx) + im[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


@pytest.mark.parametrize("resizer", ["cv2", "pillow"])
def test_resize_upscale_is_bilinear(resizer):
    if resizer == "cv2":
        pytest.importorskip("cv2")
    image = _smooth_image(np.random.default_rng(3), 20, 30)
    out = T.resize(image, 50, 45, resizer)
    assert out.shape == (50, 45, 3) and out.dtype == np.uint8
    assert np.abs(out - _bilinear_reference(image, 50, 45)).max() <= 1 + 1e-9  # fixed-point weights


def _area_matrix(n_in, n_out):
    """Row i: the overlap of source pixels with output pixel i's interval [i·s, (i+1)·s), / s."""
    s = n_in / n_out
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = i * s, (i + 1) * s
        for j in range(math.floor(lo), min(n_in, math.ceil(hi - 1e-9))):
            m[i, j] = min(hi, j + 1) - max(lo, j)
    return m / s


def _area_reference(image):
    """The 64 × 64 eval crop of a 375 × 500 image, resized to 73 × 97 by exact box averages."""
    rows, cols = _area_matrix(375, 73), _area_matrix(500, 97)
    resized = np.stack([rows @ image[..., c].astype(np.float64) @ cols.T for c in range(3)], -1)
    return resized[4:68, 16:80]  # ((73 - 64) // 2, (97 - 64) // 2)


def test_eval_strong_downscale_is_the_box_average(photo):
    pytest.importorskip("cv2")
    image, _ = photo
    out = T.EvalTransform(64, resizer="cv2")(_encode(image, "PNG"))
    assert np.abs(out - _area_reference(image)).max() <= 0.5 + 1e-6


def test_resize_strong_downscale_averages_boxes():
    pytest.importorskip("cv2")
    image = np.random.default_rng(4).integers(0, 256, (64, 96, 3), np.uint8)
    out = T.resize(image, 16, 24, "cv2")  # 4× down: INTER_AREA = mean of each 4 × 4 box
    reference = image.astype(np.float64).reshape(16, 4, 24, 4, 3).mean(axis=(1, 3))
    assert np.abs(out - reference).max() <= 0.5 + 1e-9


def test_flip_is_a_mirror_half_of_the_time(photo):
    image, _ = photo
    flipping, plain = T.TrainTransform(32), T.TrainTransform(32, flip=False)
    flipped = 0
    n = 400
    for slot in range(n):
        a = flipping.augment(image, T.example_rng(5, 1, slot))
        b = plain.augment(image, T.example_rng(5, 1, slot))
        if np.array_equal(a, b):
            continue
        np.testing.assert_array_equal(a, b[:, ::-1])
        flipped += 1
    assert abs(flipped / n - 0.5) < 4 * math.sqrt(0.25 / n)


def test_same_key_same_bytes_other_step_or_slot_other_crop(photo):
    _, data = photo
    transform = T.TrainTransform(32)
    first = transform(data, T.example_rng(0, 10, 3))
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    assert transform(data, T.example_rng(0, 10, 3)).tobytes() == first.tobytes()
    others = [transform(data, T.example_rng(*key)) for key in
              [(0, 11, 3), (0, 12, 3), (0, 10, 4), (1, 10, 3)]]
    assert all(not np.array_equal(o, first) for o in others)
    draws = {tuple(T.example_rng(0, step, slot).random(2)) for step in range(20)
             for slot in range(20)}
    assert len(draws) == 400  # every (step, slot) its own stream


def test_simplejpeg_and_pillow_decoders_agree(photo):
    pytest.importorskip("simplejpeg")
    image, data = photo
    a, b = T.decode(data, "simplejpeg"), T.decode(data, "pillow")
    assert a.shape == b.shape == image.shape and a.dtype == b.dtype == np.uint8
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 4 and diff.mean() < 0.5
    assert np.abs(a.astype(int) - image).mean() < 3  # and both are the image, up to q90 loss


@pytest.mark.parametrize("decoder", ["simplejpeg", "pillow"])
def test_quirky_images_decode_to_rgb(decoder):
    if decoder == "simplejpeg":
        pytest.importorskip("simplejpeg")
    rng = np.random.default_rng(6)
    gray = _smooth_image(rng, 40, 30)[..., 0]
    out = T.decode(_encode(gray, quality=95), decoder)
    assert out.shape == (40, 30, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    assert np.abs(out[..., 0].astype(int) - gray).mean() < 2
    rgb = _smooth_image(rng, 24, 36)
    np.testing.assert_array_equal(T.decode(_encode(rgb, "PNG"), decoder), rgb)  # PNG as .JPEG
    cmyk = Image.fromarray(rgb).convert("CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, format="JPEG", quality=95)
    out = T.decode(buf.getvalue(), decoder)
    assert out.shape == (24, 36, 3) and np.abs(out.astype(int) - rgb).mean() < 4


def test_pillow_only_fallback(monkeypatch, photo):
    monkeypatch.setattr(T, "_simplejpeg", lambda: None)
    monkeypatch.setattr(T, "_cv2", lambda: None)
    assert T.default_decoder() == "pillow" and T.default_resizer() == "pillow"
    image, data = photo
    train = T.TrainTransform(64)
    assert (train.decoder, train.resizer) == ("pillow", "pillow")
    out = train(data, T.example_rng(0, 0, 0))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    out = T.EvalTransform(64)(_encode(image, "PNG"))
    # Pillow's bilinear widens to a triangle filter when downscaling: near the box average
    # (point-sampled bilinear, which aliases, is 3.3 levels away on average here)
    assert out.shape == (64, 64, 3) and np.abs(out - _area_reference(image)).mean() < 2
    with pytest.raises(ValueError, match="decoder='simplejpeg' is not installed"):
        T.TrainTransform(64, decoder="simplejpeg")
    with pytest.raises(ValueError, match="must be one of simplejpeg, pillow"):
        T.decode(data, "turbojpeg")
