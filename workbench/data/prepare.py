"""``workbench prepare``: precompute latents and caption embeddings of a source into a prepared dataset, resumably.

``prepare`` reads a source (``workbench.data.sources``), preprocesses every good image at each
requested resolution, encodes it with a latent codec and its caption with a text encoder, and
writes them with ``PreparedWriter`` (``workbench.data.prepared_writer``) in the format of
``workbench.data.prepared_format`` that ``PreparedLoader`` streams during training::

    report = prepare("shapes", "data/prepared/shapes32", resolutions=(32,), limit=2000)
    print(report)                                  # seen 2000, written 2000, skipped 0 ...

Output folder ``OUT``::

    OUT/prepare_settings.json   the settings and their fingerprint (written before any work)
    OUT/.shards/shard_<start>/   finished shards while a run is under way (removed at the end)
    OUT/data-*.arrow, state.json, dataset_info.json    the final dataset (load_from_disk(OUT))
    OUT/report.json             counts, skipped keys by reason, codec / text encoder, timings
    OUT/prepared.json           PreparedInfo; written last: the folder is complete iff it exists

Design: why shards and not ``Dataset.map``'s cache. ``map`` writes its cache file in one go at the
end (temp file + rename), so a run killed at 90 % keeps nothing. Instead the records are cut
into fixed-size shards of ``shard_size`` *source records* (skipped ones included, so shard
boundaries depend only on the source). Each shard is encoded with ``Dataset.map(batched=True)``
(Arrow batches in, Arrow batches out), saved with ``save_to_disk`` into ``shard_<start>.tmp`` and
renamed into place (``PreparedWriter.write_part``), so a SIGKILL leaves only complete shards. A
rerun with the same settings keeps them, continues from the first record after the last complete shard
(``source.records(start=...)``) and finally concatenates the shards (``concatenate_datasets``).
Every valid sample is therefore present exactly once. Keys already written are remembered
across the resume, so a key repeated in the source is written once.

The VAE posterior noise is drawn from a generator seeded by ``(seed, shard start)`` and caption
embeddings are deduplicated within a shard, so a resumed run writes the same bits as an
uninterrupted one with the same command (``shard_size`` / ``batch_size`` only change which
posterior noise is drawn, never the validity of the data).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from ..io import fingerprint
from .prepared_format import FORMAT_VERSION, PrepareReport, from_arrow, parse_resolutions, quiet_datasets, to_arrow
from .prepared_writer import PreparedWriter, Skips
from ..errors import InputError

PREPARE_SKIP_REASONS = {                # reasons added by prepare on top of sources.SKIP_REASONS
    "duplicate_key": "the key was already written earlier in this prepared dataset",
    "preprocess_error": "resizing / cropping the decoded image failed",
    "non_finite": "a latent or caption embedding is not finite in fp16 (overflow or NaN)",
}
_PROBLEM = "problem"                    # a column only while encoding: why a row is dropped (null: kept)


def _shard_seed(seed: int, start: int) -> int:
    """A 63-bit generator seed for the shard starting at source record ``start``."""
    digest = hashlib.sha256(f"workbench-prepare:{seed}:{start}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class _Row(NamedTuple):
    """One good record, preprocessed: ``pixels[R]`` is its ``(R, R, 3)`` uint8 image at resolution ``R``."""

    key: str
    caption: str
    pixels: dict[int, np.ndarray]


class _Preparer:
    """One prepare run over an output folder. Use ``prepare()``."""

    def __init__(self, src, codec, encoder, resolutions, writer: PreparedWriter, *, seed: int, batch_size: int,
                 shard_size: int, progress: bool):
        self.src, self.codec, self.encoder, self.resolutions, self.writer = src, codec, encoder, resolutions, writer
        self.seed, self.batch_size, self.shard_size, self.progress = seed, batch_size, shard_size, progress

    # -- encoding --------------------------------------------------------------------------------

    def _encode_fn(self, generator):
        """The batched ``Dataset.map`` function: an Arrow batch of pixels -> an Arrow batch of latents.

        Every row comes out; a row whose latents or caption states are not finite in fp16 says why in
        the ``problem`` column (null for good rows), and ``write_shard`` leaves it out.
        """
        import pyarrow as pa

        cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}             # caption -> (states, mask), per shard

        def encode(batch: pa.Table) -> pa.Table:
            n, cols = batch.num_rows, {}
            for r in self.resolutions:
                pixels = from_arrow(batch.column(f"pixels_{r}"), (r, r, 3)).copy()        # (b, R, R, 3) uint8
                lat = self.codec.encode(pixels, generator=generator).numpy()             # (b, C, h, w) float32
                with np.errstate(over="ignore"):                                          # checked below
                    cols[f"latents_{r}"] = lat.astype(np.float16)                         # (b, C, h, w)
            captions = batch.column("caption").to_pylist()
            new = [c for c in dict.fromkeys(captions) if c not in cache]                  # dedupe
            if new:
                states, masks = self.encoder.encode(new)                                  # (u, L, D), (u, L)
                with np.errstate(over="ignore"):
                    states16 = states.numpy().astype(np.float16)                          # (u, L, D)
                cache.update({c: (s, m) for c, s, m in zip(new, states16, masks.numpy())})
            cols["caption_emb"] = np.stack([cache[c][0] for c in captions])              # (b, L, D) fp16
            finite = {name: np.isfinite(a).reshape(n, -1).all(axis=1) for name, a in cols.items()}
            problems = [", ".join(name for name, ok in finite.items() if not ok[i]) or None for i in range(n)]
            table = {name: to_arrow(a) for name, a in cols.items()}
            table["caption_mask"] = to_arrow(np.stack([cache[c][1] for c in captions]).astype(bool))   # (b, L)
            table["caption"] = batch.column("caption")
            table["source_key"] = batch.column("source_key")
            table[_PROBLEM] = pa.array([p and f"{p} not finite in fp16" for p in problems], pa.string())
            return pa.table(table)

        return encode

    def _encode_shard(self, start: int, rows: list[_Row]):
        """The encoded rows of one shard as ``(datasets.Dataset, [(key, why dropped)], captions truncated)``."""
        import datasets
        import pyarrow as pa
        import pyarrow.compute as pc
        import torch

        table = {f"pixels_{r}": to_arrow(np.stack([row.pixels[r] for row in rows])) for r in self.resolutions}
        table["caption"] = pa.array([row.caption for row in rows], pa.string())
        table["source_key"] = pa.array([row.key for row in rows], pa.string())
        ds = datasets.Dataset(pa.table(table)).with_format("arrow")
        generator = torch.Generator().manual_seed(_shard_seed(self.seed, start))
        with quiet_datasets():
            encoded = ds.map(self._encode_fn(generator), batched=True, batch_size=self.batch_size,
                             remove_columns=ds.column_names, keep_in_memory=True, load_from_cache_file=False,
                             new_fingerprint=f"workbench-prepare-{self.writer.settings['fingerprint']}-{start}")
        out = encoded.data.table
        dropped = [(k, p) for k, p in zip(out.column("source_key").to_pylist(), out.column(_PROBLEM).to_pylist()) if p]
        kept = out.filter(pc.is_null(out.column(_PROBLEM))).drop_columns([_PROBLEM])
        count_truncated = getattr(self.encoder, "count_truncated", None)
        truncated = count_truncated(list(dict.fromkeys(row.caption for row in rows))) if count_truncated else 0
        return datasets.Dataset(kept), dropped, truncated

    def write_shard(self, start: int, end: int, rows: list[_Row], skips: Skips, t0: float) -> dict:
        """Encode the buffered ``rows`` of records ``start..end-1`` and save them as one complete shard."""
        encoded, truncated = None, 0
        if rows:
            encoded, dropped, truncated = self._encode_shard(start, rows)
            for key, detail in dropped:
                skips.add("non_finite", key, detail)
        return self.writer.write_part(start, end, encoded, skips, captions_truncated=truncated, started_at=t0)

    # -- the run ---------------------------------------------------------------------------------

    def _row(self, rec, keys: set[str], skips: Skips) -> _Row | None:
        """The preprocessed row of a source record, or None (and the reason in ``skips``)."""
        from .sources import preprocess

        if not rec.ok:
            skips.add(rec.skip_reason, rec.key, rec.detail, rec.file)
        elif rec.key in keys:
            skips.add("duplicate_key", rec.key, "key already written earlier in this prepared dataset")
        else:
            try:
                return _Row(rec.key, rec.caption, {r: preprocess(rec.image, r) for r in self.resolutions})
            except Exception as e:  # noqa: BLE001 - one bad sample never stops a run
                skips.add("preprocess_error", rec.key, f"{type(e).__name__}: {e}")
        return None

    def run(self) -> PrepareReport:
        """Resume after the last complete shard, encode the rest shard by shard, then finish the folder."""
        from tqdm.auto import tqdm

        t_run = time.perf_counter()
        position = self.writer.begin()
        keys = self.writer.written_keys()
        if position and self.progress:
            print(f"resuming {self.writer.out} after record {position} ({len(self.writer.parts)} complete shards, "
                  f"{len(keys)} rows)")
        bar = tqdm(total=self.src.size_hint, initial=position, unit="img", desc="prepare", disable=not self.progress,
                   dynamic_ncols=True)
        start, index, rows, skips, t0 = position, position, [], Skips(), time.perf_counter()
        for rec in self.src.records(start=position):
            index += 1
            bar.update(1)
            row = self._row(rec, keys, skips)
            if row is not None:
                keys.add(row.key)
                rows.append(row)
            if index - start >= self.shard_size:
                self.write_shard(start, index, rows, skips, t0)
                start, rows, skips, t0 = index, [], Skips(), time.perf_counter()
        if index > start:
            self.write_shard(start, index, rows, skips, t0)
        bar.close()
        run = {"seed": self.seed, "shard_size": self.shard_size, "batch_size": self.batch_size}
        report = self.writer.finish(resumed_from=position, elapsed_s=time.perf_counter() - t_run, run=run)
        if self.progress:
            print(report)
        return report


# ---------------------------------------------------------------------------------------------
#  prepare(): checks before any work, then the run
# ---------------------------------------------------------------------------------------------

def _reraise(err: Exception, prefix: str):
    """The same exception type with ``prefix`` in front of the message."""
    try:
        new = type(err)(f"{prefix}{err}")
    except Exception:  # noqa: BLE001 - exotic exception signatures
        new = InputError(f"{prefix}{err}")
    raise new from err


def _open_source(source, resolutions: tuple[int, ...], **settings: Any):
    """The source, with the kind's defaults for these resolutions (``Source.option_defaults``) under the options."""
    from . import sources

    kind, _ = sources.parse_source_spec(source)              # a missing path fails here
    try:
        return sources.open_source(source, **{**sources.source_class(kind).option_defaults(resolutions), **settings})
    except sources.SourceOptionError:
        raise
    except TypeError as e:                                  # an option value of the wrong type
        raise sources.SourceOptionError(str(e)) from e


def _open_models(codec, text_encoder, resolutions: tuple[int, ...], codec_options, text_encoder_options):
    """The codec and text encoder (opened from their specs), checked to produce every resolution."""
    from .codecs import open_codec
    from .text import open_text_encoder

    if isinstance(codec, str):
        try:
            codec = open_codec(codec, **dict(codec_options or {}))
        except (OSError, ValueError) as e:
            _reraise(e, f"--codec {codec!r}: ")
    for r in resolutions:
        try:
            codec.latent_size(r)
        except ValueError as e:
            _reraise(e, "--resolutions: ")
    if isinstance(text_encoder, str):
        try:
            text_encoder = open_text_encoder(text_encoder, **dict(text_encoder_options or {}))
        except (OSError, ValueError) as e:
            _reraise(e, f"--text-encoder {text_encoder!r}: ")
    return codec, text_encoder


def prepare_settings(src, codec, text_encoder, resolutions: tuple[int, ...], limit: int | None, seed: int) -> dict:
    """The settings a prepared folder is made with, and their ``fingerprint`` (``prepare_settings.json``)."""
    settings = {
        "format_version": FORMAT_VERSION,
        "source": src.describe(),
        "codec": codec.describe(),
        "text_encoder": text_encoder.describe(),
        "resolutions": list(resolutions),
        "limit": limit,
        "seed": int(seed),
    }
    return {**settings, "fingerprint": fingerprint(settings)}


def prepare(
    source: str | os.PathLike = "shapes",        # "shapes", "shapes:val", image folder, tar shards, saved dataset
    out: str | os.PathLike = "data/prepared/shapes",  # output folder (a datasets save_to_disk folder)
    codec: Any = "pixel",                        # "pixel", "vae:PATH", or a codec object
    text_encoder: Any = "default",               # "default" (MiniLM-L6), a local folder, or a TextEncoder
    resolutions: int | str | Iterable[int] = (32,),  # square sizes to prepare, e.g. (32, 64) or "32,64"
    *,
    limit: int | None = None,                    # at most this many source records (skipped ones count)
    batch_size: int = 64,                        # rows per Dataset.map batch (codec + text encoder call)
    shard_size: int = 512,                       # source records per resumable shard
    min_side: int = 0,                           # skip images whose short side is smaller
    seed: int = 0,                               # seeds the VAE posterior noise (per shard)
    image_column: str | None = None,             # hf_disk / mds sources: image column (None: the kind's default)
    caption_column: str | None = None,           # caption column / field; None tries text, caption, ...
    codec_options: Mapping[str, Any] | None = None,         # open_codec kwargs (sample_posterior, device, ...)
    text_encoder_options: Mapping[str, Any] | None = None,  # open_text_encoder kwargs (max_length, ...)
    progress: bool = True,                       # tqdm bar and one-line messages
    **source_options: Any,                       # open_source options, e.g. n=5000, split="val" for shapes
) -> PrepareReport:
    """Precompute latents + caption embeddings of a source into ``out``; resumable, validated first.

    Everything that can make the run fail as a whole is checked before any work starts, with a
    message that names the problem and the fix: a missing source path, an unreadable codec or
    text encoder folder, a resolution the codec cannot produce, and an ``out`` folder that holds a
    prepared dataset (or unfinished shards) made with other settings. Bad samples never stop a
    run: they are skipped and listed by reason in ``out/report.json``.

    Rerunning the same call after a crash or a kill resumes after the last complete shard;
    rerunning it on a complete folder does nothing. A source kind may default some options for the
    resolutions prepared: the shapes scenes are rendered at the largest one unless ``resolution=``
    is passed.

    Returns a ``PrepareReport`` (also written to ``out/report.json``).

    Example::

        report = prepare("shapes", "data/prepared/shapes32", resolutions=(32,), limit=2000)
        report = prepare("photos/", "data/prepared/photos", codec="vae:/models/sdxl-vae",
                         text_encoder="/models/clip-vit-h-text", resolutions="256,512", min_side=256)
        report.skipped                # {'corrupt_image': 2, 'too_small': 5}
    """
    resolutions = parse_resolutions(resolutions)
    if batch_size < 1 or shard_size < 1:
        raise InputError(f"batch_size and shard_size must be >= 1, got {batch_size} and {shard_size}")
    src = _open_source(source, resolutions, image_column=image_column, caption_column=caption_column,
                       min_side=min_side, limit=limit, **source_options)
    codec, text_encoder = _open_models(codec, text_encoder, resolutions, codec_options, text_encoder_options)
    settings = prepare_settings(src, codec, text_encoder, resolutions, limit, seed)
    shapes = {r: (codec.channels, codec.latent_size(r), codec.latent_size(r)) for r in resolutions}
    writer = PreparedWriter(out, settings, latent_shapes=shapes, caption_shape=(text_encoder.max_length,
                                                                               text_encoder.dim))
    if writer.is_complete():
        report = writer.existing_report()
        if progress:
            print(f"nothing to do: {writer.out} already holds a complete prepared dataset with these settings "
                  f"({report.written} rows)")
        return report
    preparer = _Preparer(src, codec, text_encoder, resolutions, writer, seed=int(seed), batch_size=int(batch_size),
                         shard_size=int(shard_size), progress=progress)
    return preparer.run()
