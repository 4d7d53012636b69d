"""A ``datasets`` dataset saved on disk (``Dataset.save_to_disk``): chosen image and caption columns."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .base import (CAPTION_FIELDS, KEY_FIELDS, SOURCES_VERSION, Source, SourceRecord, caption_from_value, image_record,
                   register_source, skip_record)
from ...errors import InputError, MissingFileError

_RAW_IMAGE_DTYPES = ("binary", "large_binary", "string", "large_string")   # bytes or file paths


@register_source
class HFDiskSource(Source):
    """A ``datasets`` dataset saved with ``save_to_disk``, read with ``load_from_disk``.

    ``image_column`` may be an ``Image`` feature (read undecoded, then decoded and validated
    here), encoded bytes, or a file path string. ``caption_column`` defaults to the first of
    ``CAPTION_FIELDS`` present; keys come from ``key_column`` (default: ``__key__`` or ``key`` if
    present, else the zero-padded row index). For a ``DatasetDict`` pass ``split`` (default "train").
    """

    kind = "hf_disk"
    summary = "a folder written by Dataset.save_to_disk"
    precedence = 10
    options = {
        "key_column": "the column of unique keys (default __key__ or key if present, else the row index)",
        "split": "the split of a saved DatasetDict (default train)",
    }
    BATCH = 64                                   # rows read from Arrow at a time

    @classmethod
    def recognise(cls, path: Path) -> str | None:
        """A ``save_to_disk`` folder (state.json + dataset_info.json, or dataset_dict.json): "a saved dataset"."""
        saved = (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
        return "a saved dataset" if saved or (path / "dataset_dict.json").is_file() else None

    def __init__(self, path: str | os.PathLike, *, image_column: str | None = "image",
                 caption_column: str | None = None, key_column: str | None = None, split: str | None = None,
                 min_side: int = 0, limit: int | None = None):
        import datasets

        super().__init__(min_side=min_side, limit=limit)
        self.path = Path(path).resolve()
        if not self.path.is_dir():
            raise MissingFileError(f"saved dataset folder {self.path} does not exist")
        loaded = datasets.load_from_disk(str(self.path))
        self.split = self._pick_split(loaded, split)
        ds = loaded[self.split] if self.split is not None else loaded
        columns = ds.column_names
        self.image_column = self._need_column(columns, image_column or "image", "image_column")
        self.caption_column = self._need_column(
            columns, caption_column or next((c for c in CAPTION_FIELDS if c in columns), None), "caption_column")
        self.key_column = (self._need_column(columns, key_column, "key_column") if key_column
                           else next((c for c in KEY_FIELDS if c in columns), None))
        feature = ds.features[self.image_column]
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(self.image_column, datasets.Image(decode=False))
        elif not (isinstance(feature, datasets.Value) and feature.dtype in _RAW_IMAGE_DTYPES):
            raise InputError(f"image_column {self.image_column!r} has type {feature}; expected an Image feature, "
                             "encoded image bytes, or file path strings")
        keep = [c for c in (self.image_column, self.caption_column, self.key_column) if c]
        self._ds = ds.select_columns(list(dict.fromkeys(keep)))
        self._fingerprint = ds._fingerprint

    @staticmethod
    def _pick_split(loaded: Any, split: str | None) -> str | None:
        if not hasattr(loaded, "keys"):                                 # a Dataset, not a DatasetDict
            if split is not None:
                raise InputError(f"split={split!r} given, but the saved dataset has no splits")
            return None
        names = list(loaded.keys())
        choice = split or ("train" if "train" in names else names[0] if len(names) == 1 else None)
        if choice not in names:
            raise InputError(f"saved DatasetDict has splits {names}; pass split= one of them")
        return choice

    @staticmethod
    def _need_column(columns: list[str], name: str | None, option: str) -> str:
        if name is None or name not in columns:
            raise InputError(f"{option}={name!r} is not a column of the saved dataset; columns are {columns}. "
                             f"Pass {option}=<column name>")
        return name

    def _count(self) -> int:
        return len(self._ds)

    def _keys(self, lo: int, hi: int) -> list[str]:
        if self.key_column is None:
            return [f"{i:09d}" for i in range(lo, hi)]
        return [str(k) for k in self._ds[lo:hi][self.key_column]]

    def _iter_records(self, start: int) -> Iterator[SourceRecord]:
        seen = set(self._keys(0, start)) if self.key_column and start else set()
        end = self.size_hint
        for lo in range(start, end, self.BATCH):
            hi = min(lo + self.BATCH, end)
            rows = self._ds[lo:hi]
            for key, value, caption in zip(self._keys(lo, hi), rows[self.image_column], rows[self.caption_column]):
                if key in seen:
                    yield skip_record(key, "duplicate_key", f"row key {key!r} repeats an earlier row")
                    continue
                seen.add(key)
                yield self._record(key, value, caption)

    def _record(self, key: str, value: Any, caption: Any) -> SourceRecord:
        where = f"row {key} column {self.caption_column!r}"
        if isinstance(value, dict):                                       # Image(decode=False)
            value = value.get("bytes") or value.get("path")
        if value is None:
            return skip_record(key, "missing_image", f"row {key} has no image")
        if isinstance(value, (bytes, bytearray)):
            return image_record(key, caption_from_value(caption, where), lambda: bytes(value), self.min_side)
        path = Path(value) if Path(value).is_absolute() else self.path / value
        return image_record(key, caption_from_value(caption, where), path.read_bytes, self.min_side)

    def describe(self) -> dict:
        return {"kind": self.kind, "version": SOURCES_VERSION, "path": str(self.path), "split": self.split,
                "records": self.size_hint, "fingerprint": self._fingerprint, "image_column": self.image_column,
                "caption_column": self.caption_column, "key_column": self.key_column,
                "min_side": self.min_side, "limit": self.limit}
