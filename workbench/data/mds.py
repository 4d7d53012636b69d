"""The paper's precomputed data: MosaicML Streaming (MDS) shards, read directly and imported as prepared data.

The official precompute writes one MDS folder per process (``index.json`` + ``shard.NNNNN.mds``)
with the columns ``caption`` (str), ``caption_latents`` (fp16 bytes, 77 x 1024 DFN5B token states)
and ``latents_256`` / ``latents_512`` (fp16 bytes, SDXL-VAE latents already multiplied by the VAE's
scaling factor). ``MDSReader`` reads that format without the ``mosaicml-streaming`` package (which
pulls torchvision and cloud SDKs); ``import_mds`` turns it into a prepared dataset that training
reads like any other (``workbench import-mds``). MDS folders of images and captions are also a
``workbench prepare`` source (``workbench.data.sources.MDSSource``)::

    rows = MDSReader("coco2014/mds_latents_sdxl1_dfnclipH14")
    rows[0]["caption"], len(rows)
    import_mds("coco2014/mds_latents_sdxl1_dfnclipH14", "data/prepared/coco",
               vae="/models/sdxl-vae", text_encoder="/models/dfn5b-clip-h14")

Shards must be uncompressed (the official precompute's ``compression=None``). The caption mask of
imported rows is all ones: the official model attends to all 77 states.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from bisect import bisect_right
from io import BytesIO
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..io import atomic_write_json, fingerprint

INDEX = "index.json"
SCALARS = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float16", "float32", "float64")
LATENT_COLUMN = re.compile(r"^latents_(\d+)$")
SKIPPED = "skipped.json"                      # per imported part: rows left out (not finite)


def _image(data: bytes):
    from PIL import Image

    return Image.open(BytesIO(data)).convert("RGB")


DECODERS = {
    "bytes": lambda b: b, "str": lambda b: b.decode("utf-8"), "int": lambda b: int(np.frombuffer(b, np.int64)[0]),
    "str_int": lambda b: int(b.decode()), "str_float": lambda b: float(b.decode()), "json": json.loads,
    "jpeg": _image, "png": _image,
    **{name: (lambda b, dt=name: np.frombuffer(b, dt)[0].item()) for name in SCALARS},
}


class MDSError(ValueError):
    """An MDS folder this reader cannot read; the message names the file and the fix."""


class MDSReader:
    """Random access to the samples of an MDS folder (one ``index.json``, or one per sub-folder).

    ``reader[i]`` is a dict of decoded columns; ``len(reader)`` counts samples; ``columns`` maps
    column names to MDS encodings; ``shards()`` yields ``(name, rows)`` one shard at a time.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise FileNotFoundError(f"no MDS folder at {self.path}: expected a folder with {INDEX} and "
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

    def shards(self) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """``(shard name, decoded rows)`` for every shard in order."""
        for k, shard in enumerate(self.shard_info):
            name = str(shard["file"].relative_to(self.path))
            yield name, [self._row(k, i) for i in range(shard["samples"])]


# ---------------------------------------------------------------------------------------------
#  Import into the prepared format
# ---------------------------------------------------------------------------------------------

def import_mds(src: str | os.PathLike, out: str | os.PathLike, *, vae: str | os.PathLike,
               text_encoder: str | os.PathLike, caption_key: str = "caption", progress: bool = True):
    """Write the MDS dataset ``src`` as a prepared dataset ``out``; resumable shard by shard. Returns its PreparedInfo.

    ``vae`` and ``text_encoder`` are the local folders the latents and caption states were made with
    (the SDXL VAE and DFN5B CLIP for the paper's data): they are recorded for decoding and sampling,
    and every row is checked against their channels, downsample and width.
    """
    from tqdm.auto import tqdm

    from .codecs import open_codec
    from .prepare import check_out_folder
    from .prepared import FORMAT_VERSION, SETTINGS_FILE, SHARDS_DIR, PreparedInfo
    from .text import open_text_encoder

    reader, out = MDSReader(src), Path(out).expanduser()
    codec, encoder = open_codec(f"vae:{vae}", device="cpu"), open_text_encoder(str(text_encoder), device="cpu")
    resolutions = sorted(int(m.group(1)) for c in reader.columns if (m := LATENT_COLUMN.match(c)))
    needed = {caption_key, f"{caption_key}_latents"}
    if not resolutions or not needed <= set(reader.columns):
        raise MDSError(f"{reader.path}: columns {sorted(reader.columns)}; expected {sorted(needed)} and "
                       f"latents_<resolution> columns, as the paper's precompute writes")
    shapes = {r: (codec.channels, codec.latent_size(r), codec.latent_size(r)) for r in resolutions}
    L, D = encoder.max_length, encoder.dim
    settings = {"source": {"kind": "mds", "path": str(reader.path.resolve()), "samples": len(reader),
                           "index": reader.fingerprint()},
                "codec": codec.describe(), "text_encoder": encoder.describe(), "resolutions": resolutions,
                "format_version": FORMAT_VERSION}
    settings["fingerprint"] = fingerprint(settings)
    if check_out_folder(out, settings):
        return PreparedInfo.read(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / SETTINGS_FILE, settings)
    parts, t0 = [], time.perf_counter()
    bar = tqdm(total=len(reader), unit="row", desc="import-mds", disable=not progress, dynamic_ncols=True)
    for k, (name, rows) in enumerate(reader.shards()):
        part = out / SHARDS_DIR / f"mds_{k:06d}"
        if not part.is_dir():
            _write_part(part, name, rows, shapes, (L, D), caption_key)
        parts.append(part)
        bar.update(len(rows))
    bar.close()
    skipped = [item for p in parts for item in json.loads((p / SKIPPED).read_text())]
    return _finish(out, parts, settings, shapes, (L, D), skipped, time.perf_counter() - t0, progress)


def _write_part(part: Path, shard: str, rows: list[dict], shapes: dict, caption_shape: tuple[int, int],
                caption_key: str) -> None:
    """One MDS shard as one prepared-dataset part (written aside, then renamed into place)."""
    import datasets
    import pyarrow as pa

    from .prepared import _quiet_datasets, to_arrow

    L, D = caption_shape
    expected = {f"latents_{r}": s for r, s in shapes.items()} | {"caption_emb": (L, D)}   # column -> row shape
    sources = {f"latents_{r}": f"latents_{r}" for r in shapes} | {"caption_emb": f"{caption_key}_latents"}
    skipped, arrays = [], {column: [] for column in expected}
    captions, keys = [], []
    for i, row in enumerate(rows):
        key = f"{shard}:{i}"
        values = {column: np.frombuffer(row[sources[column]], np.float16) for column in expected}
        for column, shape in expected.items():
            if values[column].size != np.prod(shape):
                raise MDSError(f"{key}: {column} holds {values[column].size} fp16 values, the VAE and text encoder "
                               f"given make {shape}; pass the --vae / --text-encoder the data was made with")
        if not all(np.isfinite(v).all() for v in values.values()):
            skipped.append({"key": key, "detail": "a latent or caption state is not finite"})
            continue
        for column, shape in expected.items():
            arrays[column].append(values[column].reshape(shape))
        captions.append(row[caption_key])
        keys.append(key)
    table = {column: to_arrow(np.stack(arrays[column]) if arrays[column] else np.zeros((0, *shape), np.float16))
             for column, shape in expected.items()}
    table["caption_mask"] = to_arrow(np.ones((len(captions), L), bool))   # the official model sees all L
    table["caption"] = pa.array(captions, pa.string())
    table["source_key"] = pa.array(keys, pa.string())
    tmp = part.with_name(part.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with _quiet_datasets():
        datasets.Dataset(pa.table(table)).save_to_disk(str(tmp))
    atomic_write_json(tmp / SKIPPED, skipped)
    os.replace(tmp, part)                                   # the part is complete now


def _finish(out: Path, parts: list[Path], settings: dict, shapes: dict, caption_shape: tuple[int, int],
            skipped: list, elapsed: float, progress: bool):
    """Concatenate the parts into ``out``; write report.json, then prepared.json (the completion marker)."""
    import datasets

    from .prepared import INFO_FILE, REPORT_FILE, SHARDS_DIR, PreparedInfo, _quiet_datasets, save_into

    with _quiet_datasets():
        final = datasets.concatenate_datasets([datasets.load_from_disk(str(p)) for p in parts])
    save_into(out, final)
    if len(final) == 0:
        raise MDSError(f"0 usable rows in {settings['source']['path']}: {skipped[:3]}")
    atomic_write_json(out / REPORT_FILE, {
        "complete": True, "out": str(out), "fingerprint": settings["fingerprint"],
        "counts": {"seen": settings["source"]["samples"], "written": len(final), "skipped": len(skipped),
                   "skipped_by_reason": {"non_finite": len(skipped)} if skipped else {}},
        "skipped": {"non_finite": skipped} if skipped else {}, "source": settings["source"],
        "codec": settings["codec"], "text_encoder": settings["text_encoder"], "resolutions": settings["resolutions"],
        "latent_shapes": {str(r): list(s) for r, s in shapes.items()}, "caption_shape": list(caption_shape),
        "elapsed_s": round(elapsed, 3)})
    info = PreparedInfo(path=str(out), num_rows=len(final), resolutions=tuple(settings["resolutions"]),
                        latent_shapes=shapes, channels=settings["codec"]["channels"], caption_length=caption_shape[0],
                        caption_dim=caption_shape[1], codec=settings["codec"], text_encoder=settings["text_encoder"],
                        source=settings["source"], fingerprint=settings["fingerprint"])
    atomic_write_json(out / INFO_FILE, info.to_json())
    shutil.rmtree(out / SHARDS_DIR, ignore_errors=True)
    if progress:
        print(f"imported {len(final)} of {settings['source']['samples']} rows into {out} "
              f"({len(skipped)} skipped: not finite)")
    return info
