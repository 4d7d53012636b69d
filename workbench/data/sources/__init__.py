"""Image-caption sources: the embedded shapes set, image folders, WebDataset tars, saved datasets, MDS shards.

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

import os
import re
from pathlib import Path
from typing import Any

from ..images import IMAGE_EXTENSIONS, preprocess
from .base import (CAPTION_FIELDS, KEY_FIELDS, METADATA_FILES, SKIP_REASONS, SOURCE_KINDS, SOURCES_VERSION, TAR_SUFFIXES,
                   Caption, Source, SourceRecord, caption_from_bytes, caption_from_value)
from .hf_disk import HFDiskSource
from .imagefolder import ImageFolderSource
from .mds_shards import MDSSource
from .procedural import ShapesSource
from .webdataset_tars import WebDatasetSource

__all__ = ["CAPTION_FIELDS", "Caption", "HFDiskSource", "ImageFolderSource", "KEY_FIELDS", "MDSSource",
           "METADATA_FILES", "SKIP_REASONS", "SOURCES_VERSION", "SOURCE_KINDS", "ShapesSource", "Source",
           "SourceRecord", "TAR_SUFFIXES", "WebDatasetSource", "caption_from_bytes", "caption_from_value",
           "open_source", "parse_source_spec", "preprocess"]


_KIND_PREFIX = re.compile(r"^([A-Za-z][\w+.-]*):(.*)$")
_SPEC_HELP = ("Use 'shapes' (or 'shapes:train' / 'shapes:val'), an image folder, a .tar shard or a folder "
              "of shards, a folder written by Dataset.save_to_disk, or an MDS folder (index.json); force a kind "
              "with a prefix, e.g. 'imagefolder:PATH', 'webdataset:PATH', 'hf_disk:PATH', 'mds:PATH'.")
_OPTIONS = {
    "shapes": {"n", "resolution", "split", "seed", "template_weights"},
    "imagefolder": set(),
    "webdataset": set(),
    "hf_disk": {"key_column", "split"},
    "mds": set(),
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
    if (path / "index.json").is_file() or any(path.glob("*/index.json")):
        return "mds"
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
            or a folder of shards; a folder written by ``Dataset.save_to_disk``; an MDS folder. Prefix a
            path with ``imagefolder:``, ``webdataset:``, ``hf_disk:`` or ``mds:`` to force the kind.
        image_column: image column of a saved dataset (``hf_disk``) or of MDS shards (default there: the
            first of jpg, jpeg, png, image, webp).
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
    if kind == "mds":
        return MDSSource(target, image_column=None if image_column == "image" else image_column,
                         caption_column=caption_column, min_side=min_side, limit=limit)
    return HFDiskSource(target, image_column=image_column, caption_column=caption_column,
                        min_side=min_side, limit=limit, **options)
