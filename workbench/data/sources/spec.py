"""Source specs: ``"shapes:val"``, ``"photos/"``, ``"webdataset:PATH"`` -> a kind and a target -> an open ``Source``.

Everything here reads the registry (``base.register_source``): the kinds a prefix may name, how a
path with no prefix is recognised, the spec help and each kind's options. ``workbench.data.sources``
re-exports ``open_source`` and ``parse_source_spec``.
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Any

from .base import COMMON_SETTINGS, Source, source_class, source_kinds
from ...errors import InputError, MissingFileError

_KIND_PREFIX = re.compile(r"^([A-Za-z][\w+.-]*):(.*)$")


class SourceOptionError(InputError, TypeError):
    """A source option the source kind does not accept (an InputError for the CLI, a TypeError for Python)."""


def _classes() -> list[type[Source]]:
    return [source_class(kind) for kind in source_kinds()]


def spec_help() -> str:
    """One sentence naming every kind a spec may be, and the prefixes that force a kind."""
    names = [cls.summary for cls in _classes()]
    listed = ", ".join(names[:-1]) + f", or {names[-1]}" if len(names) > 1 else names[0]
    prefixes = ", ".join(f"'{cls.kind}:PATH'" for cls in _classes() if cls.reads_path)
    return f"Use {listed}; force a kind with a prefix, e.g. {prefixes}."


def source_options_help() -> str:
    """Each kind with its options and their help, one kind per line (``workbench prepare --help``)."""
    lines = []
    for cls in _classes():
        options = "; ".join(f"{name}: {text}" for name, text in cls.options.items()) or "no options of its own"
        lines.append(f"  {cls.kind:<12} {cls.summary}. {options}")
    return "\n".join(lines)


def parse_source_spec(spec: str | os.PathLike) -> tuple[str, Path | str | None]:
    """Split a source spec into ``(kind, target)``; raise before any work if it cannot be read.

    ``target`` is the text after ``kind:`` (or None) for a kind that reads no path (``shapes``),
    else an existing path.
    """
    text = os.fspath(spec).strip()
    if not text:
        raise InputError(f"empty source spec. {spec_help()}")
    if text in source_kinds() and not source_class(text).reads_path:
        return text, None
    prefix = _KIND_PREFIX.match(text)
    if prefix and prefix.group(1) in source_kinds():
        kind, rest = prefix.groups()
        if not source_class(kind).reads_path:
            return kind, rest
        path = Path(rest).expanduser()
        if not path.exists():
            raise MissingFileError(f"source path {str(path)!r} does not exist. {spec_help()}")
        return kind, path
    path = Path(text).expanduser()
    if path.exists():
        return _recognise(path), path
    if prefix and len(prefix.group(1)) > 1:                     # 'http:...', 's3:...' (not 'C:\...')
        raise InputError(f"unsupported source kind {prefix.group(1)!r} in {text!r}: supported kinds are "
                         f"{', '.join(source_kinds())}. Remote URLs and Hub ids are not read directly: download "
                         f"them first (e.g. datasets.load_dataset(...).save_to_disk(PATH)). {spec_help()}")
    raise MissingFileError(f"source path {text!r} does not exist. {spec_help()} Hub datasets: save them first "
                            "with datasets.load_dataset(...).save_to_disk(PATH).")


def _recognise(path: Path) -> str:
    """The kind of an existing path with no prefix: the lowest ``precedence`` among the kinds that recognise it."""
    found = [(cls.precedence, cls.kind, what) for cls in _classes() if (what := cls.recognise(path))]
    if not found:
        if path.is_file():
            files = " or ".join(cls.single_file for cls in _classes() if cls.single_file)
            raise InputError(f"unsupported source file {str(path)!r}: a single file must be {files}. {spec_help()}")
        fallback = next((cls.kind for cls in _classes() if cls.reads_any_folder), None)
        if fallback is None:
            raise InputError(f"no source kind recognises the folder {str(path)!r}. {spec_help()}")
        return fallback
    best = min(p for p, _, _ in found)
    top = [(kind, what) for p, kind, what in found if p == best]
    if len(top) > 1:
        (a, what_a), (b, what_b) = top[:2]
        raise InputError(f"{str(path)!r} holds both {what_a} and {what_b}; say which with '{a}:{path}' "
                         f"or '{b}:{path}'")
    return top[0][0]


def open_source(spec: str | os.PathLike, *, image_column: str | None = None, caption_column: str | None = None,
                min_side: int = 0, limit: int | None = None, **options: Any) -> Source:
    """Open an image-caption source from a spec string; fails fast on a bad spec.

    Args:
        spec: ``"shapes"``, ``"shapes:train"``, ``"shapes:val"``; an image folder; a ``.tar`` shard
            or a folder of shards; a folder written by ``Dataset.save_to_disk``; an MDS folder; or any
            registered kind. Prefix a path with ``KIND:`` (``imagefolder:``, ``webdataset:``,
            ``hf_disk:``, ``mds:`` ...) to force the kind.
        image_column: image column of a saved dataset (``hf_disk``, default ``image``) or of MDS shards
            (default there: the first of jpg, jpeg, png, image, webp).
        caption_column: caption column / metadata or json field; None tries ``CAPTION_FIELDS``.
        min_side: skip images whose short side is smaller (``too_small``); 0 keeps all.
        limit: yield at most this many records (skipped ones count).
        **options: the kind's own options (``Source.options``; ``source_options_help()`` lists them),
            e.g. ``shapes``: ``n``, ``resolution``, ``split``, ``seed``; ``hf_disk``: ``key_column``, ``split``.
            The common settings above reach a kind only when its constructor takes them.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: unsupported kind, no images / shards, unknown column or split, bad option value.
        SourceOptionError: an option the kind does not accept (a ``TypeError`` and a ``ValueError``).

    Example::

        source = open_source("shapes:train", n=1000, resolution=32)
        source = open_source("photos/", min_side=256)            # metadata.jsonl or .txt sidecars
        report = {}
        for rec in source.records():
            if not rec.ok:
                report.setdefault(rec.skip_reason, []).append(rec.key)
    """
    kind, target = parse_source_spec(spec)
    cls = source_class(kind)
    unknown = set(options) - set(cls.options)
    if unknown:
        raise SourceOptionError(f"open_source({kind!r}) got unknown options {sorted(unknown)}; "
                                f"it accepts {sorted(cls.options) or 'none'} besides the common ones")
    common = dict(zip(COMMON_SETTINGS, (image_column, caption_column, min_side, limit)))
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    settings = {k: v for k, v in common.items() if takes_any or k in params}
    source = cls.from_spec(target, **settings, **options)
    described = source.describe()
    if not isinstance(described, dict) or described.get("kind") != kind:
        raise TypeError(f"{cls.__name__}.describe() must return a dict with 'kind': {kind!r} and a fingerprint of "
                        f"the input, got {described!r}")
    return source
