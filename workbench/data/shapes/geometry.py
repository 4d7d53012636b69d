"""Shape geometry: signed distance functions in pixels (negative inside) and tight unit-frame boxes.

Each shape lives in a unit frame of half-size 1; ``sdf(shape, px, py, r)`` scales it to a half-size of
``r`` pixels, and ``UNIT_EXTENTS`` gives its tight box, which scene layout uses to keep objects apart.
"""

from __future__ import annotations

import math

import numpy as np

from .vocabulary import SHAPES
from ...errors import InputError

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


def sdf(shape: str, px: np.ndarray, py: np.ndarray, r: float) -> np.ndarray:
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
    raise InputError(f"unknown shape {shape!r}; expected one of {SHAPES}")


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
