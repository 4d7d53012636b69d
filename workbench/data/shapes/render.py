"""Rendering scenes to pixels (numpy; anti-aliased by the analytic pixel coverage of the signed distance),
and the shapes dataset as a ``datasets.Dataset``.

    images, scenes = shapes_arrays(256, resolution=32, split="train", seed=0)  # fast numpy path
    ds = shapes_dataset(1000, resolution=64, split="val")                      # datasets.Dataset
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from functools import lru_cache

import numpy as np

from .geometry import sdf
from .objects import ShapeObject
from .scenes import Scene, _check_split, check_template_weights, make_scene, make_scenes, scene_key, scene_rng
from .vocabulary import COLOURS, SIZES
from ...errors import InputError

SUBPIXEL = 8                                # centres are snapped to 1/8 pixel so coverage masks cache


@lru_cache(maxsize=8192)
def _coverage(shape: str, size: str, resolution: int, qx: int, qy: int) -> tuple[int, np.ndarray]:
    """Coverage mask of ``shape`` centred at ``(pad + qx/8, pad + qy/8)`` in its own window.

    Returns ``(pad, alpha)``: ``alpha`` is (2*pad+1, 2*pad+1, 1) float32 in [0, 1], computed as
    ``clip(0.5 - signed_distance_in_pixels, 0, 1)``, i.e. the box-filtered edge.
    """
    r = SIZES[size] * resolution                                                  # half-size, pixels
    pad = int(math.ceil(r)) + 1
    grid = np.arange(2 * pad + 1, dtype=np.float32) + 0.5 - pad                    # (w,) pixel centres
    xs = (grid - qx / SUBPIXEL)[None, :]                                           # (1, w)
    ys = (grid - qy / SUBPIXEL)[:, None]                                           # (h, 1)
    alpha = np.clip(0.5 - sdf(shape, xs, ys, r), 0.0, 1.0).astype(np.float32)    # (h, w)
    alpha.setflags(write=False)
    return pad, alpha[:, :, None]                                                  # (h, w, 1)


def _paint(canvas: np.ndarray, obj: ShapeObject, resolution: int) -> None:
    """Alpha-blend ``obj`` into ``canvas`` (R, R, 3) float32, touching only its window."""
    ix, qx = divmod(round(obj.cx * resolution * SUBPIXEL), SUBPIXEL)              # whole + 1/8 pixels
    iy, qy = divmod(round(obj.cy * resolution * SUBPIXEL), SUBPIXEL)
    pad, alpha = _coverage(obj.shape, obj.size, resolution, qx, qy)               # (h, w, 1)
    x0, y0 = ix - pad, iy - pad                                                    # window origin
    cx0, cy0 = max(x0, 0), max(y0, 0)                                              # clipped to canvas
    cx1, cy1 = min(x0 + alpha.shape[1], resolution), min(y0 + alpha.shape[0], resolution)
    a = alpha[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]                                # (h', w', 1)
    window = canvas[cy0:cy1, cx0:cx1]                                              # (h', w', 3) view
    window += a * (_RGB[obj.colour] - window)


_RGB = {name: np.asarray(rgb, dtype=np.float32) for name, rgb in COLOURS.items()}  # name -> (3,)


@lru_cache(maxsize=16)
def _ramp(resolution: int) -> np.ndarray:
    return (np.arange(resolution, dtype=np.float32) + 0.5) / resolution - 0.5     # (R,) in [-0.5, 0.5]


def _background(scene: Scene, resolution: int) -> np.ndarray:
    ramp = _ramp(resolution)                                                      # (R,)
    gx, gy = scene.gradient
    grey = scene.grey + 2 * gx * ramp[None, :] + 2 * gy * ramp[:, None]            # (R, R)
    canvas = np.empty((resolution, resolution, 3), dtype=np.float32)              # (R, R, 3)
    canvas[...] = grey[:, :, None]
    return canvas


def render_scene(scene: Scene, resolution: int) -> np.ndarray:
    """Render ``scene`` as a ``(resolution, resolution, 3)`` uint8 array.

    Object centres are snapped to 1/8 pixel of this resolution (so the ground truth is exact to
    1/16 pixel) and their anti-aliased coverage masks are cached.
    """
    if resolution < 8:
        raise InputError(f"resolution must be >= 8 pixels, got {resolution}")
    canvas = _background(scene, resolution)                                       # (R, R, 3) float32
    for obj in scene.objects:
        _paint(canvas, obj, resolution)
    canvas += 0.5
    return canvas.clip(0, 255, out=canvas).astype(np.uint8)                       # (R, R, 3)


def shapes_arrays(n: int, resolution: int = 32, split: str = "train", seed: int = 0, start: int = 0,
                  template_weights: Mapping[str, float] | None = None) -> tuple[np.ndarray, list[Scene]]:
    """The fast path: ``n`` scenes (``start .. start + n - 1``) and their pixels as one array.

    Returns ``(images, scenes)`` with ``images`` of shape ``(n, R, R, 3)`` uint8.

    Example::

        images, scenes = shapes_arrays(64, resolution=32)
        images.shape, scenes[0].caption        # ((64, 32, 32, 3), 'a small pink square')
    """
    scenes = make_scenes(n, split, seed, start, template_weights)
    images = np.empty((n, resolution, resolution, 3), dtype=np.uint8)              # (N, R, R, 3)
    for i, scene in enumerate(scenes):
        images[i] = render_scene(scene, resolution)
    return images, scenes


def shape_rows(n: int, resolution: int, split: str = "train", seed: int = 0,
               template_weights: Mapping[str, float] | None = None, start: int = 0) -> Iterator[dict]:
    """Dataset rows ``{image (PIL RGB), caption, key, objects (JSON), template}`` of scenes ``start .. n-1``."""
    from PIL import Image

    check_template_weights(template_weights)
    for i in range(start, n):
        scene = make_scene(scene_rng(seed, split, i), template_weights)
        yield {
            "image": Image.fromarray(render_scene(scene, resolution), "RGB"),
            "caption": scene.caption,
            "key": scene_key(split, seed, i),
            "objects": scene.objects_json(),
            "template": scene.template,
        }


def shapes_features():
    """The ``datasets.Features`` of ``shapes_dataset``: image, caption, key, objects, template."""
    import datasets

    return datasets.Features({
        "image": datasets.Image(),
        "caption": datasets.Value("string"),
        "key": datasets.Value("string"),
        "objects": datasets.Value("string"),     # JSON list of ShapeObject.to_dict()
        "template": datasets.Value("string"),
    })


def shapes_dataset(n: int, resolution: int = 32, split: str = "train", seed: int = 0,
                   template_weights: Mapping[str, float] | None = None, streaming: bool = False):
    """The shapes dataset as a ``datasets.Dataset`` (in memory) or, with ``streaming``, an ``IterableDataset``.

    Columns: ``image`` (PIL RGB, ``resolution`` square), ``caption``, ``key``, ``objects`` (JSON list
    of ``{shape, colour, size, centre, bbox}``, fractions of the side) and ``template``.

    Example::

        ds = shapes_dataset(100, resolution=32, split="train", seed=0)
        ds[0]["caption"], ds[0]["image"].size      # ('a small pink square', (32, 32))
        objects = json.loads(ds[0]["objects"])
    """
    import datasets

    _check_split(split)
    kwargs = dict(n=n, resolution=resolution, split=split, seed=seed, template_weights=template_weights)
    if streaming:
        return datasets.IterableDataset.from_generator(shape_rows, features=shapes_features(), gen_kwargs=kwargs)
    rows = list(shape_rows(**kwargs))
    columns = {name: [row[name] for row in rows] for name in shapes_features()}
    return datasets.Dataset.from_dict(columns, features=shapes_features())
