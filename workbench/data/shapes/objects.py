"""``ShapeObject``: one object of a shapes scene, with its box and JSON ground truth (captions and scenes read it)."""

from __future__ import annotations

from dataclasses import dataclass

from .geometry import UNIT_EXTENTS
from .vocabulary import SIZES


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
