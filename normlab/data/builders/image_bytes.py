"""What bytes an image builder stores for one image file: the original bytes whenever a decoder
gives RGB (or grayscale) from them as they are, else a lossless or TFDS-compatible re-encoding.

| file                                   | stored                                   |
|----------------------------------------|------------------------------------------|
| JPEG, RGB or grayscale ("L")           | the original bytes (grayscale: decoders  |
|                                        | repeat the channel, as TFDS's do)        |
| JPEG, CMYK (22 in ImageNet train)      | RGB JPEG, Pillow quality 100 (TFDS's)    |
| PNG named .JPEG (1 in ImageNet train)  | RGB JPEG, quality 100 (`png="jpeg"`, as  |
|                                        | TFDS's imagenet2012) or kept (`"keep"`)  |
| PNG, RGB or grayscale (image folders)  | the original bytes (`png="keep"`)        |
| anything else Pillow reads (RGBA/P PNG,| RGB PNG (lossless), or RGB JPEG q100     |
| BMP, GIF, TIFF, WebP)                  | when `png="jpeg"`                        |

The format is read from the bytes, not the file name, so a mislabelled file is caught whatever
its name. `check_pixels=True` decodes the whole image, which catches truncated files (Pillow's
header parse alone does not); the ImageNet builder skips it (1.28M known-good images).

    data = stored_bytes(raw, png="keep", check_pixels=True)   # raises BadImageError
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

_KEPT_MODES = ("RGB", "L")


class BadImageError(ValueError):
    """A file is not an image Pillow can read; the message says why."""


def _encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(out, format="JPEG", quality=100)
    else:
        image.convert("RGB").save(out, format="PNG")
    return out.getvalue()


def stored_bytes(data: bytes, *, png: str = "keep", check_pixels: bool = False) -> bytes:
    """The bytes to store for the image file `data` (table above); raises `BadImageError`.

    `png`: "keep" stores RGB/grayscale PNGs as they are and re-encodes other non-JPEG images as
    PNG; "jpeg" turns every non-JPEG into an RGB JPEG of quality 100.
    """
    if png not in ("keep", "jpeg"):
        raise ValueError(f"stored_bytes: png must be 'keep' or 'jpeg', got {png!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if check_pixels:
                image.load()
    except Exception as err:  # Pillow raises many types (OSError, SyntaxError, ValueError, ...)
        raise BadImageError(f"not a readable image ({type(err).__name__}: {err})") from None
    with image:
        fmt, mode = image.format, image.mode
        if fmt == "JPEG" and mode in _KEPT_MODES:
            return data
        if fmt == "PNG" and mode in _KEPT_MODES and png == "keep":
            return data
        try:
            return _encode(image, "JPEG" if fmt == "JPEG" or png == "jpeg" else "PNG")
        except Exception as err:
            raise BadImageError(
                f"{fmt} image, mode {mode}: cannot convert to RGB ({err})"
            ) from None
