"""What every source shares: the record type, skip reasons, the ``Source`` interface and its registry, the checks.

A source kind is one ``Source`` subclass, registered with ``@register_source``; ``open_source``, the
spec help, ``workbench prepare --help`` and the option checks all read the registry. The helpers a
subclass needs are public here: ``image_record`` (decode + validate one sample), ``skip_record``,
``walk_files`` and ``stat_line`` (to fingerprint files), ``caption_from_bytes`` / ``caption_from_value``.
docs/architecture.md ("Adding a data source") shows a whole source kind in a few lines.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import re
import stat
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from PIL import Image

from ...io import fingerprint
from ..images import decode_image
from ...errors import InputError

SOURCES_VERSION = 1                          # bump when validation rules change record contents
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
    "too_large_file": "the file is larger than MAX_FILE_BYTES (it is not read)",
    "not_a_file": "not a regular file (a FIFO, device or socket): never opened, so prepare cannot hang on it",
    "broken_link": "a symlink to nothing, or a symlink loop",
    "bad_file_name": "the file name is not valid UTF-8 (shown with \\x escapes)",
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


def skip_record(key: str, reason: str, detail: str | None = None, file: str | None = None) -> SourceRecord:
    """A skipped record: ``reason`` is a ``SKIP_REASONS`` code, ``detail`` says what exactly, ``file`` names it."""
    return SourceRecord(key, None, None, reason, detail, file=file)


class Source(ABC):
    """A deterministic stream of ``SourceRecord``s. Build one with ``open_source``.

    A subclass is one source kind. It implements ``_iter_records`` and ``describe`` (abstract: the
    JSON-able identity of its input, with a fingerprint of the files, since a resumed prepare run
    trusts it), optionally ``_count``, and declares in class attributes:

    - ``kind``: the spec prefix (``"webdataset"`` in ``webdataset:PATH``);
    - ``summary``: how the spec help names it ("a .tar shard or a folder of shards");
    - ``options``: its own ``open_source`` options (constructor keywords) with their help text;
    - ``recognise(path)``: what marks an existing path as this kind, for specs with no prefix;
    - ``reads_path``: False when the text after ``kind:`` is not a path (``shapes:val``);
    - ``precedence`` (lower wins when several kinds recognise a path), ``single_file`` (the lone file
      it reads, for the error on any other file), ``reads_any_folder`` (it takes the folders no kind
      recognises, as ``imagefolder`` does);
    - ``from_spec`` and ``option_defaults``: override them only for a spec or defaults of its own (shapes).

    The common settings (``COMMON_SETTINGS``) reach the constructor when it takes them. Register
    the class with ``@register_source``.
    """

    kind: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    options: ClassVar[Mapping[str, str]] = {}
    reads_path: ClassVar[bool] = True
    precedence: ClassVar[int] = 50            # lower wins when several kinds recognise one path
    single_file: ClassVar[str] = ""           # the one kind of file it reads alone, e.g. "a tar shard (.tar)"
    reads_any_folder: ClassVar[bool] = False  # a folder no kind recognises is this kind (imagefolder)

    @classmethod
    def recognise(cls, path: Path) -> str | None:
        """What in the existing ``path`` marks it as this kind ("tar shards"), or None (the default)."""
        return None

    @classmethod
    def from_spec(cls, target: Path | str | None, **settings: Any) -> Source:
        """The source for a parsed spec: ``target`` is the path (or, without ``reads_path``, the text after
        ``kind:`` or None); ``settings`` are the options and the common settings the constructor takes."""
        return cls(target, **settings) if cls.reads_path else cls(**settings)

    @classmethod
    def option_defaults(cls, resolutions: tuple[int, ...]) -> dict[str, Any]:
        """Option values ``prepare`` uses unless given, for the ``resolutions`` it prepares (default: none)."""
        return {}

    def __init__(self, *, min_side: int = 0, limit: int | None = None):
        if min_side < 0:
            raise InputError(f"min_side must be >= 0 pixels, got {min_side}")
        if limit is not None and limit < 0:
            raise InputError(f"limit must be None or >= 0 records, got {limit}")
        self.min_side = int(min_side)
        self.limit = limit

    def records(self, start: int = 0) -> Iterator[SourceRecord]:
        """Records ``start, start + 1, ...`` (skipped ones count), at most ``limit`` in all."""
        if start < 0:
            raise InputError(f"start must be >= 0, got {start}")
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


def caption_field(row: Mapping[str, Any], caption_column: str | None) -> Any:
    """The caption value of a metadata row: ``row[caption_column]``, else the first of ``CAPTION_FIELDS`` present."""
    if caption_column is not None:
        return row.get(caption_column)
    return next((row[f] for f in CAPTION_FIELDS if f in row), None)


def image_record(key: str, caption: Caption, read: Callable[[], bytes], min_side: int,
                  name: str | None = None) -> SourceRecord:
    """A checked record: decode the image, then check the caption (random bytes named .jpg are
    ``not_an_image``, whatever the caption); ``read`` returns the encoded image bytes. ``name`` is the file's
    path relative to the source, which a skip carries as ``file`` for the report."""
    try:
        data = read()
    except OSError as err:
        return skip_record(key, "read_error", f"{type(err).__name__}: {err}", name)
    decoded = decode_image(data, min_side=min_side)
    if decoded.image is None:
        return skip_record(key, decoded.reason, decoded.detail, name)
    text, reason, detail = caption
    if reason:
        return skip_record(key, reason, detail, name)
    return SourceRecord(key, decoded.image, text, None)


MAX_FILE_BYTES = 256 * 2 ** 20           # larger image or caption files are skipped (too_large_file), never read


def display_name(rel: str) -> str:
    """A file name as it can be printed and stored: undecodable bytes as ``\\xNN`` escapes."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def file_problem(rel: str, path: Path) -> tuple[str, str] | None:
    """``(reason, detail)`` when ``path`` must be skipped before it is opened, else ``None``.

    Checked without reading: a non-UTF-8 name, a dangling symlink or loop, anything that is not a
    regular file (a FIFO would block the reader forever; ``/dev/zero`` would never end), and a file
    over ``MAX_FILE_BYTES``.
    """
    if display_name(rel) != rel:
        return "bad_file_name", f"{display_name(rel)}: rename it to valid UTF-8"
    try:
        st = path.stat()
    except OSError as err:                               # ENOENT through a link, ELOOP
        why = "a symlink loop" if err.errno == errno.ELOOP else "a symlink to nothing"
        return "broken_link", f"{rel} is {why} ({err.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return "not_a_file", f"{rel} is not a regular file (mode {stat.filemode(st.st_mode)})"
    if st.st_size > MAX_FILE_BYTES:
        return "too_large_file", f"{rel} is {st.st_size / 2 ** 20:.0f} MB (limit {MAX_FILE_BYTES // 2 ** 20} MB)"
    return None


def read_bounded(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """A file's bytes, refusing (``OSError``) to read more than ``limit``, even if it grew after ``stat``."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{path.name} is larger than {limit // 2 ** 20} MB")
    return data


def stat_line(rel: str, path: Path) -> str:
    """``"rel\tsize\tmtime_ns"``: one line of a file listing to fingerprint (``io.fingerprint``) in ``describe``."""
    st = path.stat()
    return f"{rel}\t{st.st_size}\t{st.st_mtime_ns}"


def walk_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(posix relative path, path) of every non-hidden file under ``root``, sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for name in sorted(filenames):
            if not name.startswith("."):
                yield (name if rel_dir == "." else f"{rel_dir}/{name}"), Path(dirpath, name)


# ---------------------------------------------------------------------------------------------
#  The registry: kind -> Source subclass
# ---------------------------------------------------------------------------------------------

COMMON_SETTINGS = ("image_column", "caption_column", "min_side", "limit")   # open_source's own keywords
_KIND_NAME = re.compile(r"^[A-Za-z][\w+.-]+$")
_REGISTRY: dict[str, type[Source]] = {}


def register_source(cls: type[Source]) -> type[Source]:
    """Class decorator: make ``cls`` a source kind that ``open_source`` and ``workbench prepare`` read.

    Checked here, so a broken kind fails at import and not mid-run: ``kind`` is a new name of two or
    more characters, ``summary`` is set, every abstract method (``describe`` included) is
    implemented, and every declared option is a constructor keyword.

    Example::

        @register_source
        class CsvSource(Source):
            kind, summary = "csv", "a folder with captions.csv"
            ...
    """
    name = getattr(cls, "kind", "")
    if not (isinstance(cls, type) and issubclass(cls, Source)):
        raise TypeError(f"register_source takes a Source subclass, got {cls!r}")
    if not isinstance(name, str) or not _KIND_NAME.match(name):
        raise InputError(f"{cls.__name__}.kind must be a name of 2+ letters, digits, _ + . - (it is the spec "
                         f"prefix, as in 'kind:PATH'); got {name!r}")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise InputError(f"source kind {name!r} is already registered by {_REGISTRY[name].__name__}")
    if not cls.summary:
        raise InputError(f"{cls.__name__}.summary must say how the spec help names this kind, e.g. 'an image folder'")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise TypeError(f"{cls.__name__} does not implement {missing}: describe() must fingerprint the input, "
                        "because a resumed prepare run trusts it")
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(cls.options) - set(params))
        if unknown:
            raise TypeError(f"{cls.__name__}.options {unknown} are not keywords of its constructor")
    _REGISTRY[name] = cls
    return cls


def source_kinds() -> tuple[str, ...]:
    """The registered kinds, in registration order (the built-in ones first)."""
    return tuple(_REGISTRY)


def source_class(kind: str) -> type[Source]:
    """The ``Source`` subclass of ``kind``; ``ValueError`` listing the known kinds otherwise."""
    if kind not in _REGISTRY:
        raise InputError(f"unknown source kind {kind!r}: known kinds are {', '.join(_REGISTRY)}")
    return _REGISTRY[kind]
