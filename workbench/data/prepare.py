"""The writer of prepared data: precompute latents and caption embeddings into an Arrow dataset, resumably.

``prepare`` reads a source (``workbench.data.sources``), preprocesses every good image at each
requested resolution, encodes it with a latent codec and its caption with a text encoder, and
writes the format of ``workbench.data.prepared`` that ``PreparedLoader`` streams during training::

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
renamed into place, so a SIGKILL leaves only complete shards. A rerun with the same settings
keeps them, continues from the first record after the last complete shard
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
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import WorkbenchError
from ..io import atomic_write_json, fingerprint
from .prepared import (FORMAT_VERSION, INFO_FILE, REPORT_FILE, SETTINGS_FILE, SHARDS_DIR, PrepareReport, PreparedInfo,
                       _quiet_datasets, _read_json, from_arrow, parse_resolutions, save_into, to_arrow)

SHARD_META = "shard.json"
PREPARE_SKIP_REASONS = {                # reasons added by prepare on top of sources.SKIP_REASONS
    "duplicate_key": "the key was already written earlier in this prepared dataset",
    "preprocess_error": "resizing / cropping the decoded image failed",
    "non_finite": "a latent or caption embedding is not finite in fp16 (overflow or NaN)",
}
_SHARD_NAME = re.compile(r"^shard_(\d{10})$")


# ---------------------------------------------------------------------------------------------
#  Small file helpers
# ---------------------------------------------------------------------------------------------

def _diff(old: Any, new: Any, where: str = "") -> list[str]:
    """Human-readable differences between two JSON values: ``['codec.path: 'a' -> 'b'', ...]``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{where}.{key}" if where else str(key)
            if key not in old:
                out.append(f"{sub}: (absent) -> {new[key]!r}")
            elif key not in new:
                out.append(f"{sub}: {old[key]!r} -> (absent)")
            else:
                out += _diff(old[key], new[key], sub)
        return out
    return [] if old == new else [f"{where or 'settings'}: {old!r} -> {new!r}"]


# ---------------------------------------------------------------------------------------------
#  The preparer
# ---------------------------------------------------------------------------------------------

def _shard_seed(seed: int, start: int) -> int:
    """A 63-bit generator seed for the shard starting at source record ``start``."""
    digest = hashlib.sha256(f"workbench-prepare:{seed}:{start}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class _Skips:
    """Skipped records: counts and ``{key, detail}`` lists by reason."""

    def __init__(self, items: Mapping[str, list] | None = None):
        self.items: dict[str, list[dict]] = {k: list(v) for k, v in (items or {}).items()}

    def add(self, reason: str, key: str, detail: str | None, file: str | None = None) -> None:
        """One skip; ``file`` is the file itself, relative to the source ("sub/cut.png")."""
        self.items.setdefault(reason, []).append({"key": key, "detail": detail, **({"file": file} if file else {})})

    def merge(self, other: Mapping[str, list]) -> None:
        for reason, entries in other.items():
            self.items.setdefault(reason, []).extend(entries)

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in sorted(self.items.items())}


class _Preparer:
    """One prepare run over an output folder. Use ``prepare()``."""

    def __init__(self, src, codec, encoder, resolutions, out: Path, settings: dict, *, seed: int,
                 batch_size: int, shard_size: int, progress: bool):
        self.src, self.codec, self.encoder = src, codec, encoder
        self.resolutions, self.out, self.settings = resolutions, out, settings
        self.seed, self.batch_size, self.shard_size, self.progress = seed, batch_size, shard_size, progress
        self.shards = out / SHARDS_DIR
        self.latent_shapes = {r: (codec.channels, codec.latent_size(r), codec.latent_size(r)) for r in resolutions}
        self.L, self.D = encoder.max_length, encoder.dim

    # -- resume ----------------------------------------------------------------------------------

    def resume(self) -> tuple[int, list[Path], list[dict], set[str]]:
        """Complete shards from record 0 onwards: (next record, shard dirs, metas, written keys).

        Leftover ``.tmp`` shards and shards that do not extend the chain are deleted.
        """
        import datasets

        self.shards.mkdir(parents=True, exist_ok=True)
        found = {}
        for p in self.shards.iterdir():
            m = _SHARD_NAME.match(p.name)
            meta = None
            if m and (p / SHARD_META).is_file():
                try:
                    meta = _read_json(p / SHARD_META)
                except (OSError, json.JSONDecodeError):
                    meta = None
            if meta is None or meta.get("fingerprint") != self.settings["fingerprint"]:
                shutil.rmtree(p, ignore_errors=True)        # *.tmp, damaged, or foreign
                continue
            found[int(meta["start"])] = (p, meta)
        position, dirs, metas, keys = 0, [], [], set()
        for start in sorted(found):
            p, meta = found[start]
            if start != position:
                shutil.rmtree(p, ignore_errors=True)        # not contiguous with the chain
                continue
            dirs.append(p)
            metas.append(meta)
            position = int(meta["end"])
            if meta["written"]:
                with _quiet_datasets():
                    keys.update(datasets.load_from_disk(str(p)).data.column("source_key").to_pylist())
        return position, dirs, metas, keys

    # -- encoding --------------------------------------------------------------------------------

    def _encode_fn(self, generator, cache: dict, dropped: list, truncated: list):
        """The batched ``Dataset.map`` function: an Arrow batch of pixels -> an Arrow batch of latents."""
        import pyarrow as pa

        def encode(batch: pa.Table) -> pa.Table:
            n = batch.num_rows
            keep = np.ones(n, dtype=bool)
            cols = {}
            for r in self.resolutions:
                pixels = from_arrow(batch.column(f"pixels_{r}"), (r, r, 3)).copy()        # (b, R, R, 3) uint8
                lat = self.codec.encode(pixels, generator=generator).numpy()             # (b, C, h, w) float32
                with np.errstate(over="ignore"):                                          # checked below
                    lat16 = lat.astype(np.float16)                                        # (b, C, h, w)
                keep &= np.isfinite(lat16).reshape(n, -1).all(axis=1)
                cols[f"latents_{r}"] = lat16
            captions = batch.column("caption").to_pylist()
            new = [c for c in dict.fromkeys(captions) if c not in cache]                  # dedupe
            if new:
                truncated[0] += self.encoder.count_truncated(new) if hasattr(self.encoder, "count_truncated") else 0
                states, masks = self.encoder.encode(new)                                  # (u, L, D), (u, L)
                with np.errstate(over="ignore"):
                    states16 = states.numpy().astype(np.float16)                          # (u, L, D)
                for c, s, m in zip(new, states16, masks.numpy()):
                    cache[c] = (s, m, bool(np.isfinite(s).all()))
            emb = np.stack([cache[c][0] for c in captions])                              # (b, L, D) fp16
            mask = np.stack([cache[c][1] for c in captions]).astype(bool)                # (b, L) bool
            keep &= np.array([cache[c][2] for c in captions], dtype=bool)
            keys = batch.column("source_key").to_pylist()
            for i in np.flatnonzero(~keep):
                bad = [name for name, a in cols.items() if not np.isfinite(a[i]).all()]
                bad += [] if cache[captions[i]][2] else ["caption_emb"]
                dropped.append((keys[i], f"{', '.join(bad)} not finite in fp16"))
            sel = pa.array(keep)
            table = {name: to_arrow(a[keep]) for name, a in cols.items()}
            table["caption_emb"] = to_arrow(emb[keep])
            table["caption_mask"] = to_arrow(mask[keep])
            table["caption"] = batch.column("caption").filter(sel)
            table["source_key"] = batch.column("source_key").filter(sel)
            return pa.table(table)

        return encode

    def empty_table(self):
        """A zero-row table with the output schema."""
        import pyarrow as pa

        table = {f"latents_{r}": to_arrow(np.zeros((0, *s), np.float16)) for r, s in self.latent_shapes.items()}
        table["caption_emb"] = to_arrow(np.zeros((0, self.L, self.D), np.float16))
        table["caption_mask"] = to_arrow(np.zeros((0, self.L), bool))
        table["caption"] = pa.array([], pa.string())
        table["source_key"] = pa.array([], pa.string())
        return pa.table(table)

    def write_shard(self, start: int, end: int, rows: list, skips: _Skips, t0: float) -> dict:
        """Encode the buffered ``rows`` of records ``start..end-1`` and save them as one shard (a failure on the
        way removes the shard's temp folder: nothing half-written stays behind)."""
        tmp = self.shards / f"shard_{start:010d}.tmp"
        try:
            return self._write_shard(tmp, start, end, rows, skips, t0)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _write_shard(self, tmp: Path, start: int, end: int, rows: list, skips: _Skips, t0: float) -> dict:
        import datasets
        import pyarrow as pa
        import torch

        final = self.shards / f"shard_{start:010d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        written, truncated = 0, [0]
        if rows:
            table = {f"pixels_{r}": to_arrow(np.stack([row[2][r] for row in rows])) for r in self.resolutions}
            table["caption"] = pa.array([row[1] for row in rows], pa.string())
            table["source_key"] = pa.array([row[0] for row in rows], pa.string())
            ds = datasets.Dataset(pa.table(table)).with_format("arrow")
            generator = torch.Generator().manual_seed(_shard_seed(self.seed, start))
            dropped: list = []
            with _quiet_datasets():
                encoded = ds.map(self._encode_fn(generator, {}, dropped, truncated), batched=True, batch_size=self.batch_size,
                                 remove_columns=ds.column_names, keep_in_memory=True, load_from_cache_file=False,
                                 new_fingerprint=f"workbench-prepare-{self.settings['fingerprint']}-{start}")
                for key, detail in dropped:
                    skips.add("non_finite", key, detail)
                written = len(encoded)
                if written:
                    encoded.with_format(None).save_to_disk(str(tmp))
        meta = {"fingerprint": self.settings["fingerprint"], "start": start, "end": end, "seen": end - start,
                "written": written, "skipped": skips.items, "captions_truncated": truncated[0],
                "elapsed_s": round(time.perf_counter() - t0, 4)}
        atomic_write_json(tmp / SHARD_META, meta)
        os.replace(tmp, final)                                       # the shard is complete now
        return meta

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> PrepareReport:
        from tqdm.auto import tqdm

        from .sources import preprocess

        t_run = time.perf_counter()
        position, dirs, metas, keys = self.resume()
        resumed_from = position
        total = self.src.size_hint
        if position and self.progress:
            print(f"resuming {self.out} after record {position} ({len(dirs)} complete shards, {len(keys)} rows)")
        bar = tqdm(total=total, initial=position, unit="img", desc="prepare", disable=not self.progress,
                   dynamic_ncols=True)
        start, rows, skips, t0 = position, [], _Skips(), time.perf_counter()
        index = position
        for rec in self.src.records(start=position):
            index += 1
            bar.update(1)
            if not rec.ok:
                skips.add(rec.skip_reason, rec.key, rec.detail, rec.file)
            elif rec.key in keys:
                skips.add("duplicate_key", rec.key, "key already written earlier in this prepared dataset")
            else:
                try:
                    pixels = {r: preprocess(rec.image, r) for r in self.resolutions}      # {R: (R, R, 3) uint8}
                except Exception as e:  # noqa: BLE001 - one bad sample never stops a run
                    skips.add("preprocess_error", rec.key, f"{type(e).__name__}: {e}")
                else:
                    keys.add(rec.key)
                    rows.append((rec.key, rec.caption, pixels))
            if index - start >= self.shard_size:
                metas.append(self.write_shard(start, index, rows, skips, t0))
                dirs.append(self.shards / f"shard_{start:010d}")
                start, rows, skips, t0 = index, [], _Skips(), time.perf_counter()
        if index > start:
            metas.append(self.write_shard(start, index, rows, skips, t0))
            dirs.append(self.shards / f"shard_{start:010d}")
        bar.close()
        return self.finish(dirs, metas, resumed_from, time.perf_counter() - t_run)

    def finish(self, dirs: list[Path], metas: list[dict], resumed_from: int, elapsed_loop: float) -> PrepareReport:
        """Concatenate the shards into the final dataset, write report.json and prepared.json."""
        import datasets

        t0 = time.perf_counter()
        with _quiet_datasets():
            parts = [datasets.load_from_disk(str(d)) for d, m in zip(dirs, metas) if m["written"]]
            final = datasets.concatenate_datasets(parts) if parts else datasets.Dataset(self.empty_table())
        save_into(self.out, final)                                   # dataset files into OUT itself

        skips = _Skips()
        for m in metas:
            skips.merge(m["skipped"])
        seen, written = sum(m["seen"] for m in metas), sum(m["written"] for m in metas)
        truncated = sum(m.get("captions_truncated", 0) for m in metas)
        elapsed = elapsed_loop + (time.perf_counter() - t0)
        report = {
            "complete": True,
            "out": str(self.out),
            "fingerprint": self.settings["fingerprint"],
            "counts": {"seen": seen, "written": written, "skipped": seen - written,
                       "skipped_by_reason": skips.counts()},
            "skipped": skips.items,
            "captions_truncated": truncated,
            "resolutions": list(self.resolutions),
            "latent_shapes": {str(r): list(s) for r, s in self.latent_shapes.items()},
            "caption_shape": [self.L, self.D],
            "source": self.settings["source"],
            "codec": self.settings["codec"],
            "text_encoder": self.settings["text_encoder"],
            "limit": self.settings["limit"],
            "seed": self.seed,
            "shard_size": self.shard_size,
            "batch_size": self.batch_size,
            "resumed_from": resumed_from,
            "elapsed_s": round(elapsed, 3),
            "elapsed_all_runs_s": round(sum(m["elapsed_s"] for m in metas) + (time.perf_counter() - t0), 3),
            "images_per_s": round((seen - resumed_from) / elapsed, 2) if elapsed > 0 else None,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_json(self.out / REPORT_FILE, report)
        if truncated:
            print(f"{truncated} distinct caption(s) were longer than the text encoder's {self.L} tokens and were "
                  f"cut there (report.json: captions_truncated)", flush=True)
        if written == 0:                  # no dataset to train on: an error, not an empty success
            reasons = "; ".join(f"{reason} {len(items)} (e.g. {items[0].get('file') or items[0]['key']}: "
                                f"{items[0]['detail']})" for reason, items in
                                sorted(skips.items.items(), key=lambda kv: -len(kv[1]))[:3]) or "none recorded"
            raise WorkbenchError(f"0 of {seen} images usable in {self.settings['source'].get('path', 'the source')}: "
                                 f"{reasons}; every skip is listed in {self.out / REPORT_FILE}")
        info = PreparedInfo(
            path=str(self.out), num_rows=written, resolutions=self.resolutions, latent_shapes=self.latent_shapes,
            channels=self.codec.channels, caption_length=self.L, caption_dim=self.D, codec=self.settings["codec"],
            text_encoder=self.settings["text_encoder"], source=self.settings["source"],
            fingerprint=self.settings["fingerprint"])
        atomic_write_json(self.out / INFO_FILE, info.to_json())      # the folder is complete from here
        shutil.rmtree(self.shards, ignore_errors=True)
        result = PrepareReport.from_json(report)
        if self.progress:
            print(result)
        return result


# ---------------------------------------------------------------------------------------------
#  prepare(): checks before any work, then the run
# ---------------------------------------------------------------------------------------------

class SourceOptionError(TypeError, ValueError):
    """A source option the source kind does not accept (a TypeError for Python, a ValueError for the CLI)."""


def _reraise(err: Exception, prefix: str):
    """The same exception type with ``prefix`` in front of the message."""
    try:
        new = type(err)(f"{prefix}{err}")
    except Exception:  # noqa: BLE001 - exotic exception signatures
        new = ValueError(f"{prefix}{err}")
    raise new from err


def check_out_folder(out: Path, settings: dict) -> bool:
    """Check ``out`` may receive a prepare run with ``settings``; True when it is already complete.

    Raises ``ValueError`` naming the differing settings when ``out`` holds a prepared dataset or
    partial shards made with other settings, or when it holds unrelated files.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a folder; choose another --out")
    if not out.is_dir() or not [p for p in out.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))]:
        return False                                             # absent, empty, or only our temp files
    settings_file = out / SETTINGS_FILE
    if not settings_file.is_file():
        raise ValueError(f"--out {str(out)!r} is not empty and was not written by workbench prepare (no "
                         f"{SETTINGS_FILE}); choose another --out or empty that folder")
    try:
        old = _read_json(settings_file)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{settings_file} is unreadable ({e}); delete {str(out)!r} or choose another --out") from e
    if old.get("fingerprint") != settings["fingerprint"]:
        state = "a prepared dataset" if (out / INFO_FILE).is_file() else "an unfinished prepare run"
        diffs = _diff({k: v for k, v in old.items() if k != "fingerprint"},
                      {k: v for k, v in settings.items() if k != "fingerprint"})
        listed = "; ".join(diffs[:8]) + (f"; ... ({len(diffs) - 8} more)" if len(diffs) > 8 else "")
        raise ValueError(f"--out {str(out)!r} holds {state} made with other settings ({listed}). Choose another "
                         f"--out, or delete {str(out)!r} to prepare it again with the new settings")
    return (out / INFO_FILE).is_file()


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
    image_column: str = "image",                 # hf_disk sources: image column
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
    rerunning it on a complete folder does nothing. For the shapes source the scenes are rendered
    at the largest resolution unless ``resolution=`` is passed.

    Returns a ``PrepareReport`` (also written to ``out/report.json``).

    Example::

        report = prepare("shapes", "data/prepared/shapes32", resolutions=(32,), limit=2000)
        report = prepare("photos/", "data/prepared/photos", codec="vae:/models/sdxl-vae",
                         text_encoder="/models/clip-vit-h-text", resolutions="256,512", min_side=256)
        report.skipped                # {'corrupt_image': 2, 'too_small': 5}
    """
    from .codecs import open_codec
    from .sources import open_source, parse_source_spec
    from .text import open_text_encoder

    resolutions = parse_resolutions(resolutions)
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size} and {shard_size}")
    kind, _ = parse_source_spec(source)                      # a missing path fails here
    options = dict(source_options)
    if kind == "shapes":
        options.setdefault("resolution", resolutions[-1])    # render once, downsample for smaller sizes
    try:
        src = open_source(source, image_column=image_column, caption_column=caption_column, min_side=min_side,
                          limit=limit, **options)
    except TypeError as e:                                  # an option this kind of source does not take
        raise SourceOptionError(str(e)) from e
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

    settings = {
        "format_version": FORMAT_VERSION,
        "source": src.describe(),
        "codec": codec.describe(),
        "text_encoder": text_encoder.describe(),
        "resolutions": list(resolutions),
        "limit": limit,
        "seed": int(seed),
    }
    settings["fingerprint"] = fingerprint(settings)
    out = Path(out).expanduser().resolve()
    if check_out_folder(out, settings):
        shutil.rmtree(out / SHARDS_DIR, ignore_errors=True)  # a crash after completion may leave shards
        report = PrepareReport.from_json(_read_json(out / REPORT_FILE), nothing_to_do=True)
        if progress:
            print(f"nothing to do: {out} already holds a complete prepared dataset with these settings "
                  f"({report.written} rows)")
        return report
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / SETTINGS_FILE, settings)
    preparer = _Preparer(src, codec, text_encoder, resolutions, out, settings, seed=int(seed),
                         batch_size=int(batch_size), shard_size=int(shard_size), progress=progress)
    return preparer.run()
