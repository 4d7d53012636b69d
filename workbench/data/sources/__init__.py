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

Each kind is one ``Source`` subclass registered with ``@register_source`` (``base``); the spec,
its help (``spec_help()``, ``source_options_help()``) and the option checks read that registry
(``spec``). A new kind is one file: docs/architecture.md, "Adding a data source".

Problems with the source as a whole (a missing path, an unsupported kind, a folder with no images,
a missing column) raise ``FileNotFoundError`` / ``ValueError`` in ``open_source``, before any work; a prefix naming
no registered kind is a ``ValueError`` listing the known kinds.

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

from ..images import preprocess
from .base import (CAPTION_FIELDS, COMMON_SETTINGS, KEY_FIELDS, METADATA_FILES, SKIP_REASONS, SOURCES_VERSION,
                   TAR_SUFFIXES, Caption, Source, SourceRecord, caption_field, caption_from_bytes, caption_from_value,
                   image_record, register_source, skip_record, source_class, source_kinds, stat_line, walk_files)
# The built-in kinds register on import, in this order (the order help and errors list them in).
from .procedural import ShapesSource
from .imagefolder import ImageFolderSource
from .webdataset_tars import WebDatasetSource
from .hf_disk import HFDiskSource
from .mds_shards import MDSSource
from .spec import SourceOptionError, open_source, parse_source_spec, source_options_help, spec_help

__all__ = ["CAPTION_FIELDS", "COMMON_SETTINGS", "Caption", "HFDiskSource", "ImageFolderSource", "KEY_FIELDS",
           "MDSSource", "METADATA_FILES", "SKIP_REASONS", "SOURCES_VERSION", "ShapesSource", "Source",
           "SourceOptionError", "SourceRecord", "TAR_SUFFIXES", "WebDatasetSource", "caption_field",
           "caption_from_bytes", "caption_from_value", "image_record", "open_source", "parse_source_spec",
           "preprocess", "register_source", "skip_record", "source_class", "source_kinds", "source_options_help",
           "spec_help", "stat_line", "walk_files"]
