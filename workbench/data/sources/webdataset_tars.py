"""WebDataset tar shards: members grouped by key (up to the first dot), image + ``.txt`` / ``.json`` caption."""

from __future__ import annotations

import json
import os
import re
import tarfile
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ...io import fingerprint
from .base import (SOURCES_VERSION, TAR_SUFFIXES, Caption, Source, SourceRecord, caption_field, caption_from_bytes,
                   caption_from_value, display_name, file_problem, image_record, register_source, skip_record,
                   stat_line, walk_files)
from ...errors import InputError, MissingFileError

_WDS_NAME = re.compile(r"^((?:.*/|)[^./][^.]*)\.([^/]*)$")      # webdataset: key = up to the first dot
_IMAGE_EXTS = tuple(e.lstrip(".") for e in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"))
_WANTED = frozenset(_IMAGE_EXTS + ("txt", "json"))


@dataclass
class _Group:
    """The members of one tar sample: ``files[ext]`` is the bytes (None when not read)."""

    key: str
    files: dict = field(default_factory=dict)
    error: str | None = None


def _member_key(info: tarfile.TarInfo) -> tuple[str, str] | None:
    """``(key, ext)`` of a tar member, webdataset style; None for dirs, hidden or dot-less names."""
    if not info.isfile():
        return None
    name = info.name[2:] if info.name.startswith("./") else info.name
    match = _WDS_NAME.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


def _check_tail(tar: tarfile.TarFile) -> None:
    """tarfile stops silently at a truncated header; anything but zero padding after it is damage."""
    tar.fileobj.seek(tar.offset)
    if tar.fileobj.read(1 << 20).strip(b"\0"):
        raise tarfile.ReadError(f"truncated or garbled header at byte {tar.offset}")


def _scan_shard(shard: Path, skip: int) -> Iterator[_Group]:
    """The samples of one shard, in tar order; the data of the first ``skip`` samples is not read.

    A damaged shard ends with one ``_Group`` carrying ``error`` (the sample being read, or the
    shard itself); samples before the damage are kept.
    """
    group, count = None, 0
    try:
        with tarfile.open(shard, "r:*") as tar:
            for info in tar:
                parsed = _member_key(info)
                if parsed is None:
                    continue
                key, ext = parsed
                if group is None or key != group.key:
                    if group is not None:
                        yield group
                    group, count = _Group(key), count + 1
                read = count > skip and ext in _WANTED and ext not in group.files
                group.files.setdefault(ext, tar.extractfile(info).read() if read else None)
            if group is not None:
                yield group
                group = None
            _check_tail(tar)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        message = " ".join(str(err).split())                                  # one line
        yield _Group(group.key if group else shard.name, error=f"{shard.name}: {type(err).__name__}: {message}")


@register_source
class WebDatasetSource(Source):
    """WebDataset tar shards: members ``<key>.<ext>`` grouped into samples by key.

    Each sample needs an image (jpg, jpeg, png, webp, bmp, gif, tif, tiff; the first present in
    that order) and a caption (``txt``, else the ``caption_column`` / ``CAPTION_FIELDS`` field of
    ``json``). Keys must be unique across all shards. ``.tar.gz`` / ``.tgz`` work too. A truncated
    shard costs the samples after the damage (one ``corrupt_shard`` record), not the run.
    """

    kind = "webdataset"
    summary = "a .tar shard or a folder of shards"
    precedence = 30
    single_file = f"a tar shard ({', '.join(TAR_SUFFIXES)})"

    @classmethod
    def recognise(cls, path: Path) -> str | None:
        """A tar file ("a tar shard"), or a folder with tar files at its top level ("tar shards")."""
        if path.is_file():
            return "a tar shard" if path.name.lower().endswith(TAR_SUFFIXES) else None
        names = (p.name.lower() for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        return "tar shards" if any(n.endswith(TAR_SUFFIXES) for n in names) else None

    def __init__(self, path: str | os.PathLike, *, caption_column: str | None = None, min_side: int = 0,
                 limit: int | None = None):
        super().__init__(min_side=min_side, limit=limit)
        self.path = Path(path).resolve()
        if not self.path.exists():
            raise MissingFileError(f"webdataset path {self.path} does not exist")
        self.shards = [self.path] if self.path.is_file() else self._find_shards()
        if not self.shards:
            raise InputError(f"no tar shards ({', '.join(TAR_SUFFIXES)}) found under {self.path}")
        self.caption_column = caption_column
        base = self.path.parent if self.path.is_file() else self.path
        self._fingerprint = fingerprint([stat_line(p.relative_to(base).as_posix(), p) for p in self.shards])

    def _iter_records(self, start: int) -> Iterator[SourceRecord]:
        seen: dict[str, str] = {}                # key -> shard it was first seen in
        index, end = 0, self.limit
        for shard in self.shards:
            for group in _scan_shard(shard, skip=max(0, start - index)):
                if end is not None and index >= end:
                    return
                duplicate = None if group.error else seen.get(group.key)
                if group.error is None and duplicate is None:
                    seen[group.key] = shard.name
                if index >= start:
                    yield self._record(group, shard, duplicate)
                index += 1

    def _record(self, group: _Group, shard: Path, duplicate: str | None) -> SourceRecord:
        key, files = group.key, group.files
        if duplicate is not None:
            return skip_record(key, "duplicate_key", f"key {key!r} in {shard.name} was already seen in {duplicate}")
        if group.error:
            return skip_record(key, "corrupt_shard", group.error)
        image_ext = next((e for e in _IMAGE_EXTS if e in files), None)
        if image_ext is None:
            return skip_record(key, "missing_image", f"sample {key!r} in {shard.name} has {sorted(files)}, no image")
        return image_record(key, self._caption(files, f"{key} in {shard.name}"),
                             lambda: files[image_ext], self.min_side, name=f"{shard.name}:{key}.{image_ext}")

    def _caption(self, files: dict, where: str) -> Caption:
        if "txt" in files:
            return caption_from_bytes(files["txt"], f"{where} .txt")
        if "json" not in files:
            return Caption(None, "missing_caption", f"{where} has no .txt or .json member")
        try:
            row = json.loads(files["json"].decode("utf-8", "surrogateescape"))
        except (json.JSONDecodeError, AttributeError) as err:
            return Caption(None, "bad_metadata", f"{where} .json is not valid JSON ({err})")
        if not isinstance(row, dict):
            return Caption(None, "bad_metadata", f"{where} .json is not an object")
        return caption_from_value(caption_field(row, self.caption_column), f"{where} .json caption")

    def _find_shards(self) -> list[Path]:
        """The tar shards under the folder; a FIFO, device, broken link or bad name is left out with a warning."""
        shards = []
        for rel, path in walk_files(self.path):
            if not path.name.lower().endswith(TAR_SUFFIXES):
                continue
            problem = file_problem(rel, path)
            if problem:
                warnings.warn(f"skipping {display_name(rel)}: {problem[1]}", stacklevel=2)
            else:
                shards.append(path)
        return shards

    def describe(self) -> dict:
        return {"kind": self.kind, "version": SOURCES_VERSION, "path": str(self.path),
                "shards": len(self.shards), "fingerprint": self._fingerprint,
                "caption_column": self.caption_column, "min_side": self.min_side, "limit": self.limit}
