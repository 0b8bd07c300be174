"""Host transforms of encoded images: decode to uint8 HWC RGB, inception crop + flip for training,
short-side resize + centre crop for evaluation. uint8 in, uint8 out: normalisation is the
device's job.

Decoder and resizer, chosen by measurement (shared 2-core CPU at load ~7, one thread, a 500×375
q90 JPEG of 84 KB; absolute numbers are ~4× slower than on an idle core, the ratios hold):

    decode        simplejpeg 3.2 ms   cv2.imdecode 3.0 ms (BGR)   Pillow 4.8 ms
    crop→224      cv2.resize INTER_LINEAR 0.55 ms   INTER_AREA 3.7 ms   Pillow resize(box=) 2.4 ms

so simplejpeg decodes (libjpeg-turbo bundled in its wheel, RGB straight from a bytes buffer,
releases the GIL so threads scale) and OpenCV resizes, with INTER_AREA only where the crop is at
least twice the output side (strong downscale: bilinear would alias; below that INTER_LINEAR's
6× lower cost wins). Both are optional: without them Pillow decodes and resizes (its BILINEAR
filter widens its support when downscaling, so it needs no separate area mode). Non-JPEG data
(a PNG named .JPEG), CMYK and anything simplejpeg refuses go to Pillow, which converts
grayscale, CMYK and palette images to RGB.

Randomness: every random draw of example `slot` (its position in the *global* batch, so that it
does not depend on the process count) at training step `step` comes from

    example_rng(seed, step, slot) = Generator(Philox(key=[seed, step], counter=[0, 0, 0, slot]))

Philox is a counter-based generator: one key per (seed, step), and the slot in the counter's top
64-bit word, 2**192 blocks away from the next slot's stream, so streams never overlap. A resumed
run recomputes the same generator for the same (seed, step, slot): the same crops and flips.
`TrainTransform` draws, in this order: per attempt (area fraction, log aspect), then the crop's
top and left offsets, then the flip.

    rng = example_rng(seed=0, step=12, slot=3)
    x_224x224x3 = TrainTransform(224)(jpeg_bytes, rng)
    x_eval = EvalTransform(224)(jpeg_bytes)
"""

from __future__ import annotations

import functools
import io
import math
from typing import Any

import numpy as np

# flax's ImageNet crop fraction: a 224 crop of a 256 short side (its CROP_PADDING = 32)
CROP_FRACTION = 224 / 256
AREA_RANGE = (0.08, 1.0)
ASPECT_RANGE = (3 / 4, 4 / 3)
ATTEMPTS = 10
DECODERS = ("simplejpeg", "pillow")
RESIZERS = ("cv2", "pillow")
_AREA_DOWNSCALE = 2.0  # crop side / output side at which OpenCV switches to INTER_AREA
_JPEG_MAGIC = b"\xff\xd8"


@functools.cache
def _simplejpeg() -> Any:
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


@functools.cache
def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        return None
    cv2.setNumThreads(1)  # our worker threads are the parallelism; OpenCV's own would oversubscribe
    return cv2


def default_decoder() -> str:
    """"simplejpeg" when importable, else "pillow"."""
    return "simplejpeg" if _simplejpeg() is not None else "pillow"


def default_resizer() -> str:
    """"cv2" when OpenCV is importable, else "pillow"."""
    return "cv2" if _cv2() is not None else "pillow"


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}, got {what}={value!r}")
    module = {"simplejpeg": _simplejpeg, "cv2": _cv2}.get(value)
    if module is not None and module() is None:
        raise ValueError(f"{what}={value!r} is not installed; pip install "
                         f"{'simplejpeg' if value == 'simplejpeg' else 'opencv-python-headless'}"
                         " or use 'pillow'")


def decode_pillow(data: bytes) -> np.ndarray:
    """Any image Pillow reads (JPEG, PNG, grayscale, CMYK, palette) as uint8 (H, W, 3) RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def decode(data: bytes, decoder: str | None = None) -> np.ndarray:
    """`data` (encoded image bytes) as uint8 (H, W, 3) RGB.

    decoder: "simplejpeg" (JPEGs it can convert to RGB; anything else falls back to Pillow) or
    "pillow"; None = `default_decoder()`.
    """
    decoder = decoder or default_decoder()
    _check_choice("decoder", decoder, DECODERS)
    if decoder == "simplejpeg" and data[:2] == _JPEG_MAGIC:
        try:
            return _simplejpeg().decode_jpeg(data, colorspace="RGB")
        except ValueError:  # CMYK/YCCK JPEGs: libjpeg-turbo cannot convert them to RGB
            pass
    return decode_pillow(data)


def example_rng(seed: int, step: int, slot: int) -> np.random.Generator:
    """The generator of example `slot` (global batch position) at `step` (layout: module doc)."""
    for name, value in (("seed", seed), ("step", step), ("slot", slot)):
        if value < 0:
            raise ValueError(f"example_rng: {name} must be >= 0, got {name}={value}")
    key = np.array([seed, step], np.uint64)
    counter = np.array([0, 0, 0, slot], np.uint64)
    return np.random.Generator(np.random.Philox(counter=counter, key=key))


def center_crop_box(height: int, width: int, fraction: float = CROP_FRACTION) -> tuple[int, ...]:
    """(top, left, h, w) of flax's fallback: a square of `fraction` of the short side, centred
    (offsets rounded as flax's `((H - h) + 1) // 2`)."""
    side = max(1, int(fraction * min(height, width)))
    return ((height - side + 1) // 2, (width - side + 1) // 2, side, side)


def inception_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    area_range: tuple[float, float] = AREA_RANGE,
    aspect_range: tuple[float, float] = ASPECT_RANGE,
    attempts: int = ATTEMPTS,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop of an image of `height` × `width`.

    Each attempt draws an area fraction a ~ U(area_range) and an aspect w/h = exp(U(log
    aspect_range)), and takes the box w = round(sqrt(a·H·W·aspect)), h = round(sqrt(a·H·W /
    aspect)) if it fits; its offsets are uniform over the positions inside the image. When no
    attempt fits (tiny or extreme-aspect images), `center_crop_box`.
    """
    area = height * width
    log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    for _ in range(attempts):
        target = area * rng.uniform(*area_range)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    return center_crop_box(height, width)


def resize(image: np.ndarray, height: int, width: int, resizer: str | None = None) -> np.ndarray:
    """uint8 (H, W, 3) → uint8 (height, width, 3), bilinear (OpenCV: INTER_AREA for a strong
    downscale, see the module doc). resizer: "cv2" | "pillow" | None (= `default_resizer()`)."""
    resizer = resizer or default_resizer()
    _check_choice("resizer", resizer, RESIZERS)
    if image.shape[:2] == (height, width):
        return image
    if resizer == "cv2":
        cv2 = _cv2()
        strong = max(image.shape[0] / height, image.shape[1] / width) >= _AREA_DOWNSCALE
        flag = cv2.INTER_AREA if strong else cv2.INTER_LINEAR
        return cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=flag)
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


class TrainTransform:
    """Training transform: decode, inception crop, resize to size×size, flip with p = 0.5.

        TrainTransform(224)(jpeg_bytes, example_rng(seed, step, slot))  # uint8 (224, 224, 3)
    """

    def __init__(
        self,
        size: int,
        *,
        flip: bool = True,
        decoder: str | None = None,
        resizer: str | None = None,
    ):
        if size < 1:
            raise ValueError(f"TrainTransform: size must be >= 1, got size={size}")
        self.size = int(size)
        self.flip = flip
        self.decoder = decoder or default_decoder()
        self.resizer = resizer or default_resizer()
        _check_choice("decoder", self.decoder, DECODERS)
        _check_choice("resizer", self.resizer, RESIZERS)
        self.output_shape = (self.size, self.size, 3)

    def __call__(self, data: bytes, rng: np.random.Generator | None) -> np.ndarray:
        if rng is None:
            raise ValueError("TrainTransform needs a generator: example_rng(seed, step, slot)")
        return self.augment(decode(data, self.decoder), rng)

    def augment(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The crop, resize and flip of a decoded uint8 (H, W, 3) image. The flip's draw comes
        after the crop's, so flip=False gives the same crops as flip=True."""
        top, left, h, w = inception_crop_box(image.shape[0], image.shape[1], rng)
        out = resize(image[top : top + h, left : left + w], self.size, self.size, self.resizer)
        if self.flip and rng.random() < 0.5:
            out = out[:, ::-1]
        return out


class EvalTransform:
    """Evaluation transform: decode, resize the short side to round(size·256/224) (aspect kept,
    the long side rounded), then the centred size×size crop (offsets floor((L - size) / 2)).

        EvalTransform(224)(jpeg_bytes)    # uint8 (224, 224, 3); `rng` is ignored
    """

    def __init__(self, size: int, *, decoder: str | None = None, resizer: str | None = None):
        if size < 1:
            raise ValueError(f"EvalTransform: size must be >= 1, got size={size}")
        self.size = int(size)
        self.decoder = decoder or default_decoder()
        self.resizer = resizer or default_resizer()
        _check_choice("decoder", self.decoder, DECODERS)
        _check_choice("resizer", self.resizer, RESIZERS)
        self.output_shape = (self.size, self.size, 3)

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """The (H, W) an image of `height` × `width` is resized to before the centre crop."""
        short = round(self.size / CROP_FRACTION)
        scale = short / min(height, width)
        if height <= width:
            return short, max(short, round(width * scale))
        return max(short, round(height * scale)), short

    def __call__(self, data: bytes, rng: np.random.Generator | None = None) -> np.ndarray:
        image = decode(data, self.decoder)
        h, w = self.resized_shape(image.shape[0], image.shape[1])
        image = resize(image, h, w, self.resizer)
        top, left = (h - self.size) // 2, (w - self.size) // 2
        return image[top : top + self.size, left : left + self.size]
