"""Image-caption sources: the embedded shapes set, image folders, WebDataset tars, saved datasets.

Open any of them with one string and iterate validated records::

    source = open_source("data/my_photos", min_side=256)     # or "shapes:val", "shards/", "saved_ds/"
    for rec in source.records():
        if rec.skip_reason:                      # e.g. "corrupt_image", with rec.detail
            continue
        pixels = preprocess(rec.image, 256)      # (256, 256, 3) uint8: short side bicubic + centre crop

Design. We enumerate files and tar members ourselves and validate each sample on its own, so one
bad sample is skipped with a short, stable reason (``SKIP_REASONS``) and never stops a run.
``datasets``' own ``imagefolder`` / ``webdataset`` builders decode lazily and raise on the first
corrupt file mid-iteration, with no per-file reason, so they are not used for reading.
``datasets`` is used where it is robust: ``load_from_disk`` for saved datasets (the image column
is read undecoded and decoded here), ``Source.to_dataset()`` (``Dataset.from_generator``) to turn
any source into an Arrow dataset, and the shapes set (``shapes.shapes_dataset``).

Problems with the source as a whole (a missing path, an unsupported kind, a folder with no images,
a missing column) raise ``FileNotFoundError`` / ``ValueError`` in ``open_source``, before any work.

Records come in a deterministic order; each carries exactly one reason, the first failing check
in this order: ``duplicate_key``, ``missing_image``, ``corrupt_shard``, caption checks
(``missing_caption``, ``empty_caption``, ``caption_not_utf8``, ``bad_metadata``), image checks
(``read_error``, ``zero_byte``, ``not_an_image``, ``corrupt_image``, ``too_large``, ``too_small``).
Keys are unique among good records; the first record with a key wins.

Resume: ``records(start=k)`` yields the records from index ``k`` (counting skipped ones), without
decoding the first ``k``. A prepare step that has handled ``k`` records resumes with ``start=k``,
provided ``describe()`` (which fingerprints the files) is unchanged.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import re
import tarfile
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple

from PIL import Image

from ..io import fingerprint
from .images import IMAGE_EXTENSIONS, decode_image, preprocess  # noqa: F401  (preprocess re-exported)
from .shapes import SHAPES_VERSION, SPLITS, check_template_weights, shape_rows

SOURCES_VERSION = 1                          # bump when validation rules change record contents
SOURCE_KINDS = ("shapes", "imagefolder", "webdataset", "hf_disk")
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

# ---------------------------------------------------------------------------------------------
#  Records and the Source interface
# ---------------------------------------------------------------------------------------------


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

    @property
    def ok(self) -> bool:
        """True for a good record (no ``skip_reason``)."""
        return self.skip_reason is None


def _skip(key: str, reason: str, detail: str | None = None) -> SourceRecord:
    return SourceRecord(key, None, None, reason, detail)


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

# ---------------------------------------------------------------------------------------------
#  Captions and images
# ---------------------------------------------------------------------------------------------

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


def _image_record(key: str, caption: Caption, read: Callable[[], bytes], min_side: int) -> SourceRecord:
    """Validate caption then image; ``read`` returns the encoded image bytes."""
    text, reason, detail = caption
    if reason:
        return _skip(key, reason, detail)
    try:
        data = read()
    except OSError as err:
        return _skip(key, "read_error", f"{type(err).__name__}: {err}")
    decoded = decode_image(data, min_side=min_side)
    if decoded.image is None:
        return _skip(key, decoded.reason, decoded.detail)
    return SourceRecord(key, decoded.image, text, None)


def _stat_line(rel: str, path: Path) -> str:
    st = path.stat()
    return f"{rel}\t{st.st_size}\t{st.st_mtime_ns}"

# ---------------------------------------------------------------------------------------------
#  Shapes (embedded, procedural)
# ---------------------------------------------------------------------------------------------


class ShapesSource(Source):
    """The embedded procedural shapes set (``workbench.data.shapes``), rendered on the fly.

    Images are ``resolution`` squares (render at the largest resolution you prepare; ``preprocess``
    is exact for the same size and bicubic-downsamples for smaller ones). ``meta`` carries the
    ground truth: ``objects`` (JSON) and ``template``.
    """

    kind = "shapes"

    def __init__(self, *, n: int = 10_000, resolution: int = 64, split: str = "train", seed: int = 0,
                 template_weights: Mapping[str, float] | None = None, limit: int | None = None):
        super().__init__(limit=limit)
        if split not in SPLITS:
            raise ValueError(f"unknown shapes split {split!r}; use 'shapes:train' or 'shapes:val'")
        if n < 0 or resolution < 8:
            raise ValueError(f"shapes needs n >= 0 and resolution >= 8, got n={n}, resolution={resolution}")
        check_template_weights(template_weights)
        self.n, self.resolution, self.split, self.seed = int(n), int(resolution), split, int(seed)
        self.template_weights = None if template_weights is None else dict(template_weights)

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

# ---------------------------------------------------------------------------------------------
#  Image folder: images + metadata.jsonl / metadata.csv / .txt sidecars
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """One record-to-be of an image folder, resolved at open time (no pixel reads)."""

    key: str
    path: Path | None = None                     # the image file
    caption: Caption | None = None              # from metadata; None: look for a .txt sidecar
    reason: str | None = None                    # known before reading (duplicate, missing image)
    detail: str | None = None


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    """(posix relative path, path) of every non-hidden file under ``root``, sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for name in sorted(filenames):
            if not name.startswith("."):
                yield (name if rel_dir == "." else f"{rel_dir}/{name}"), Path(dirpath, name)


def _strip_ext(rel: str) -> str:
    return posixpath.splitext(rel)[0]


def _metadata_rows(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """``(line number, row or None, error)`` of a metadata.jsonl / metadata.csv file.

    Bytes that are not UTF-8 survive as lone surrogates, so only that row's caption is flagged.
    """
    text = path.read_bytes().decode("utf-8", "surrogateescape").lstrip("\ufeff")
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


class ImageFolderSource(Source):
    """A folder of images with captions, following ``datasets``' ``imagefolder`` conventions.

    Captions come from ``metadata.jsonl`` / ``metadata.csv`` rows (``file_name`` relative to the
    metadata file's folder, caption in ``caption_column`` or the first of ``CAPTION_FIELDS``),
    else from a ``.txt`` sidecar with the image's name (``cat.jpg`` -> ``cat.txt``). Keys are the
    image's relative path without extension (``sub/cat``). Hidden files and folders are ignored.
    """

    kind = "imagefolder"

    def __init__(self, root: str | os.PathLike, *, caption_column: str | None = None, min_side: int = 0,
                 limit: int | None = None):
        super().__init__(min_side=min_side, limit=limit)
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist or is not a folder")
        self.caption_column = caption_column
        self._entries, self._sidecars, stats = self._scan()
        if not self._entries:
            raise ValueError(
                f"no images found under {self.root}: expected image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                "with captions in a metadata.jsonl (file_name + text) or in .txt files next to each image")
        self._fingerprint = fingerprint(stats)

    def _scan(self) -> tuple[list[_Entry], set[str], list[str]]:
        images, sidecars, metadata, stats = [], set(), [], []
        for rel, path in _walk(self.root):
            suffix = path.suffix.lower()
            if suffix in IMAGE_EXTENSIONS:
                images.append((rel, path))
            elif suffix == ".txt":
                sidecars.add(rel)
            elif path.name in METADATA_FILES:
                metadata.append((rel, path))
            else:
                continue
            stats.append(_stat_line(rel, path))
        captions, problems = self._read_metadata(metadata, {rel for rel, _ in images})
        entries, first = [], {}
        for rel, path in images:
            key = _strip_ext(rel)
            if key in first:
                entries.append(_Entry(key, reason="duplicate_key", detail=f"{rel} has the same key as {first[key]}"))
                continue
            first[key] = rel
            entries.append(_Entry(key, path, captions.get(rel)))
        return entries + problems, sidecars, stats

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
                    captions[rel] = caption_from_value(_pick_field(row, self.caption_column), f"caption in {where}")
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
            return caption_from_bytes((self.root / sidecar).read_bytes(), sidecar)
        except OSError as err:
            return Caption(None, "read_error", f"{sidecar}: {err}")

    def _iter_records(self, start: int) -> Iterator[SourceRecord]:
        for entry in self._entries[start:self.size_hint]:
            if entry.reason:
                yield _skip(entry.key, entry.reason, entry.detail)
            else:
                yield _image_record(entry.key, self._caption(entry), entry.path.read_bytes, self.min_side)

    def describe(self) -> dict:
        return {"kind": self.kind, "version": SOURCES_VERSION, "path": str(self.root),
                "records": self.size_hint, "fingerprint": self._fingerprint,
                "caption_column": self.caption_column, "min_side": self.min_side, "limit": self.limit}

# ---------------------------------------------------------------------------------------------
#  WebDataset tar shards
# ---------------------------------------------------------------------------------------------

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


class WebDatasetSource(Source):
    """WebDataset tar shards: members ``<key>.<ext>`` grouped into samples by key.

    Each sample needs an image (jpg, jpeg, png, webp, bmp, gif, tif, tiff; the first present in
    that order) and a caption (``txt``, else the ``caption_column`` / ``CAPTION_FIELDS`` field of
    ``json``). Keys must be unique across all shards. ``.tar.gz`` / ``.tgz`` work too. A truncated
    shard costs the samples after the damage (one ``corrupt_shard`` record), not the run.
    """

    kind = "webdataset"

    def __init__(self, path: str | os.PathLike, *, caption_column: str | None = None, min_side: int = 0,
                 limit: int | None = None):
        super().__init__(min_side=min_side, limit=limit)
        self.path = Path(path).resolve()
        if not self.path.exists():
            raise FileNotFoundError(f"webdataset path {self.path} does not exist")
        self.shards = [self.path] if self.path.is_file() else [
            p for _, p in _walk(self.path) if p.name.lower().endswith(TAR_SUFFIXES)]
        if not self.shards:
            raise ValueError(f"no tar shards ({', '.join(TAR_SUFFIXES)}) found under {self.path}")
        self.caption_column = caption_column
        base = self.path.parent if self.path.is_file() else self.path
        self._fingerprint = fingerprint([_stat_line(p.relative_to(base).as_posix(), p) for p in self.shards])

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
            return _skip(key, "duplicate_key", f"key {key!r} in {shard.name} was already seen in {duplicate}")
        if group.error:
            return _skip(key, "corrupt_shard", group.error)
        image_ext = next((e for e in _IMAGE_EXTS if e in files), None)
        if image_ext is None:
            return _skip(key, "missing_image", f"sample {key!r} in {shard.name} has {sorted(files)}, no image")
        return _image_record(key, self._caption(files, f"{key} in {shard.name}"),
                             lambda: files[image_ext], self.min_side)

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
        return caption_from_value(_pick_field(row, self.caption_column), f"{where} .json caption")

    def describe(self) -> dict:
        return {"kind": self.kind, "version": SOURCES_VERSION, "path": str(self.path),
                "shards": len(self.shards), "fingerprint": self._fingerprint,
                "caption_column": self.caption_column, "min_side": self.min_side, "limit": self.limit}

# ---------------------------------------------------------------------------------------------
#  A datasets dataset saved on disk (Dataset.save_to_disk)
# ---------------------------------------------------------------------------------------------


_RAW_IMAGE_DTYPES = ("binary", "large_binary", "string", "large_string")   # bytes or file paths


class HFDiskSource(Source):
    """A ``datasets`` dataset saved with ``save_to_disk``, read with ``load_from_disk``.

    ``image_column`` may be an ``Image`` feature (read undecoded, then decoded and validated
    here), encoded bytes, or a file path string. ``caption_column`` defaults to the first of
    ``CAPTION_FIELDS`` present; keys come from ``key_column`` (default: ``__key__`` or ``key`` if
    present, else the zero-padded row index). For a ``DatasetDict`` pass ``split`` (default "train").
    """

    kind = "hf_disk"
    BATCH = 64                                   # rows read from Arrow at a time

    def __init__(self, path: str | os.PathLike, *, image_column: str = "image", caption_column: str | None = None,
                 key_column: str | None = None, split: str | None = None, min_side: int = 0,
                 limit: int | None = None):
        import datasets

        super().__init__(min_side=min_side, limit=limit)
        self.path = Path(path).resolve()
        if not self.path.is_dir():
            raise FileNotFoundError(f"saved dataset folder {self.path} does not exist")
        loaded = datasets.load_from_disk(str(self.path))
        self.split = self._pick_split(loaded, split)
        ds = loaded[self.split] if self.split is not None else loaded
        columns = ds.column_names
        self.image_column = self._need_column(columns, image_column, "image_column")
        self.caption_column = self._need_column(
            columns, caption_column or next((c for c in CAPTION_FIELDS if c in columns), None), "caption_column")
        self.key_column = (self._need_column(columns, key_column, "key_column") if key_column
                           else next((c for c in KEY_FIELDS if c in columns), None))
        feature = ds.features[self.image_column]
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(self.image_column, datasets.Image(decode=False))
        elif not (isinstance(feature, datasets.Value) and feature.dtype in _RAW_IMAGE_DTYPES):
            raise ValueError(f"image_column {self.image_column!r} has type {feature}; expected an Image feature, "
                             "encoded image bytes, or file path strings")
        keep = [c for c in (self.image_column, self.caption_column, self.key_column) if c]
        self._ds = ds.select_columns(list(dict.fromkeys(keep)))
        self._fingerprint = ds._fingerprint

    @staticmethod
    def _pick_split(loaded: Any, split: str | None) -> str | None:
        if not hasattr(loaded, "keys"):                                 # a Dataset, not a DatasetDict
            if split is not None:
                raise ValueError(f"split={split!r} given, but the saved dataset has no splits")
            return None
        names = list(loaded.keys())
        choice = split or ("train" if "train" in names else names[0] if len(names) == 1 else None)
        if choice not in names:
            raise ValueError(f"saved DatasetDict has splits {names}; pass split= one of them")
        return choice

    @staticmethod
    def _need_column(columns: list[str], name: str | None, option: str) -> str:
        if name is None or name not in columns:
            raise ValueError(f"{option}={name!r} is not a column of the saved dataset; columns are {columns}. "
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
                    yield _skip(key, "duplicate_key", f"row key {key!r} repeats an earlier row")
                    continue
                seen.add(key)
                yield self._record(key, value, caption)

    def _record(self, key: str, value: Any, caption: Any) -> SourceRecord:
        where = f"row {key} column {self.caption_column!r}"
        if isinstance(value, dict):                                       # Image(decode=False)
            value = value.get("bytes") or value.get("path")
        if value is None:
            return _skip(key, "missing_image", f"row {key} has no image")
        if isinstance(value, (bytes, bytearray)):
            return _image_record(key, caption_from_value(caption, where), lambda: bytes(value), self.min_side)
        path = Path(value) if Path(value).is_absolute() else self.path / value
        return _image_record(key, caption_from_value(caption, where), path.read_bytes, self.min_side)

    def describe(self) -> dict:
        return {"kind": self.kind, "version": SOURCES_VERSION, "path": str(self.path), "split": self.split,
                "records": self.size_hint, "fingerprint": self._fingerprint, "image_column": self.image_column,
                "caption_column": self.caption_column, "key_column": self.key_column,
                "min_side": self.min_side, "limit": self.limit}

# ---------------------------------------------------------------------------------------------
#  open_source: one string -> a Source
# ---------------------------------------------------------------------------------------------

_KIND_PREFIX = re.compile(r"^([A-Za-z][\w+.-]*):(.*)$")
_SPEC_HELP = ("Use 'shapes' (or 'shapes:train' / 'shapes:val'), an image folder, a .tar shard or a folder "
              "of shards, or a folder written by Dataset.save_to_disk; force a kind with a prefix, e.g. "
              "'imagefolder:PATH', 'webdataset:PATH', 'hf_disk:PATH'.")
_OPTIONS = {
    "shapes": {"n", "resolution", "split", "seed", "template_weights"},
    "imagefolder": set(),
    "webdataset": set(),
    "hf_disk": {"key_column", "split"},
}


def parse_source_spec(spec: str | os.PathLike) -> tuple[str, Path | str | None]:
    """Split a source spec into ``(kind, target)``; raise before any work if it cannot be read.

    ``target`` is the shapes split (or None) for ``shapes``, else an existing path.
    """
    text = os.fspath(spec).strip()
    if not text:
        raise ValueError(f"empty source spec. {_SPEC_HELP}")
    if text == "shapes":
        return "shapes", None
    prefix = _KIND_PREFIX.match(text)
    if prefix and prefix.group(1) in SOURCE_KINDS:
        kind, rest = prefix.groups()
        if kind == "shapes":
            return kind, rest
        path = Path(rest).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"source path {str(path)!r} does not exist. {_SPEC_HELP}")
        return kind, path
    path = Path(text).expanduser()
    if path.exists():
        return _infer_kind(path), path
    if prefix and len(prefix.group(1)) > 1:                     # 'http:...', 's3:...' (not 'C:\...')
        raise ValueError(f"unsupported source kind {prefix.group(1)!r} in {text!r}: supported kinds are "
                         f"{', '.join(SOURCE_KINDS)}. Remote URLs and Hub ids are not read directly: download "
                         f"them first (e.g. datasets.load_dataset(...).save_to_disk(PATH)). {_SPEC_HELP}")
    raise FileNotFoundError(f"source path {text!r} does not exist. {_SPEC_HELP} Hub datasets: save them first "
                            "with datasets.load_dataset(...).save_to_disk(PATH).")


def _infer_kind(path: Path) -> str:
    if path.is_file():
        if path.name.lower().endswith(TAR_SUFFIXES):
            return "webdataset"
        raise ValueError(f"unsupported source file {str(path)!r}: a single file must be a tar shard "
                         f"({', '.join(TAR_SUFFIXES)}). {_SPEC_HELP}")
    saved_dataset = (path / "state.json").exists() and (path / "dataset_info.json").exists()
    if saved_dataset or (path / "dataset_dict.json").exists():
        return "hf_disk"
    names = [p.name.lower() for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    has_tars = any(n.endswith(TAR_SUFFIXES) for n in names)
    has_images = any(os.path.splitext(n)[1] in IMAGE_EXTENSIONS for n in names)
    if has_tars and has_images:
        raise ValueError(f"{str(path)!r} holds both tar shards and images; say which with 'webdataset:{path}' "
                         f"or 'imagefolder:{path}'")
    return "webdataset" if has_tars else "imagefolder"


def open_source(spec: str | os.PathLike, *, image_column: str = "image", caption_column: str | None = None,
                min_side: int = 0, limit: int | None = None, **options: Any) -> Source:
    """Open an image-caption source from a spec string; fails fast on a bad spec.

    Args:
        spec: ``"shapes"``, ``"shapes:train"``, ``"shapes:val"``; an image folder; a ``.tar`` shard
            or a folder of shards; a folder written by ``Dataset.save_to_disk``. Prefix a path
            with ``imagefolder:``, ``webdataset:`` or ``hf_disk:`` to force the kind.
        image_column: image column of a saved dataset (``hf_disk``).
        caption_column: caption column / metadata or json field; None tries ``CAPTION_FIELDS``.
        min_side: skip images whose short side is smaller (``too_small``); 0 keeps all.
        limit: yield at most this many records (skipped ones count).
        **options: ``shapes``: ``n``, ``resolution``, ``split``, ``seed``, ``template_weights``;
            ``hf_disk``: ``key_column``, ``split``.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: unsupported kind, no images / shards, unknown column or split, bad option value.
        TypeError: an option the kind does not accept.

    Example::

        source = open_source("shapes:train", n=1000, resolution=32)
        source = open_source("photos/", min_side=256)            # metadata.jsonl or .txt sidecars
        report = {}
        for rec in source.records():
            if not rec.ok:
                report.setdefault(rec.skip_reason, []).append(rec.key)
    """
    kind, target = parse_source_spec(spec)
    unknown = set(options) - _OPTIONS[kind]
    if unknown:
        raise TypeError(f"open_source({kind!r}) got unknown options {sorted(unknown)}; "
                        f"it accepts {sorted(_OPTIONS[kind]) or 'none'} besides the common ones")
    if kind == "shapes":
        split = options.pop("split", None)
        if target and split and target != split:
            raise ValueError(f"spec says split {target!r} but split={split!r} was passed")
        return ShapesSource(split=target or split or "train", limit=limit, **options)
    if kind == "imagefolder":
        return ImageFolderSource(target, caption_column=caption_column, min_side=min_side, limit=limit)
    if kind == "webdataset":
        return WebDatasetSource(target, caption_column=caption_column, min_side=min_side, limit=limit)
    return HFDiskSource(target, image_column=image_column, caption_column=caption_column,
                        min_side=min_side, limit=limit, **options)
