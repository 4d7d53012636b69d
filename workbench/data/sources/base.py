"""What every source shares: the record type, skip reasons, the ``Source`` interface, caption and image checks."""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple

from PIL import Image

from ...io import fingerprint
from ..images import decode_image

SOURCES_VERSION = 1                          # bump when validation rules change record contents
SOURCE_KINDS = ("shapes", "imagefolder", "webdataset", "hf_disk", "mds")
CAPTION_FIELDS = ("text", "caption", "txt", "prompt")   # tried in order when caption_column is None
KEY_FIELDS = ("__key__", "key")              # hf_disk: tried in order when key_column is None
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
SKIP_REASONS = {
    "duplicate_key": "an earlier record has the same key; the first one is kept",
    "missing_image": "a metadata row or tar sample names no image that exists",
    "corrupt_shard": "a tar shard is truncated or not a tar; the rest of that shard is lost",
    "missing_caption": "no caption: no metadata row, .txt sidecar or json field, or not a string",
    "empty_caption": "the caption is empty or only whitespace",
    "caption_not_utf8": "the caption bytes are not valid UTF-8",
    "bad_metadata": "a metadata.jsonl/csv row or .json sidecar cannot be parsed",
    "read_error": "the file could not be read (permissions, I/O error)",
    "zero_byte": "the image file is empty",
    "not_an_image": "the bytes are not an image format PIL knows (e.g. text named .jpg)",
    "corrupt_image": "the image header or pixels fail to decode (e.g. a truncated file)",
    "too_large": "the image exceeds PIL's decompression-bomb pixel limit",
    "too_small": "the image's short side is below min_side",
}


@dataclass(frozen=True)
class SourceRecord:
    """One sample: a good one has an RGB ``image`` and a ``caption``; a bad one a ``skip_reason``.

    ``skip_reason`` is a code from ``SKIP_REASONS``; ``detail`` says what exactly was wrong (file,
    line, error). ``meta`` holds extras, e.g. the shapes ground truth (``objects``, ``template``).
    """

    key: str
    image: Image.Image | None
    caption: str | None
    skip_reason: str | None
    detail: str | None = None
    meta: Mapping[str, Any] | None = field(default=None, compare=False)
    file: str | None = field(default=None, compare=False)   # the file, relative to the source (reports name it)

    @property
    def ok(self) -> bool:
        """True for a good record (no ``skip_reason``)."""
        return self.skip_reason is None


def _skip(key: str, reason: str, detail: str | None = None, file: str | None = None) -> SourceRecord:
    return SourceRecord(key, None, None, reason, detail, file=file)


class Source(ABC):
    """A deterministic stream of ``SourceRecord``s. Build one with ``open_source``.

    Subclasses set ``kind`` and implement ``_count``, ``_iter_records`` and ``describe``.
    """

    kind: str = ""

    def __init__(self, *, min_side: int = 0, limit: int | None = None):
        if min_side < 0:
            raise ValueError(f"min_side must be >= 0 pixels, got {min_side}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be None or >= 0 records, got {limit}")
        self.min_side = int(min_side)
        self.limit = limit

    def records(self, start: int = 0) -> Iterator[SourceRecord]:
        """Records ``start, start + 1, ...`` (skipped ones count), at most ``limit`` in all."""
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        return self._iter_records(start)

    @abstractmethod
    def _iter_records(self, start: int) -> Iterator[SourceRecord]:
        ...

    @abstractmethod
    def describe(self) -> dict:
        """JSON-able identity of the source (kind, location, options, file fingerprint)."""

    def _count(self) -> int | None:
        return None

    @property
    def size_hint(self) -> int | None:
        """Number of records ``records()`` yields (skipped included), or None if unknown (tars)."""
        n = self._count()
        if n is None or self.limit is None:
            return n
        return min(n, self.limit)

    def config_hash(self) -> str:
        """Short stable hash of ``describe()``, for cache keys."""
        return fingerprint(self.describe())

    def to_dataset(self, *, cache_dir: str | os.PathLike | None = None):
        """The good records as a ``datasets.Dataset`` with columns ``key``, ``image``, ``caption``.

        Built with ``Dataset.from_generator`` (Arrow in ``cache_dir``, cached by ``config_hash``).
        """
        import datasets

        features = datasets.Features({
            "key": datasets.Value("string"), "image": datasets.Image(), "caption": datasets.Value("string")})

        def rows():
            for rec in self.records():
                if rec.ok:
                    yield {"key": rec.key, "image": rec.image, "caption": rec.caption}

        return datasets.Dataset.from_generator(
            rows, features=features, cache_dir=None if cache_dir is None else str(cache_dir),
            fingerprint=f"workbench-source-{self.config_hash()}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.describe(), sort_keys=True)})"


class Caption(NamedTuple):
    """A checked caption: ``text`` when good, else a ``reason`` code and its ``detail``."""

    text: str | None
    reason: str | None = None
    detail: str | None = None


def caption_from_bytes(data: bytes | None, where: str = "caption") -> Caption:
    """Validate caption bytes (a .txt sidecar): UTF-8 (BOM allowed), stripped, not empty."""
    if data is None:
        return Caption(None, "missing_caption", f"no {where}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        return Caption(None, "caption_not_utf8", f"{where}: {err}")
    return caption_from_value(text, where)


def caption_from_value(value: Any, where: str = "caption") -> Caption:
    """Validate a caption value from metadata or a dataset column.

    Strings are stripped; bytes are decoded as UTF-8; a list takes its first string (several
    captions per image); None or other types are ``missing_caption``. Strings that came from
    undecodable bytes (lone surrogates) are ``caption_not_utf8``.
    """
    if isinstance(value, bytes):
        return caption_from_bytes(value, where)
    if isinstance(value, (list, tuple)):
        value = next((v for v in value if isinstance(v, str)), None)
    if value is None:
        return Caption(None, "missing_caption", f"no {where}")
    if not isinstance(value, str):
        return Caption(None, "missing_caption", f"{where} is a {type(value).__name__}, not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return Caption(None, "caption_not_utf8", f"{where} has bytes that are not valid UTF-8")
    text = value.strip()
    if not text:
        return Caption(None, "empty_caption", f"{where} is empty or whitespace")
    return Caption(text)


def _pick_field(row: Mapping[str, Any], caption_column: str | None) -> Any:
    if caption_column is not None:
        return row.get(caption_column)
    return next((row[f] for f in CAPTION_FIELDS if f in row), None)


def _image_record(key: str, caption: Caption, read: Callable[[], bytes], min_side: int,
                  name: str | None = None) -> SourceRecord:
    """Decode the image, then check the caption (random bytes named .jpg are ``not_an_image``, whatever the
    caption); ``read`` returns the encoded image bytes. ``name`` is the file's path relative to the
    source, which a skip carries as ``file`` for the report."""
    try:
        data = read()
    except OSError as err:
        return _skip(key, "read_error", f"{type(err).__name__}: {err}", name)
    decoded = decode_image(data, min_side=min_side)
    if decoded.image is None:
        return _skip(key, decoded.reason, decoded.detail, name)
    text, reason, detail = caption
    if reason:
        return _skip(key, reason, detail, name)
    return SourceRecord(key, decoded.image, text, None)


def _stat_line(rel: str, path: Path) -> str:
    st = path.stat()
    return f"{rel}\t{st.st_size}\t{st.st_mtime_ns}"


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    """(posix relative path, path) of every non-hidden file under ``root``, sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for name in sorted(filenames):
            if not name.startswith("."):
                yield (name if rel_dir == "." else f"{rel_dir}/{name}"), Path(dirpath, name)
