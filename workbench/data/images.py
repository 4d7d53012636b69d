"""Image helpers shared by the sources: robust decode, mode conversion to RGB, resize and crop.

``decode_image(data)`` never raises on bad input: it returns a ``Decoded`` with either an RGB image
or a short stable reason code (``zero_byte``, ``not_an_image``, ``corrupt_image``, ``too_small``,
``too_large``) and a human-readable detail. ``preprocess(image, resolution)`` is the paper's
preprocessing: resize the short side with bicubic filtering, then centre-crop a square; no flips.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from ..errors import InputError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Decoded:
    """Result of ``decode_image``: ``image`` (RGB) when good, else ``reason`` and ``detail``."""

    image: Image.Image | None
    reason: str | None = None
    detail: str | None = None


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def decode_image(data: bytes, *, min_side: int = 0) -> Decoded:
    """Decode encoded image bytes into an RGB ``PIL.Image``, or say why not.

    Checks, in order: empty data (``zero_byte``), unrecognised format (``not_an_image``), header
    or pixel data that fails to decode, e.g. truncated files (``corrupt_image``), decompression
    bombs (``too_large``), and a short side below ``min_side`` (``too_small``, checked from the
    header before decoding pixels). Good images are EXIF-rotated and converted with ``to_rgb``.

    Example::

        result = decode_image(Path("cat.jpg").read_bytes(), min_side=64)
        if result.image is None:
            print(result.reason, result.detail)
    """
    if not data:
        return Decoded(None, "zero_byte", "file is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return Decoded(None, "not_an_image", f"{len(data)} bytes that no image decoder recognises")
    except Image.DecompressionBombError as err:
        return Decoded(None, "too_large", _describe(err))
    except Exception as err:  # noqa: BLE001 - any decoder failure is this sample's problem only
        return Decoded(None, "corrupt_image", _describe(err))
    width, height = image.size
    if min(width, height) < min_side:
        return Decoded(None, "too_small", f"{width}x{height} is below min_side={min_side}")
    try:
        image.load()
        return Decoded(to_rgb(_exif_upright(image)))
    except Exception as err:  # noqa: BLE001
        return Decoded(None, "corrupt_image", _describe(err))


def _exif_upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag, if any; a broken EXIF block leaves the image as is."""
    try:
        if image.getexif().get(_EXIF_ORIENTATION, 1) == 1:
            return image
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - malformed EXIF is not worth a skip
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, correctly.

    - alpha modes (RGBA, LA, PA, P with transparency) are composited on white;
    - 16-bit and 32-bit greys (I;16*, I) are scaled to 8 bits (``v / 257``), not clipped at 255
      as ``Image.convert`` does; an ``I`` image whose values all fit 0..255 is kept as is;
    - float greys (F) in [0, 1] are scaled by 255, others clipped to 0..255;
    - everything else (L, 1, P, CMYK, YCbCr, ...) uses ``Image.convert("RGB")``.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_to_rgb(image)
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.float32)                                # (H, W)
    if image.mode == "F":
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    elif image.mode == "I":
        scale = 1.0 / 257.0 if values.size and values.max() > 255 else 1.0
    else:                                                                         # I;16, I;16B, I;16L
        scale = 1.0 / 257.0
    grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)              # (H, W)
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")         # (H, W, 3)


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    """Resize so the short side is ``size`` pixels (bicubic, antialiased), keeping the aspect."""
    width, height = image.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    return image if new == image.size else image.resize(new, Image.Resampling.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Crop the central ``size`` x ``size`` square (the image must be at least that big)."""
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def preprocess(image: Image.Image, resolution: int) -> np.ndarray:
    """The paper's preprocessing: RGB, short side to ``resolution`` (bicubic), centre crop.

    Returns a ``(resolution, resolution, 3)`` uint8 array. No flips. An image already at
    ``resolution`` square is returned unchanged.

    Example::

        pixels = preprocess(Image.open("cat.jpg"), 256)   # (256, 256, 3) uint8
    """
    if resolution < 1:
        raise InputError(f"resolution must be a positive number of pixels, got {resolution}")
    square = center_crop(resize_short_side(to_rgb(image), resolution), resolution)
    return np.array(square, dtype=np.uint8)                                       # (R, R, 3)
