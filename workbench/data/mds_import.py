"""``import_mds``: the paper's precomputed MDS data as a prepared dataset (``workbench import-mds``).

The official precompute's columns (``workbench.data.mds_reader``) are ``caption``,
``<caption>_latents`` (fp16 token states) and ``latents_<resolution>`` (fp16 VAE latents, already
scaled). Each MDS shard becomes one part of ``PreparedWriter`` (the writer ``workbench prepare``
uses too), so an interrupted import resumes after the last complete shard and the folder, its
``report.json`` and ``prepared.json`` look like any other prepared dataset::

    import_mds("coco2014/mds_latents_sdxl1_dfnclipH14", "data/prepared/coco",
               vae="/models/sdxl-vae", text_encoder="/models/dfn5b-clip-h14")

The caption mask of imported rows is all ones: the official model attends to all 77 states.
"""

from __future__ import annotations

import os
import re
import time

import numpy as np

from ..io import fingerprint
from .mds_reader import MDSError, MDSReader
from .prepared_format import FORMAT_VERSION, PreparedInfo, to_arrow
from .prepared_writer import PreparedWriter, Skips

LATENT_COLUMN = re.compile(r"^latents_(\d+)$")


def import_mds(src: str | os.PathLike, out: str | os.PathLike, *, vae: str | os.PathLike,
               text_encoder: str | os.PathLike, caption_key: str = "caption", progress: bool = True) -> PreparedInfo:
    """Write the MDS dataset ``src`` as a prepared dataset ``out``; resumable shard by shard. Returns its PreparedInfo.

    ``vae`` and ``text_encoder`` are the local folders the latents and caption states were made with
    (the SDXL VAE and DFN5B CLIP for the paper's data): they are recorded for decoding and sampling,
    and every row is checked against their channels, downsample and width.
    """
    from tqdm.auto import tqdm

    from .codecs import open_codec
    from .text import open_text_encoder

    reader = MDSReader(src)
    codec, encoder = open_codec(f"vae:{vae}", device="cpu"), open_text_encoder(str(text_encoder), device="cpu")
    resolutions = sorted(int(m.group(1)) for c in reader.columns if (m := LATENT_COLUMN.match(c)))
    needed = {caption_key, f"{caption_key}_latents"}
    if not resolutions or not needed <= set(reader.columns):
        raise MDSError(f"{reader.path}: columns {sorted(reader.columns)}; expected {sorted(needed)} and "
                       f"latents_<resolution> columns, as the paper's precompute writes")
    shapes = {r: (codec.channels, codec.latent_size(r), codec.latent_size(r)) for r in resolutions}
    settings = {"source": {"kind": "mds", "path": str(reader.path.resolve()), "samples": len(reader),
                           "index": reader.fingerprint()},
                "codec": codec.describe(), "text_encoder": encoder.describe(), "resolutions": resolutions,
                "format_version": FORMAT_VERSION}
    settings["fingerprint"] = fingerprint(settings)
    writer = PreparedWriter(out, settings, latent_shapes=shapes, caption_shape=(encoder.max_length, encoder.dim))
    if writer.is_complete():
        return PreparedInfo.read(writer.out)
    t0, position = time.perf_counter(), writer.begin()
    bar = tqdm(total=len(reader), initial=position, unit="row", desc="import-mds", disable=not progress,
               dynamic_ncols=True)
    for k, (name, first, end) in enumerate(reader.shard_spans()):
        if first >= position:
            _write_part(writer, first, end, name, reader.shard_rows(k), caption_key)
            bar.update(end - first)
    bar.close()
    report = writer.finish(resumed_from=position, elapsed_s=time.perf_counter() - t0, run={})
    if progress:
        print(f"imported {report.written} of {report.seen} rows into {writer.out} "
              f"({sum(report.skipped.values())} skipped: not finite)")
    return PreparedInfo.read(writer.out)


def _write_part(writer: PreparedWriter, first: int, end: int, shard: str, rows: list[dict], caption_key: str) -> None:
    """One MDS shard (samples ``first .. end - 1``) as one part of the prepared dataset."""
    import datasets
    import pyarrow as pa

    t0, (L, D) = time.perf_counter(), writer.caption_shape
    expected = {f"latents_{r}": s for r, s in writer.latent_shapes.items()} | {"caption_emb": (L, D)}   # -> shape
    sources = {f"latents_{r}": f"latents_{r}" for r in writer.latent_shapes} | {"caption_emb": f"{caption_key}_latents"}
    skips, arrays, captions, keys = Skips(), {column: [] for column in expected}, [], []
    for i, row in enumerate(rows):
        key = f"{shard}:{i}"
        values = {column: np.frombuffer(row[sources[column]], np.float16) for column in expected}
        for column, shape in expected.items():
            if values[column].size != np.prod(shape):
                raise MDSError(f"{key}: {column} holds {values[column].size} fp16 values, the VAE and text encoder "
                               f"given make {shape}; pass the --vae / --text-encoder the data was made with")
        if not all(np.isfinite(v).all() for v in values.values()):
            skips.add("non_finite", key, "a latent or caption state is not finite")
            continue
        for column, shape in expected.items():
            arrays[column].append(values[column].reshape(shape))
        captions.append(row[caption_key])
        keys.append(key)
    if not keys:
        writer.write_part(first, end, None, skips, started_at=t0)
        return
    table = {column: to_arrow(np.stack(arrays[column])) for column in expected}
    table["caption_mask"] = to_arrow(np.ones((len(captions), L), bool))   # the official model sees all L
    table["caption"] = pa.array(captions, pa.string())
    table["source_key"] = pa.array(keys, pa.string())
    writer.write_part(first, end, datasets.Dataset(pa.table(table)), skips, started_at=t0)
