"""The prepared-data format and its reader: what ``workbench prepare`` writes, and what training and eval read.

A prepared dataset is a ``datasets`` folder (``save_to_disk``) with one row per good sample::

    latents_<res>   fp16 (C, h, w)   one column per prepared resolution (pixels)
    caption_emb     fp16 (L, D)      text-encoder token states
    caption_mask    bool (L,)        1 for real tokens
    caption, source_key              str

plus ``prepared.json`` (``PreparedInfo``, written last: the folder is complete iff it exists),
``report.json`` and ``prepare_settings.json``. The one writer is ``workbench.data.prepared_writer``
(used by ``workbench prepare`` and ``workbench import-mds``)::

    ds = load_prepared("data/prepared/shapes32")   # datasets.Dataset, torch format
    info = PreparedInfo.read("data/prepared/shapes32")
    info.latent_shapes[32], info.caption_dim        # (3, 32, 32), 384
    codec = open_prepared_codec(info)               # the codec the latents were made with
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ..errors import InputError, MissingFileError

FORMAT_VERSION = 1                      # bump when the layout or column meaning changes
SETTINGS_FILE = "prepare_settings.json"
REPORT_FILE = "report.json"
INFO_FILE = "prepared.json"             # completion marker, written last
SHARDS_DIR = ".shards"
FINAL_TMP = ".final.tmp"                # the final dataset is saved here, then its files move into the folder


# ---------------------------------------------------------------------------------------------
#  Arrow helpers: numpy (N, *shape) <-> nested fixed-size lists, without Python loops
# ---------------------------------------------------------------------------------------------

def to_arrow(array: np.ndarray):
    """numpy ``(N, *shape)`` -> a pyarrow array of nested fixed-size lists (one row per item)."""
    import pyarrow as pa

    array = np.ascontiguousarray(array)
    out = pa.array(array.reshape(-1))
    for size in reversed(array.shape[1:]):
        out = pa.FixedSizeListArray.from_arrays(out, size)
    return out


def from_arrow(column, shape: tuple[int, ...]) -> np.ndarray:
    """A nested fixed-size-list column (Array or ChunkedArray) -> numpy ``(N, *shape)``.

    Zero-copy for a single chunk of a numeric type; bools (bit-packed in Arrow) are copied.
    """
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    values = column.storage if isinstance(column.type, pa.ExtensionType) else column   # datasets ArrayND
    while pa.types.is_fixed_size_list(values.type) or pa.types.is_list(values.type):
        values = values.flatten()                # honours slice offsets
    flat = values.to_numpy(zero_copy_only=not pa.types.is_boolean(values.type))
    return flat.reshape(len(column), *shape)


def read_json(path: Path) -> Any:
    """The JSON value in the file ``path``."""
    with open(path) as f:
        return json.load(f)


@contextmanager
def quiet_datasets():
    """Silence ``datasets``' own progress bars (map, save) while we show ours."""
    from datasets.utils import logging as ds_logging

    enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            ds_logging.enable_progress_bar()


def save_into(out: Path, dataset) -> None:
    """Save ``dataset`` (a ``datasets.Dataset``) into the folder ``out`` itself, beside the files already there.

    It is saved in ``out/.final.tmp`` and its files are then moved up; a dataset with no rows is still one file.
    """
    import shutil

    tmp = out / FINAL_TMP
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_datasets():
        dataset.save_to_disk(str(tmp), num_shards=1 if len(dataset) == 0 else None)
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    shutil.rmtree(tmp, ignore_errors=True)


def parse_resolutions(resolutions: int | str | Iterable[int]) -> tuple[int, ...]:
    """``32`` / ``"32,64"`` / ``(64, 32)`` -> ``(32, 64)``: sorted, unique, positive ints."""
    if isinstance(resolutions, str):
        parts = [p.strip() for p in resolutions.split(",") if p.strip()]
        try:
            resolutions = [int(p) for p in parts]
        except ValueError:
            raise InputError(f"resolutions {resolutions!r} must be comma-separated integers, e.g. 32,64") from None
    elif isinstance(resolutions, (int, np.integer)):
        resolutions = [int(resolutions)]
    out = sorted({int(r) for r in resolutions})
    if not out or out[0] <= 0 or any(int(r) != r for r in resolutions):
        raise InputError(f"resolutions must be one or more positive integers (pixels), got {resolutions!r}")
    return tuple(out)


@dataclass(frozen=True)
class PreparedInfo:
    """Metadata of a complete prepared dataset, read from ``OUT/prepared.json``.

    Example::

        info = PreparedInfo.read("data/prepared/shapes32")
        info.resolutions, info.channels, info.caption_length, info.caption_dim   # (32,), 3, 77, 384
        info.latent_shapes[32]                                                   # (3, 32, 32)
    """

    path: str
    num_rows: int
    resolutions: tuple[int, ...]
    latent_shapes: dict[int, tuple[int, int, int]]
    channels: int
    caption_length: int
    caption_dim: int
    codec: dict
    text_encoder: dict
    source: dict
    fingerprint: str
    format_version: int = FORMAT_VERSION

    @classmethod
    def read(cls, path: str | os.PathLike) -> PreparedInfo:
        """Read and check ``path/prepared.json``; raise ``FileNotFoundError`` / ``ValueError`` clearly."""
        p = Path(path).expanduser()
        if not p.is_dir():
            raise MissingFileError(f"prepared dataset folder {str(p)!r} does not exist (looked in {p.absolute()}); "
                                   f"prepare it first: run notebooks/01_prepare_data.ipynb from the same folder, or "
                                   f"`workbench prepare --source shapes --out {p}`")
        marker = p / INFO_FILE
        if not marker.is_file():
            partial = (p / SHARDS_DIR).is_dir() or (p / SETTINGS_FILE).is_file()
            why = ("a prepare run there has not finished: rerun the same prepare command to resume it"
                   if partial else "it was not written by workbench prepare")
            raise InputError(f"{str(p)!r} is not a complete prepared dataset (no {INFO_FILE}): {why}")
        try:
            d = read_json(marker)
            version = int(d["format_version"])
            if version != FORMAT_VERSION:
                raise InputError(f"format version {version}, this workbench reads {FORMAT_VERSION}; re-run prepare")
            return cls(
                path=str(p), num_rows=int(d["num_rows"]), resolutions=tuple(int(r) for r in d["resolutions"]),
                latent_shapes={int(k): tuple(v) for k, v in d["latent_shapes"].items()},
                channels=int(d["channels"]), caption_length=int(d["caption_length"]),
                caption_dim=int(d["caption_dim"]), codec=d["codec"], text_encoder=d["text_encoder"],
                source=d["source"], fingerprint=d["fingerprint"], format_version=version)
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise InputError(f"{marker} is damaged ({type(e).__name__}: {e}); delete {str(p)!r} and "
                             "prepare again") from e

    def to_json(self) -> dict:
        """JSON-able dict (the content of ``prepared.json``)."""
        d = asdict(self)
        d["latent_shapes"] = {str(k): list(v) for k, v in self.latent_shapes.items()}
        d["resolutions"] = list(self.resolutions)
        d.pop("path")
        return d

    def column(self, resolution: int) -> str:
        """Name of the latents column for ``resolution``; a clear error when it was not prepared."""
        if int(resolution) not in self.resolutions:
            raise InputError(f"resolution {resolution} was not prepared in {self.path!r}: it has "
                             f"{', '.join(map(str, self.resolutions))}; prepare it with --resolutions")
        return f"latents_{int(resolution)}"


def open_prepared_codec(info: PreparedInfo, **kw):
    """The latent codec a prepared dataset was made with (to decode samples into images)."""
    from .codecs import codec_spec, open_codec

    return open_codec(codec_spec(info.codec), **kw)


def open_prepared_text_encoder(info: PreparedInfo, **kw):
    """The text encoder a prepared dataset was made with, with the same max length and padding mode."""
    from .text import open_text_encoder, text_spec

    text = info.text_encoder
    return open_text_encoder(text_spec(text), max_length=text["max_length"],
                             trim_padding=text.get("trim_padding", False), **kw)


def load_prepared(path: str | os.PathLike, format: str | None = "torch"):
    """Open a complete prepared dataset as a memory-mapped ``datasets.Dataset``.

    ``format`` is passed to ``Dataset.with_format`` (``"torch"``, ``"numpy"`` or None for Python
    objects); ``datasets`` returns fp16 columns as float32 in the torch / numpy formats. Raises a
    clear error when ``path`` is missing, unfinished or not a prepared dataset.

    Example::

        ds = load_prepared("data/prepared/shapes32")
        row = ds[0]
        row["latents_32"].shape, row["caption_emb"].shape, row["caption"]   # (3, 32, 32), (77, 384), 'a red circle'
    """
    import datasets

    info = PreparedInfo.read(path)
    with quiet_datasets():
        ds = datasets.load_from_disk(info.path)
    if len(ds) != info.num_rows:
        raise InputError(f"{info.path!r} holds {len(ds)} rows but {INFO_FILE} says {info.num_rows}: the folder "
                         "was modified; delete it and prepare again")
    return ds.with_format(format) if format else ds


@dataclass
class PrepareReport:
    """What a ``prepare`` run did; ``data`` is the full ``report.json`` content.

    ``skipped`` counts skipped records by reason; ``skipped_keys`` lists ``{key, detail}`` per
    reason. ``resumed_from`` is the first source record this run processed (0: a fresh run).
    ``nothing_to_do`` is True when the folder was already complete with the same settings.
    """

    out: str
    seen: int
    written: int
    skipped: dict[str, int]
    skipped_keys: dict[str, list[dict]]
    elapsed_s: float
    resumed_from: int = 0
    nothing_to_do: bool = False
    data: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict, nothing_to_do: bool = False) -> PrepareReport:
        """Build from a ``report.json`` dict."""
        counts = data["counts"]
        return cls(out=data["out"], seen=counts["seen"], written=counts["written"],
                   skipped=dict(counts["skipped_by_reason"]), skipped_keys=data["skipped"],
                   elapsed_s=data["elapsed_s"], resumed_from=data.get("resumed_from", 0),
                   nothing_to_do=nothing_to_do, data=data)

    def __str__(self) -> str:
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        head = "nothing to do: already complete. " if self.nothing_to_do else ""
        resumed = f", resumed after record {self.resumed_from}" if self.resumed_from else ""
        return (f"{head}{self.out}: seen {self.seen}, written {self.written}, skipped "
                f"{sum(self.skipped.values())} ({skipped}) in {self.elapsed_s:.1f}s{resumed}")

