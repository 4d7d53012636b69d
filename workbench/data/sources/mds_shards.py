"""MosaicML Streaming (MDS) shards of images and captions, read with ``workbench.data.mds_reader.MDSReader``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ..mds_reader import INDEX, MDSReader
from .base import (CAPTION_FIELDS, SOURCES_VERSION, Source, SourceRecord, caption_from_value, image_record,
                   register_source)
from ...errors import InputError

IMAGE_FIELDS = ("jpg", "jpeg", "png", "image", "webp")       # tried in order when image_column is None


@register_source
class MDSSource(Source):
    """An MDS folder (``index.json`` + shards, or one sub-folder per writer process) with an image column
    (``jpeg`` / ``png`` / ``bytes`` encodings, decoded and validated here) and a caption column.

    ``image_column`` defaults to the first of ``IMAGE_FIELDS`` present, ``caption_column`` to the first
    of ``CAPTION_FIELDS``. Keys are ``<shard file>:<row>``.
    """

    kind = "mds"
    summary = "an MDS folder (index.json)"
    precedence = 20

    @classmethod
    def recognise(cls, path: Path) -> str | None:
        """A folder with an ``index.json``, or sub-folders with one (one per writer process): "an MDS index"."""
        return "an MDS index" if (path / INDEX).is_file() or any(path.glob(f"*/{INDEX}")) else None

    def __init__(self, path: str | os.PathLike, *, image_column: str | None = None, caption_column: str | None = None,
                 min_side: int = 0, limit: int | None = None):
        super().__init__(min_side=min_side, limit=limit)
        self.path = Path(path).resolve()
        self.reader = MDSReader(self.path)
        columns = self.reader.columns
        self.image_column = image_column or next((c for c in IMAGE_FIELDS if c in columns), None)
        self.caption_column = caption_column or next((c for c in CAPTION_FIELDS if c in columns), None)
        for option, name in (("image_column", self.image_column), ("caption_column", self.caption_column)):
            if name not in columns:
                raise InputError(f"{option}: the MDS dataset {self.path} has columns {sorted(columns)}, not "
                                 f"{name!r}; pass {option}=... (the paper's precomputed latents import with "
                                 f"`workbench import-mds` instead)")
        if columns[self.image_column] not in ("jpeg", "png", "bytes"):
            raise InputError(f"image_column {self.image_column!r} has MDS encoding {columns[self.image_column]!r}; "
                             "expected jpeg, png or bytes (encoded image files)")

    def _count(self) -> int:
        return len(self.reader)

    def _iter_records(self, start: int) -> Iterator[SourceRecord]:
        stop = self.size_hint
        for index in range(start, stop):
            row = self.reader.get(index, raw={self.image_column})
            key = self.reader.shard_name(index)
            caption = caption_from_value(row[self.caption_column], f"column {self.caption_column!r}")
            image_bytes = row[self.image_column]
            yield image_record(key, caption, lambda data=image_bytes: data, self.min_side, key)

    def describe(self) -> dict:
        return {"kind": self.kind, "version": SOURCES_VERSION, "path": str(self.path),
                "image_column": self.image_column, "caption_column": self.caption_column, "min_side": self.min_side,
                "limit": self.limit, "records": len(self.reader),
                "fingerprint": self.reader.fingerprint()}
