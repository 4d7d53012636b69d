"""The MosaicML Streaming (MDS) format, read directly: ``MDSReader``.

The official precompute writes one MDS folder per process (``index.json`` + ``shard.NNNNN.mds``)
with the columns ``caption`` (str), ``caption_latents`` (fp16 bytes, 77 x 1024 DFN5B token states)
and ``latents_256`` / ``latents_512`` (fp16 bytes, SDXL-VAE latents already multiplied by the VAE's
scaling factor). ``MDSReader`` reads that format without the ``mosaicml-streaming`` package (which
pulls torchvision and cloud SDKs). ``workbench.data.mds_import`` turns it into a prepared dataset
(``workbench import-mds``); MDS folders of images and captions are a ``workbench prepare`` source
(``workbench.data.sources.MDSSource``)::

    rows = MDSReader("coco2014/mds_latents_sdxl1_dfnclipH14")
    rows[0]["caption"], len(rows)
    for k, (name, first, end) in enumerate(rows.shard_spans()):
        decoded = rows.shard_rows(k)                     # samples first .. end - 1

Shards must be uncompressed (the official precompute's ``compression=None``).
"""

from __future__ import annotations

import json
import os
from bisect import bisect_right
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

from ..io import fingerprint
from ..errors import InputError, MissingFileError

INDEX = "index.json"
SCALARS = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float16", "float32", "float64")


def _image(data: bytes):
    from PIL import Image

    return Image.open(BytesIO(data)).convert("RGB")


DECODERS = {
    "bytes": lambda b: b, "str": lambda b: b.decode("utf-8"), "int": lambda b: int(np.frombuffer(b, np.int64)[0]),
    "str_int": lambda b: int(b.decode()), "str_float": lambda b: float(b.decode()), "json": json.loads,
    "jpeg": _image, "png": _image,
    **{name: (lambda b, dt=name: np.frombuffer(b, dt)[0].item()) for name in SCALARS},
}


class MDSError(InputError):
    """An MDS folder this reader cannot read; the message names the file and the fix."""


class MDSReader:
    """Random access to the samples of an MDS folder (one ``index.json``, or one per sub-folder).

    ``reader[i]`` is a dict of decoded columns; ``len(reader)`` counts samples; ``columns`` maps
    column names to MDS encodings; ``shards()`` yields ``(name, rows)`` one shard at a time and
    ``shard_spans()`` / ``shard_rows(k)`` read one chosen shard.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise MissingFileError(f"no MDS folder at {self.path}: expected a folder with {INDEX} and "
                                    f"shard.NNNNN.mds files (the official precompute's --savedir)")
        indexes = [self.path / INDEX] if (self.path / INDEX).is_file() else sorted(self.path.glob(f"*/{INDEX}"))
        if not indexes:
            raise MDSError(f"{self.path} has no {INDEX}, nor sub-folders with one: not an MDS dataset")
        self.shard_info: list[dict] = []
        for index in indexes:
            try:
                shards = json.loads(index.read_text())["shards"]
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise MDSError(f"{index} is not an MDS index ({err}); copy it again from the source") from err
            for shard in shards:
                basename = (shard.get("raw_data") or {}).get("basename", "")
                self.shard_info.append({**shard, "file": index.parent / basename})
        self._check_shards()
        first = self.shard_info[0]
        self.columns = dict(zip(first["column_names"], first["column_encodings"]))
        self._starts = np.cumsum([0] + [s["samples"] for s in self.shard_info]).tolist()
        self._cache: tuple[int, bytes] | None = None

    def _check_shards(self) -> None:
        names = None
        for shard in self.shard_info:
            where = shard["file"]
            if shard.get("format") != "mds":
                raise MDSError(f"{where}: format {shard.get('format')!r}, this reader reads 'mds' shards")
            if shard.get("compression") or not shard.get("raw_data"):
                raise MDSError(f"{where}: compressed shards ({shard.get('compression')}) are not read here; write "
                               f"the data with MDSWriter(compression=None), as the paper's precompute does")
            bad = [e for e in shard["column_encodings"] if e not in DECODERS]
            if bad:
                raise MDSError(f"{where}: column encodings {bad} are not supported (pickled or ndarray columns); "
                               f"store arrays as 'bytes', as the paper's precompute does")
            if names is not None and shard["column_names"] != names:
                raise MDSError(f"{where}: columns {shard['column_names']} differ from the first shard's {names}")
            names = shard["column_names"]
            if not where.is_file():
                raise MDSError(f"shard {where} is listed in its {INDEX} but missing; copy it again")

    def __len__(self) -> int:
        return self._starts[-1]

    def fingerprint(self) -> str:
        """A hash of the shard list (files, sample counts, byte sizes): "the same data?" in one comparison."""
        return fingerprint([(str(s["file"]), s["samples"], s["raw_data"]) for s in self.shard_info])

    def _shard_bytes(self, k: int) -> bytes:
        if self._cache is None or self._cache[0] != k:
            data = self.shard_info[k]["file"].read_bytes()
            n = self.shard_info[k]["samples"]
            if len(data) < 4 * (n + 2) or int(np.frombuffer(data[:4], np.uint32)[0]) != n \
                    or int(np.frombuffer(data[4 * (n + 1): 4 * (n + 2)], np.uint32)[0]) != len(data):
                raise MDSError(f"shard {self.shard_info[k]['file']} is truncated or damaged ({len(data)} bytes for "
                               f"{n} samples); copy it again")
            self._cache = (k, data)
        return self._cache[1]

    def _decode(self, shard: dict, data: bytes, raw: frozenset = frozenset()) -> dict[str, Any]:
        sizes, pos = [], 0
        for size in shard["column_sizes"]:
            if size is None:
                size = int(np.frombuffer(data[pos: pos + 4], np.uint32)[0])
                pos += 4
            sizes.append(size)
        row = {}
        for name, encoding, size in zip(shard["column_names"], shard["column_encodings"], sizes):
            value = data[pos: pos + size]
            row[name] = value if name in raw else DECODERS[encoding](value)
            pos += size
        return row

    def _row(self, k: int, i: int, raw: frozenset = frozenset()) -> dict[str, Any]:
        data = self._shard_bytes(k)
        begin, end = np.frombuffer(data[4 * (1 + i): 4 * (3 + i)], np.uint32).tolist()
        return self._decode(self.shard_info[k], data[begin:end], raw)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get(index)

    def get(self, index: int, raw: frozenset | set = frozenset()) -> dict[str, Any]:
        """Sample ``index`` (negative counts from the end); columns named in ``raw`` stay undecoded bytes."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} of an MDS dataset with {len(self)} samples")
        index %= len(self)
        k = bisect_right(self._starts, index) - 1
        return self._row(k, index - self._starts[k], frozenset(raw))

    def shard_name(self, index: int) -> str:
        """``<shard file>:<row>`` of sample ``index``: a stable key."""
        k = bisect_right(self._starts, index) - 1
        return f"{self.shard_info[k]['file'].relative_to(self.path)}:{index - self._starts[k]}"

    def shard_spans(self) -> list[tuple[str, int, int]]:
        """``(shard name, first sample, end)`` of every shard in order; samples ``first .. end - 1`` are in it."""
        return [(str(shard["file"].relative_to(self.path)), self._starts[k], self._starts[k + 1])
                for k, shard in enumerate(self.shard_info)]

    def shard_rows(self, k: int) -> list[dict[str, Any]]:
        """The decoded rows of shard ``k`` (of ``shard_spans()``)."""
        return [self._row(k, i) for i in range(self.shard_info[k]["samples"])]

    def shards(self) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """``(shard name, decoded rows)`` for every shard in order."""
        for k, (name, _, _) in enumerate(self.shard_spans()):
            yield name, self.shard_rows(k)

