"""Embedded procedural dataset: coloured shapes with captions and exact ground truth.

Nothing to download. Every scene is drawn from its own generator, seeded by ``(seed, split, index)``,
so any scene can be rebuilt alone and rendered at any resolution. A scene is 1 to 4 anti-aliased objects on a
light-grey background with a faint gradient, plus a caption and the structured ground truth:

- 6 shapes (circle, square, triangle, star, ring, cross), 8 colours, 2 sizes (small, large);
- 4 caption templates (``TEMPLATES``), mixed by ``template_weights``:
  ``single``   "a large red circle"
  ``pair``     "a blue square and a green star"
  ``position`` "a purple ring above an orange cross"
  ``count``    "three yellow triangles"
- the colour-shape pairs in ``HELDOUT_COMBOS`` are never rendered in the train or val split. They
  appear only in the fixed evaluation prompts (``eval_prompts``), so generalisation can be measured.

Geometry is resolution independent: centres and boxes are fractions of the image side. At 32 px a
large object is about 14 px across and a small one about 8 px. Objects never overlap (their boxes
are at least ``GAP`` apart), so every object is fully visible.

Two ways in::

    images, scenes = shapes_arrays(256, resolution=32, split="train", seed=0)  # fast numpy path
    ds = shapes_dataset(1000, resolution=64, split="val")                      # datasets.Dataset
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, Mapping, Sequence

import numpy as np

SHAPES_VERSION = 1  # bump when scenes or pixels change, so configs hashing describe() notice

# ---------------------------------------------------------------------------------------------
#  Vocabulary
# ---------------------------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
COLOURS = {                                 # name -> sRGB, far apart from each other and from grey
    "red": (220, 38, 38),
    "orange": (245, 130, 20),
    "yellow": (235, 200, 20),
    "green": (34, 160, 60),
    "cyan": (20, 185, 200),
    "blue": (40, 70, 225),
    "purple": (135, 50, 190),
    "pink": (240, 110, 180),
}
SIZES = {"small": 0.125, "large": 0.22}     # half-size of the shape's unit frame, fraction of side
HELDOUT_COMBOS = (                          # (colour, shape) never rendered in train or val
    ("red", "star"),
    ("orange", "circle"),
    ("yellow", "ring"),
    ("green", "cross"),
    ("blue", "triangle"),
    ("purple", "square"),
)
TRAIN_COMBOS = tuple((c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELDOUT_COMBOS)

TEMPLATES = ("single", "pair", "position", "count")
DEFAULT_TEMPLATE_WEIGHTS = {"single": 0.4, "pair": 0.2, "position": 0.2, "count": 0.2}
RELATIONS = {"left_of": "to the left of", "right_of": "to the right of", "above": "above", "below": "below"}
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
SPLITS = ("train", "val")                   # disjoint seed streams (see scene_rng)

MARGIN = 0.02                               # min distance from an object's box to the image border
GAP = 0.04                                  # min distance between two objects' boxes
SIZE_IN_CAPTION_P = 0.5                     # probability that a caption names the sizes
BACKGROUND_GREY = (200.0, 240.0)            # background grey level range
BACKGROUND_GRADIENT = 12.0                  # max grey change across the image ("lightly textured")

# ---------------------------------------------------------------------------------------------
#  Shape geometry: signed distance functions in pixels (negative inside)
# ---------------------------------------------------------------------------------------------

_TRIANGLE = np.array([[0.0, -0.93], [1.0, 0.80], [-1.0, 0.80]])                   # (3, 2) unit frame
_STAR = np.array([[r * math.cos(-math.pi / 2 + k * math.pi / 5), r * math.sin(-math.pi / 2 + k * math.pi / 5)]
                  for k, r in zip(range(10), [1.0, 0.5] * 5)])                      # (10, 2) unit frame
SQUARE_HALF = 0.88                          # square half-side, unit frame
RING_MID, RING_HALF_WIDTH = 0.70, 0.30      # ring centre-line radius and half thickness, unit frame
CROSS_HALF_WIDTH = 0.34                     # half thickness of the cross's arms, unit frame


def _sdf_box(px: np.ndarray, py: np.ndarray, hx: float, hy: float) -> np.ndarray:
    """Signed distance to an axis-aligned box with half-sizes (hx, hy) centred at the origin."""
    qx, qy = np.abs(px) - hx, np.abs(py) - hy                                   # (h, w) each
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))                # (h, w)
    return outside + np.minimum(np.maximum(qx, qy), 0.0)                        # (h, w)


def _sdf_polygon(px: np.ndarray, py: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Signed distance to a closed polygon (Inigo Quilez's formulation), vectorised over edges."""
    vx, vy = verts[:, 0, None, None], verts[:, 1, None, None]                   # (E, 1, 1)
    prev = np.roll(verts, 1, axis=0)                                             # (E, 2)
    ex, ey = prev[:, 0, None, None] - vx, prev[:, 1, None, None] - vy            # (E, 1, 1)
    wx, wy = px - vx, py - vy                                                    # (E, h, w)
    t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)             # (E, h, w)
    dist2 = ((wx - ex * t) ** 2 + (wy - ey * t) ** 2).min(axis=0)                # (h, w)
    c1, c2, c3 = py >= vy, py < vy + ey, ex * wy > ey * wx                       # (E, h, w) each
    flips = (c1 & c2 & c3) | ~(c1 | c2 | c3)                                     # (E, h, w)
    inside = np.logical_xor.reduce(flips, axis=0)                                # (h, w)
    return np.where(inside, -1.0, 1.0) * np.sqrt(dist2)                          # (h, w)


def _sdf(shape: str, px: np.ndarray, py: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (pixels) to ``shape`` of half-size ``r`` pixels, centred at the origin."""
    if shape == "circle":
        return np.hypot(px, py) - r
    if shape == "ring":
        return np.abs(np.hypot(px, py) - RING_MID * r) - RING_HALF_WIDTH * r
    if shape == "square":
        return _sdf_box(px, py, SQUARE_HALF * r, SQUARE_HALF * r)
    if shape == "cross":
        arm = CROSS_HALF_WIDTH * r
        return np.minimum(_sdf_box(px, py, r, arm), _sdf_box(px, py, arm, r))
    if shape == "triangle":
        return _sdf_polygon(px, py, _TRIANGLE * r)
    if shape == "star":
        return _sdf_polygon(px, py, _STAR * r)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _unit_extent(shape: str) -> tuple[float, float, float, float]:
    """Tight box (x0, y0, x1, y1) of ``shape`` in its unit frame (half-size 1)."""
    if shape == "square":
        return (-SQUARE_HALF, -SQUARE_HALF, SQUARE_HALF, SQUARE_HALF)
    if shape in ("triangle", "star"):
        verts = _TRIANGLE if shape == "triangle" else _STAR
        (x0, y0), (x1, y1) = verts.min(axis=0), verts.max(axis=0)
        return (float(x0), float(y0), float(x1), float(y1))
    return (-1.0, -1.0, 1.0, 1.0)          # circle, ring, cross


UNIT_EXTENTS = {s: _unit_extent(s) for s in SHAPES}

# ---------------------------------------------------------------------------------------------
#  Scenes: objects, caption, ground truth
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene. ``cx``, ``cy`` are the centre as fractions of the image side."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """Tight box ``(x0, y0, x1, y1)`` as fractions of the image side (y grows downwards)."""
        half = SIZES[self.size]
        x0, y0, x1, y1 = UNIT_EXTENTS[self.shape]
        return (self.cx + x0 * half, self.cy + y0 * half, self.cx + x1 * half, self.cy + y1 * half)

    def to_dict(self) -> dict:
        """JSON-able ground truth: shape, colour, size, centre and bbox (fractions, 4 decimals)."""
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "centre": [round(self.cx, 4), round(self.cy, 4)],
            "bbox": [round(v, 4) for v in self.bbox],
        }


@dataclass(frozen=True)
class Scene:
    """A caption, its objects and its background. Render it with ``render_scene(scene, resolution)``.

    ``relation`` is ``(subject_index, relation_name, object_index)`` for ``position`` scenes.
    """

    objects: tuple[ShapeObject, ...]
    caption: str
    template: str
    relation: tuple[int, str, int] | None = None
    grey: float = 220.0                          # background grey level
    gradient: tuple[float, float] = (0.0, 0.0)   # grey change across the image in x and y

    def objects_json(self) -> str:
        """Ground truth as a JSON list of ``ShapeObject.to_dict()`` (the dataset's ``objects``)."""
        return json.dumps([o.to_dict() for o in self.objects])


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def _noun(obj: ShapeObject, with_size: bool) -> str:
    words = ([obj.size] if with_size else []) + [obj.colour, obj.shape]
    return " ".join(words)


def caption_for(objects: Sequence[ShapeObject], template: str, relation: tuple[int, str, int] | None,
                with_size: bool) -> str:
    """The caption of a scene, from its objects and template (see the module docstring)."""
    if template == "single":
        return _article(_noun(objects[0], with_size))
    if template == "pair":
        return f"{_article(_noun(objects[0], with_size))} and {_article(_noun(objects[1], with_size))}"
    if template == "position":
        i, rel, j = relation
        return f"{_article(_noun(objects[i], with_size))} {RELATIONS[rel]} {_article(_noun(objects[j], with_size))}"
    if template == "count":
        first = objects[0]
        size = f"{first.size} " if with_size else ""
        return f"{COUNT_WORDS[len(objects)]} {size}{first.colour} {_plural(first.shape)}"
    raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")

# ---------------------------------------------------------------------------------------------
#  Layout sampling (fractions of the image side)
# ---------------------------------------------------------------------------------------------


def _extent(shape: str, size: str) -> tuple[float, float, float, float]:
    half = SIZES[size]
    return tuple(v * half for v in UNIT_EXTENTS[shape])


def _centre_range(lo: float, hi: float, cell: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """Valid centre coordinates so that the box [c+lo, c+hi] stays in ``cell`` with the margin."""
    return cell[0] + MARGIN - lo, cell[1] - MARGIN - hi


def _place_single(rng: random.Random, shape: str, size: str) -> tuple[float, float]:
    x0, y0, x1, y1 = _extent(shape, size)
    return rng.uniform(*_centre_range(x0, x1)), rng.uniform(*_centre_range(y0, y1))


def _place_pair(rng: random.Random, items: Sequence[tuple[str, str]], axis: int,
                dominant: bool) -> list[tuple[float, float]]:
    """Place two ``(shape, size)`` items, the first before the second along ``axis`` (0: x, 1: y).

    Their boxes are at least ``GAP`` apart. With ``dominant`` the offset across ``axis`` is at most
    half the offset along it, so "left of" / "above" are unambiguous.
    """
    ext = [_extent(*it) for it in items]                          # per item (x0, y0, x1, y1)
    lo, hi = [e[axis] for e in ext], [e[axis + 2] for e in ext]
    free = 1.0 - 2 * MARGIN - GAP - (hi[0] - lo[0]) - (hi[1] - lo[1])
    cut0, cut1 = sorted((rng.uniform(0.0, free), rng.uniform(0.0, free)))  # slack before / between
    a = MARGIN + cut0 - lo[0]
    b = a + hi[0] + GAP + (cut1 - cut0) - lo[1]
    other = 1 - axis
    oa = rng.uniform(*_centre_range(ext[0][other], ext[0][other + 2]))
    ob_lo, ob_hi = _centre_range(ext[1][other], ext[1][other + 2])
    if dominant:
        spread = 0.5 * (b - a)
        ob = min(max(oa + rng.uniform(-spread, spread), ob_lo), ob_hi)
    else:
        ob = rng.uniform(ob_lo, ob_hi)
    along, across = (a, b), (oa, ob)
    return [(along[k], across[k]) if axis == 0 else (across[k], along[k]) for k in range(2)]


def _place_grid(rng: random.Random, items: Sequence[tuple[str, str]]) -> list[tuple[float, float]]:
    """Place up to 4 ``(shape, size)`` items in distinct cells of a 2x2 grid, jittered in their cell."""
    out = []
    for cell, (shape, size) in zip(rng.sample(range(4), len(items)), items):
        x0, y0, x1, y1 = _extent(shape, size)
        left, top = 0.5 * (cell % 2), 0.5 * (cell // 2)
        xr = _centre_range(x0 - GAP / 2, x1 + GAP / 2, (left, left + 0.5))
        yr = _centre_range(y0 - GAP / 2, y1 + GAP / 2, (top, top + 0.5))
        out.append((rng.uniform(*xr), rng.uniform(*yr)))
    return out


def _pick_size(rng: random.Random) -> str:
    return "large" if rng.random() < 0.5 else "small"


def _layout(rng: random.Random, template: str) -> tuple[list[ShapeObject], tuple[int, str, int] | None]:
    """Objects (and relation) of one scene of ``template``: only ``TRAIN_COMBOS``, no overlap."""
    if template == "single":
        (colour, shape), size = rng.choice(TRAIN_COMBOS), _pick_size(rng)
        return [ShapeObject(shape, colour, size, *_place_single(rng, shape, size))], None
    if template in ("pair", "position"):
        combos, sizes = rng.sample(TRAIN_COMBOS, 2), [_pick_size(rng), _pick_size(rng)]
        rel = rng.choice(tuple(RELATIONS)) if template == "position" else None
        axis = (0 if rel in ("left_of", "right_of") else 1) if rel else rng.randrange(2)
        items = [(shape, size) for (_, shape), size in zip(combos, sizes)]
        centres = _place_pair(rng, items, axis, dominant=rel is not None)
        objects = [ShapeObject(s, c, z, *xy) for (c, s), z, xy in zip(combos, sizes, centres)]
        if rel in ("right_of", "below") or (rel is None and rng.random() < 0.5):
            objects.reverse()            # the subject (index 0) is the later one along the axis
        return objects, ((0, rel, 1) if rel else None)
    if template == "count":
        n, (colour, shape) = rng.randrange(2, 5), rng.choice(TRAIN_COMBOS)
        size = _pick_size(rng) if n == 2 else "small"
        items = [(shape, size)] * n
        centres = _place_pair(rng, items, rng.randrange(2), False) if n == 2 else _place_grid(rng, items)
        return [ShapeObject(shape, colour, size, *xy) for xy in centres], None
    raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")


@lru_cache(maxsize=64)
def _template_cdf(weights: tuple[tuple[str, float], ...] | None) -> tuple[float, ...]:
    """Cumulative template probabilities in ``TEMPLATES`` order, after validation."""
    weights = dict(DEFAULT_TEMPLATE_WEIGHTS if weights is None else weights)
    unknown = set(weights) - set(TEMPLATES)
    if unknown:
        raise ValueError(f"template_weights has unknown templates {sorted(unknown)}; use {TEMPLATES}")
    probs = [float(weights.get(t, 0.0)) for t in TEMPLATES]
    if min(probs) < 0 or sum(probs) <= 0:
        raise ValueError(f"template_weights must be >= 0 with a positive sum, got {weights}")
    return tuple(np.cumsum(probs) / sum(probs))


def check_template_weights(template_weights: Mapping[str, float] | None) -> None:
    """Raise ValueError unless ``template_weights`` maps known ``TEMPLATES`` to weights >= 0, sum > 0."""
    _template_cdf(_weights_key(template_weights))


def _weights_key(template_weights: Mapping[str, float] | None) -> tuple[tuple[str, float], ...] | None:
    return None if template_weights is None else tuple(sorted(template_weights.items()))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown shapes split {split!r}; use one of {SPLITS}")


def scene_rng(seed: int, split: str, index: int) -> random.Random:
    """The generator of scene ``index`` of ``split``, seeded by ``(seed, split, index)``.

    Python's ``random.Random`` seeded from a string (sha512, stable across Python versions); train
    and val seed strings differ, so their streams are disjoint. Scalar draws from it are ~10x
    cheaper than numpy's, which is most of the cost of a scene.
    """
    _check_split(split)
    return random.Random(f"shapes/{int(seed)}/{split}/{int(index)}")


def scene_key(split: str, seed: int, index: int) -> str:
    """Stable key of a scene, e.g. ``shapes-train-0-00000042``."""
    return f"shapes-{split}-{seed}-{index:08d}"


def make_scene(rng: random.Random, template_weights: Mapping[str, float] | None = None) -> Scene:
    """Sample one scene (objects, caption, background) from ``rng``.

    ``template_weights`` maps template names (``TEMPLATES``) to relative weights; the default
    ``DEFAULT_TEMPLATE_WEIGHTS`` makes 40% of scenes single objects.
    """
    cdf = _template_cdf(_weights_key(template_weights))
    u = rng.random()
    template = next((t for t, c in zip(TEMPLATES, cdf) if u < c), TEMPLATES[-1])
    objects, relation = _layout(rng, template)
    with_size = rng.random() < SIZE_IN_CAPTION_P
    grey = rng.uniform(*BACKGROUND_GREY)
    gradient = (rng.uniform(-1, 1) * BACKGROUND_GRADIENT / 2, rng.uniform(-1, 1) * BACKGROUND_GRADIENT / 2)
    caption = caption_for(objects, template, relation, with_size)
    return Scene(tuple(objects), caption, template, relation, grey, gradient)


def make_scenes(n: int, split: str = "train", seed: int = 0, start: int = 0,
                template_weights: Mapping[str, float] | None = None) -> list[Scene]:
    """Scenes ``start .. start + n - 1`` of ``split``; each depends only on (seed, split, index)."""
    check_template_weights(template_weights)
    return [make_scene(scene_rng(seed, split, i), template_weights) for i in range(start, start + n)]

# ---------------------------------------------------------------------------------------------
#  Rendering (numpy; anti-aliased by the analytic pixel coverage of the signed distance)
# ---------------------------------------------------------------------------------------------

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
    alpha = np.clip(0.5 - _sdf(shape, xs, ys, r), 0.0, 1.0).astype(np.float32)    # (h, w)
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
        raise ValueError(f"resolution must be >= 8 pixels, got {resolution}")
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

# ---------------------------------------------------------------------------------------------
#  datasets.Dataset / IterableDataset
# ---------------------------------------------------------------------------------------------


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

# ---------------------------------------------------------------------------------------------
#  Caption parsing and the fixed evaluation prompts
# ---------------------------------------------------------------------------------------------

_NUM = "|".join(["a", "an"] + list(COUNT_WORDS.values()))
_NP = (rf"(?P<num{{i}}>{_NUM}) (?:(?P<size{{i}}>small|large) )?(?:(?P<colour{{i}}>{'|'.join(COLOURS)}) )?"
       rf"(?P<shape{{i}}>{'|'.join(SHAPES)})(?:e?s)?")
_CAPTION = re.compile(
    rf"^{_NP.format(i=0)}(?:(?P<link> and | {' | '.join(RELATIONS.values())} ){_NP.format(i=1)})?$")


def parse_caption(caption: str) -> dict | None:
    """Parse a shapes caption back into ``{"objects": [...], "relation": (0, rel, 1) | None}``.

    Each object is ``{shape, colour (or None), size (or None), count}``. Returns None if the caption
    is not in the shapes grammar.

    Example::

        parse_caption("two small red circles")
        # {'objects': [{'shape': 'circle', 'colour': 'red', 'size': 'small', 'count': 2}], 'relation': None}
    """
    match = _CAPTION.match(caption.strip().lower())
    if match is None:
        return None
    words = {w: n for n, w in COUNT_WORDS.items()} | {"a": 1, "an": 1}
    objects = []
    for i in range(2):
        if match.group(f"shape{i}"):
            objects.append({"shape": match.group(f"shape{i}"), "colour": match.group(f"colour{i}"),
                            "size": match.group(f"size{i}"), "count": words[match.group(f"num{i}")]})
    link = (match.group("link") or "").strip()
    rel = {v: k for k, v in RELATIONS.items()}.get(link)
    return {"objects": objects, "relation": (0, rel, 1) if rel else None}


EVAL_CATEGORIES = ("single_object", "two_objects", "counting", "colours", "position", "colour_attribution")


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt and what a correct image must show.

    ``objects`` are ``{shape, colour, count}`` dicts; ``check`` says what is scored ("shape",
    "colour", "count", "relation" or "binding"); ``heldout`` marks a held-out colour-shape combo.
    """

    category: str
    prompt: str
    objects: tuple[dict, ...]
    check: str
    relation: tuple[int, str, int] | None = None
    heldout: bool = False


def _prompt(category: str, check: str, objs: Sequence[tuple[str, str, int]],
            relation: tuple[int, str, int] | None = None) -> EvalPrompt:
    """Build an EvalPrompt from ``(colour, shape, count)`` triples via the training templates."""
    things = [ShapeObject(shape, colour, "small", 0.5, 0.5) for colour, shape, _ in objs]
    if objs[0][2] > 1:
        things = things * objs[0][2]
        text = caption_for(things, "count", None, with_size=False)
    elif relation:
        text = caption_for(things, "position", relation, with_size=False)
    else:
        text = caption_for(things, "pair" if len(things) == 2 else "single", None, with_size=False)
    heldout = any((c, s) in HELDOUT_COMBOS for c, s, _ in objs)
    spec = tuple({"shape": s, "colour": c, "count": k} for c, s, k in objs)
    return EvalPrompt(category, text, spec, check, relation, heldout)


def eval_prompts() -> list[EvalPrompt]:
    """The fixed GenEval-like prompt set (same list every call; 55 prompts).

    Categories (``EVAL_CATEGORIES``): single_object (each shape), colours (each colour), two_objects,
    counting (2, 3, 4), position (each relation), colour_attribution; plus held-out prompts
    (``heldout=True``): each ``HELDOUT_COMBOS`` pair alone (colours) and bound in a pair
    (colour_attribution).
    """
    rng = random.Random("shapes/eval-prompts/v1")      # fixed: the prompt set never changes
    train = list(TRAIN_COMBOS)
    pick = rng.choice
    prompts = []
    for shape in SHAPES:
        colour = pick([c for c, s in train if s == shape])
        prompts.append(_prompt("single_object", "shape", [(colour, shape, 1)]))
    for colour in COLOURS:
        shape = pick([s for c, s in train if c == colour])
        prompts.append(_prompt("colours", "colour", [(colour, shape, 1)]))
    for shape in SHAPES:
        first = pick([c for c, s in train if s == shape])
        other = pick([(c, s) for c, s in train if s != shape])
        prompts.append(_prompt("two_objects", "shape", [(first, shape, 1), (*other, 1)]))
    for count in (2, 3, 4):
        for _ in range(3):
            colour, shape = pick(train)
            prompts.append(_prompt("counting", "count", [(colour, shape, count)]))
    for rel in RELATIONS:
        for _ in range(2):
            a = pick(train)
            b = pick([(c, s) for c, s in train if c != a[0] and s != a[1]])
            prompts.append(_prompt("position", "relation", [(*a, 1), (*b, 1)], (0, rel, 1)))
    for _ in range(6):
        a = pick(train)
        b = pick([(c, s) for c, s in train if c != a[0] and s != a[1]])
        prompts.append(_prompt("colour_attribution", "binding", [(*a, 1), (*b, 1)]))
    for colour, shape in HELDOUT_COMBOS:
        prompts.append(_prompt("colours", "colour", [(colour, shape, 1)]))
        other = pick([(c, s) for c, s in train if c != colour and s != shape])
        prompts.append(_prompt("colour_attribution", "binding", [(colour, shape, 1), (*other, 1)]))
    return prompts

# ---------------------------------------------------------------------------------------------
#  Benchmark
# ---------------------------------------------------------------------------------------------


def benchmark_shapes(n: int = 2000, resolution: int = 32, seed: int = 0) -> dict:
    """Time sampling + rendering ``n`` train scenes to numpy on this process (one core).

    Returns ``{"images_per_s", "seconds", "n", "resolution", "mean_objects"}``.
    """
    shapes_arrays(min(n, 50), resolution, seed=seed + 1)            # warm-up
    t0 = time.perf_counter()
    _, scenes = shapes_arrays(n, resolution, seed=seed)
    seconds = time.perf_counter() - t0
    return {
        "images_per_s": n / seconds,
        "seconds": seconds,
        "n": n,
        "resolution": resolution,
        "mean_objects": float(np.mean([len(s.objects) for s in scenes])),
    }
