"""An image folder: images plus ``metadata.jsonl`` / ``metadata.csv`` or ``.txt`` sidecar captions."""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ...io import fingerprint
from ..images import IMAGE_EXTENSIONS
from .base import (METADATA_FILES, SOURCES_VERSION, Caption, Source, SourceRecord, caption_field, caption_from_bytes,
                   caption_from_value, display_name, file_problem, image_record, read_bounded, register_source,
                   skip_record, stat_line, walk_files)
from ...errors import InputError, MissingFileError


@dataclass
class _Entry:
    """One record-to-be of an image folder, resolved at open time (no pixel reads)."""

    key: str
    path: Path | None = None                     # the image file
    caption: Caption | None = None              # from metadata; None: look for a .txt sidecar
    reason: str | None = None                    # known before reading (duplicate, missing image)
    detail: str | None = None


def _strip_ext(rel: str) -> str:
    return posixpath.splitext(rel)[0]


def _metadata_rows(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """``(line number, row or None, error)`` of a metadata.jsonl / metadata.csv file.

    Bytes that are not UTF-8 survive as lone surrogates, so only that row's caption is flagged.
    """
    text = read_bounded(path).decode("utf-8", "surrogateescape").lstrip("\ufeff")
    if path.suffix == ".csv":
        for lineno, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
            yield lineno, row, None
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            yield lineno, None, f"not valid JSON ({err.msg})"
            continue
        yield lineno, (row if isinstance(row, dict) else None), (None if isinstance(row, dict) else "not an object")


@register_source
class ImageFolderSource(Source):
    """A folder of images with captions, following ``datasets``' ``imagefolder`` conventions.

    Captions come from ``metadata.jsonl`` / ``metadata.csv`` rows (``file_name`` relative to the
    metadata file's folder, caption in ``caption_column`` or the first of ``CAPTION_FIELDS``),
    else from a ``.txt`` sidecar with the image's name (``cat.jpg`` -> ``cat.txt``). Keys are the
    image's relative path without extension (``sub/cat``). Hidden files and folders are ignored.
    """

    kind = "imagefolder"
    summary = "an image folder"
    precedence = 30
    reads_any_folder = True                  # a folder no kind recognises is read as images (and says so)

    @classmethod
    def recognise(cls, path: Path) -> str | None:
        """A folder with image files at its top level: "images"."""
        if not path.is_dir():
            return None
        names = (p.name.lower() for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        return "images" if any(os.path.splitext(n)[1] in IMAGE_EXTENSIONS for n in names) else None

    def __init__(self, root: str | os.PathLike, *, caption_column: str | None = None, min_side: int = 0,
                 limit: int | None = None):
        super().__init__(min_side=min_side, limit=limit)
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise MissingFileError(f"image folder {self.root} does not exist or is not a folder")
        self.caption_column = caption_column
        self._entries, self._sidecars, stats = self._scan()
        if not self._entries:
            raise InputError(
                f"no images found under {self.root}: expected image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                "with captions in a metadata.jsonl (file_name + text) or in .txt files next to each image")
        self._fingerprint = fingerprint(stats)

    def _scan(self) -> tuple[list[_Entry], set[str], list[str]]:
        images, sidecars, metadata, stats, unusable = [], set(), [], [], []
        for rel, path in walk_files(self.root):
            suffix = path.suffix.lower()
            wanted = suffix in IMAGE_EXTENSIONS or suffix == ".txt" or path.name in METADATA_FILES
            problem = file_problem(rel, path) if wanted else None
            if problem:                       # skipped before anything opens it (a FIFO would block forever)
                name = display_name(rel)
                unusable.append(_Entry(_strip_ext(name), reason=problem[0], detail=problem[1]))
                stats.append(f"{name}\t{problem[0]}")
                continue
            if suffix in IMAGE_EXTENSIONS:
                images.append((rel, path))
            elif suffix == ".txt":
                sidecars.add(rel)
            elif path.name in METADATA_FILES:
                metadata.append((rel, path))
            else:
                continue
            stats.append(stat_line(rel, path))
        captions, problems = self._read_metadata(metadata, {rel for rel, _ in images})
        entries, first = [], {}
        for rel, path in images:
            key = _strip_ext(rel)
            if key in first:
                entries.append(_Entry(key, path, reason="duplicate_key",
                                      detail=f"{rel} has the same key as {first[key]}"))
                continue
            first[key] = rel
            entries.append(_Entry(key, path, captions.get(rel)))
        return entries + problems + unusable, sidecars, stats

    def _read_metadata(self, files: list[tuple[str, Path]], images: set[str]) -> tuple[dict, list[_Entry]]:
        """Captions by image relative path, plus entries for bad / duplicate / dangling rows."""
        captions, where_first, problems = {}, {}, []
        for meta_rel, path in files:
            base = posixpath.dirname(meta_rel)
            for lineno, row, error in _metadata_rows(path):
                where = f"{meta_rel} line {lineno}"
                name = row.get("file_name") if row else None
                if error or not isinstance(name, str) or not name:
                    problems.append(_Entry(f"{meta_rel}:{lineno}", reason="bad_metadata",
                                           detail=f"{where}: {error or 'no file_name'}"))
                    continue
                rel = posixpath.normpath(posixpath.join(base, name))
                if rel in where_first:
                    problems.append(_Entry(_strip_ext(rel), reason="duplicate_key",
                                           detail=f"{where} repeats {name!r} (first in {where_first[rel]})"))
                elif rel not in images:
                    where_first[rel] = where
                    problems.append(_Entry(_strip_ext(rel), reason="missing_image",
                                           detail=f"{where} names {name!r}, which is not an image file here"))
                else:
                    where_first[rel] = where
                    captions[rel] = caption_from_value(caption_field(row, self.caption_column), f"caption in {where}")
        return captions, problems

    def _count(self) -> int:
        return len(self._entries)

    def _caption(self, entry: _Entry) -> Caption:
        if entry.caption is not None:
            return entry.caption
        sidecar = entry.key + ".txt"
        if sidecar not in self._sidecars:
            return Caption(None, "missing_caption", f"no metadata row and no {sidecar}")
        try:
            return caption_from_bytes(read_bounded(self.root / sidecar), sidecar)
        except OSError as err:
            return Caption(None, "read_error", f"{sidecar}: {err}")

    def _iter_records(self, start: int) -> Iterator[SourceRecord]:
        for entry in self._entries[start:self.size_hint]:
            if entry.reason:
                yield skip_record(entry.key, entry.reason, entry.detail,
                            entry.path.relative_to(self.root).as_posix() if entry.path else None)
            else:
                yield image_record(entry.key, self._caption(entry), lambda p=entry.path: read_bounded(p), self.min_side,
                                    name=entry.path.relative_to(self.root).as_posix())

    def describe(self) -> dict:
        return {"kind": self.kind, "version": SOURCES_VERSION, "path": str(self.root),
                "records": self.size_hint, "fingerprint": self._fingerprint,
                "caption_column": self.caption_column, "min_side": self.min_side, "limit": self.limit}
