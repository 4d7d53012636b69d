"""Scenes: objects, captions and ground truth, laid out without overlap; seeded per (seed, split, index).

Geometry is resolution independent: centres and boxes are fractions of the image side. Objects never
overlap (their boxes are at least ``GAP`` apart), so every object is fully visible. Render a scene
with ``workbench.data.shapes.render_scene(scene, resolution)``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .captions import caption_for
from .geometry import UNIT_EXTENTS
from .objects import ShapeObject
from .vocabulary import (BACKGROUND_GRADIENT, BACKGROUND_GREY, DEFAULT_TEMPLATE_WEIGHTS, GAP, MARGIN, RELATIONS,
                         SIZE_IN_CAPTION_P, SIZES, SPLITS, TEMPLATES, TRAIN_COMBOS)
from ...errors import InputError


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


def _extent(shape: str, size: str) -> tuple[float, float, float, float]:
    half = SIZES[size]
    return tuple(v * half for v in UNIT_EXTENTS[shape])


def _centre_range(lo: float, hi: float, cell: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """Valid centre coordinates so that the box [c+lo, c+hi] stays in ``cell`` with the margin."""
    return cell[0] + MARGIN - lo, cell[1] - MARGIN - hi


def place_single(rng: random.Random, shape: str, size: str) -> tuple[float, float]:
    x0, y0, x1, y1 = _extent(shape, size)
    return rng.uniform(*_centre_range(x0, x1)), rng.uniform(*_centre_range(y0, y1))


def place_pair(rng: random.Random, items: Sequence[tuple[str, str]], axis: int,
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


def place_grid(rng: random.Random, items: Sequence[tuple[str, str]]) -> list[tuple[float, float]]:
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
        return [ShapeObject(shape, colour, size, *place_single(rng, shape, size))], None
    if template in ("pair", "position"):
        combos, sizes = rng.sample(TRAIN_COMBOS, 2), [_pick_size(rng), _pick_size(rng)]
        rel = rng.choice(tuple(RELATIONS)) if template == "position" else None
        axis = (0 if rel in ("left_of", "right_of") else 1) if rel else rng.randrange(2)
        items = [(shape, size) for (_, shape), size in zip(combos, sizes)]
        centres = place_pair(rng, items, axis, dominant=rel is not None)
        objects = [ShapeObject(s, c, z, *xy) for (c, s), z, xy in zip(combos, sizes, centres)]
        if rel in ("right_of", "below") or (rel is None and rng.random() < 0.5):
            objects.reverse()            # the subject (index 0) is the later one along the axis
        return objects, ((0, rel, 1) if rel else None)
    if template == "count":
        n, (colour, shape) = rng.randrange(2, 5), rng.choice(TRAIN_COMBOS)
        size = _pick_size(rng) if n == 2 else "small"
        items = [(shape, size)] * n
        centres = place_pair(rng, items, rng.randrange(2), False) if n == 2 else place_grid(rng, items)
        return [ShapeObject(shape, colour, size, *xy) for xy in centres], None
    raise InputError(f"unknown template {template!r}; expected one of {TEMPLATES}")


@lru_cache(maxsize=64)
def _template_cdf(weights: tuple[tuple[str, float], ...] | None) -> tuple[float, ...]:
    """Cumulative template probabilities in ``TEMPLATES`` order, after validation."""
    weights = dict(DEFAULT_TEMPLATE_WEIGHTS if weights is None else weights)
    unknown = set(weights) - set(TEMPLATES)
    if unknown:
        raise InputError(f"template_weights has unknown templates {sorted(unknown)}; use {TEMPLATES}")
    probs = [float(weights.get(t, 0.0)) for t in TEMPLATES]
    if min(probs) < 0 or sum(probs) <= 0:
        raise InputError(f"template_weights must be >= 0 with a positive sum, got {weights}")
    return tuple(np.cumsum(probs) / sum(probs))


def check_template_weights(template_weights: Mapping[str, float] | None) -> None:
    """Raise ValueError unless ``template_weights`` maps known ``TEMPLATES`` to weights >= 0, sum > 0."""
    _template_cdf(_weights_key(template_weights))


def _weights_key(template_weights: Mapping[str, float] | None) -> tuple[tuple[str, float], ...] | None:
    return None if template_weights is None else tuple(sorted(template_weights.items()))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InputError(f"unknown shapes split {split!r}; use one of {SPLITS}")


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
