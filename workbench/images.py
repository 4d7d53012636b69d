"""Leaf helpers for images the workbench shows or writes: grids, upscaling, PNG bytes and files, data URIs.

Every layer that outputs pictures (training sample grids, evaluation failures, widgets, the
report) goes through these, so a grid looks the same everywhere::

    grid = image_grid(images, columns=4)        # uint8 (N, H, W, 3) -> one (H', W', 3) image
    grid = labelled_grid(images, prompts)       # the same, upscaled, each tile with its prompt under it
    png = png_bytes(grid, scale=display_scale(32))   # nearest upscale so 32 px samples stay visible
    save_png(grid, "samples.png", scale=4)      # atomic write
    uri = png_data_uri("samples.png")           # data:image/png;base64,... for self-contained HTML
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import numpy as np

from .io import atomic_write_bytes
from .errors import InputError

DISPLAY_SIDE = 128      # side (pixels) that small images are upscaled to, at least, so 16-32 px samples stay visible


def display_scale(side: int, target: int = DISPLAY_SIDE) -> int:
    """Integer nearest-neighbour upscale factor that brings an image of ``side`` pixels to about ``target``."""
    return max(1, int(target) // max(1, int(side)))


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscale of an (H, W, C) array by an integer factor."""
    if scale <= 1:
        return image
    return image.repeat(scale, axis=0).repeat(scale, axis=1)


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile uint8 images (N, H, W, 3) into one (rows*(H+pad)+pad, cols*(W+pad)+pad, 3) image on white."""
    n, h, w, c = images.shape
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, q = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = image
    return grid


def _wrap(text: str, font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap of ``text`` to ``width`` pixels in ``font``; the last line ends in "…" when cut."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        while lines[-1] and font.getlength(lines[-1] + "…") > width:
            lines[-1] = lines[-1][:-1]
        lines[-1] += "…"
    return lines


LABEL_FONT_PX = 13                  # label text height in labelled_grid: readable at a notebook's 100% zoom


def labelled_grid(images: np.ndarray, labels, columns: int | None = None, scale: int | None = None,
                  max_lines: int = 2, pad: int = 2) -> np.ndarray:
    """Tiles upscaled for display (``display_scale``), each with its label written under it: uint8 (H', W', 3).

    ``labels`` has one string per image (a prompt); long ones wrap to ``max_lines`` lines.
    """
    from PIL import Image, ImageDraw, ImageFont

    images = np.asarray(images)
    n, h, w, _ = images.shape
    if len(labels) != n:
        raise InputError(f"labelled_grid: {n} images but {len(labels)} labels")
    scale = display_scale(h) if scale is None else scale
    font = ImageFont.load_default(size=LABEL_FONT_PX)     # Pillow's scalable default font, readable in notebooks
    line_h = font.getbbox("Ag")[3] + 2
    tile_w, tile_h = w * scale, h * scale + max_lines * line_h + 4
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = Image.new("RGB", (cols * (tile_w + pad) + pad, rows * (tile_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (image, label) in enumerate(zip(images, labels)):
        r, q = divmod(i, cols)
        x, y = pad + q * (tile_w + pad), pad + r * (tile_h + pad)
        canvas.paste(Image.fromarray(np.ascontiguousarray(upscale(image, scale))), (x, y))
        for k, line in enumerate(_wrap(str(label), font, tile_w - 2, max_lines)):
            draw.text((x + 1, y + h * scale + 2 + k * line_h), line, fill=(40, 40, 40), font=font)
    return np.asarray(canvas)


def png_bytes(image: np.ndarray, scale: int = 1) -> bytes:
    """uint8 (H, W, 3) or (H, W) -> PNG bytes (for ``ipywidgets.Image(format="png")``), upscaled by ``scale``."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise InputError(f"png_bytes expects a uint8 image, got dtype {image.dtype}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(upscale(image, scale))).save(buf, format="PNG")
    return buf.getvalue()


def grid_png(images: np.ndarray, columns: int | None = None, scale: int | None = None) -> bytes:
    """uint8 (N, H, W, 3) -> one PNG grid, upscaled for small images."""
    images = np.asarray(images)
    scale = display_scale(images.shape[1]) if scale is None else scale
    return png_bytes(image_grid(images, columns), scale)


def save_png(image: np.ndarray, path: str | Path, scale: int = 1) -> Path:
    """Write a uint8 (H, W, 3) image as PNG atomically, optionally upscaled (nearest) by ``scale``."""
    return atomic_write_bytes(path, png_bytes(image, scale))


def png_data_uri(image) -> str:
    """``data:image/png;base64,...`` of a PNG file path, PNG bytes, or a uint8 (H, W, 3) array."""
    if isinstance(image, np.ndarray):
        data = png_bytes(image)
    elif isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    else:
        data = Path(image).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
