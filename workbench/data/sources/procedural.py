"""The embedded procedural shapes set as a source (``shapes``, ``shapes:train``, ``shapes:val``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..shapes import SHAPES_VERSION, SPLITS, check_template_weights, shape_rows
from .base import Source, SourceRecord, register_source
from ...errors import InputError


@register_source
class ShapesSource(Source):
    """The embedded procedural shapes set (``workbench.data.shapes``), rendered on the fly.

    Images are ``resolution`` squares (render at the largest resolution you prepare; ``preprocess``
    is exact for the same size and bicubic-downsamples for smaller ones). ``meta`` carries the
    ground truth: ``objects`` (JSON) and ``template``.
    """

    kind = "shapes"
    summary = "'shapes' (or 'shapes:train' / 'shapes:val')"
    reads_path = False
    options = {
        "n": "number of scenes (default 10000)",
        "resolution": "image side in pixels (prepare: the largest resolution prepared)",
        "split": "train or val (also 'shapes:val')",
        "seed": "scene seed (default 0)",
        "template_weights": "relative frequency of the caption templates single, pair, position, count",
    }

    def __init__(self, *, n: int = 10_000, resolution: int = 64, split: str = "train", seed: int = 0,
                 template_weights: Mapping[str, float] | None = None, limit: int | None = None):
        super().__init__(limit=limit)
        if split not in SPLITS:
            raise InputError(f"unknown shapes split {split!r}; use 'shapes:train' or 'shapes:val'")
        if n < 0 or resolution < 8:
            raise InputError(f"shapes needs n >= 0 and resolution >= 8, got n={n}, resolution={resolution}")
        check_template_weights(template_weights)
        self.n, self.resolution, self.split, self.seed = int(n), int(resolution), split, int(seed)
        self.template_weights = None if template_weights is None else dict(template_weights)

    @classmethod
    def from_spec(cls, target: Path | str | None, *, split: str | None = None, **settings: Any) -> ShapesSource:
        """``shapes:val`` and ``split="val"`` say the same; saying two different splits is an error."""
        if target and split and target != split:
            raise InputError(f"spec says split {target!r} but split={split!r} was passed")
        return cls(split=target or split or "train", **settings)

    @classmethod
    def option_defaults(cls, resolutions: tuple[int, ...]) -> dict[str, Any]:
        """Render once at the largest resolution; ``preprocess`` downsamples for the smaller ones."""
        return {"resolution": max(resolutions)}

    def _count(self) -> int:
        return self.n

    def _iter_records(self, start: int) -> Iterator[SourceRecord]:
        rows = shape_rows(self.size_hint, self.resolution, self.split, self.seed, self.template_weights, start)
        for row in rows:
            meta = {"objects": row["objects"], "template": row["template"]}
            yield SourceRecord(row["key"], row["image"], row["caption"], None, meta=meta)

    def describe(self) -> dict:
        return {"kind": self.kind, "version": SHAPES_VERSION, "split": self.split, "seed": self.seed,
                "n": self.size_hint, "resolution": self.resolution, "template_weights": self.template_weights}
