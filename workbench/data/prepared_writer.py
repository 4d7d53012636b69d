"""The one writer of the prepared format: settings first, then complete parts, then the dataset and its report.

``workbench prepare`` (``workbench.data.prepare``) and ``workbench import-mds``
(``workbench.data.mds_import``) both write through ``PreparedWriter``, so a prepared folder looks the
same whoever made it (``workbench.data.prepared_format`` describes the layout)::

    writer = PreparedWriter(out, settings, latent_shapes={32: (3, 32, 32)}, caption_shape=(77, 384))
    if writer.is_complete():                         # same settings, already finished
        return writer.existing_report()
    position = writer.begin()                        # writes prepare_settings.json; keeps complete parts
    writer.write_part(start, end, rows, skips)       # one resumable part (a datasets.Dataset, or None)
    report = writer.finish(resumed_from=position, elapsed_s=..., run={"seed": 0, ...})

A part covers source records ``start .. end - 1`` (skipped ones included) and is saved aside in
``.shards/shard_<start>.tmp``, then renamed into place with its ``shard.json``, so a killed run
leaves only complete parts. ``begin`` keeps the parts that continue the chain from record 0 with the
same settings fingerprint and deletes the rest; ``finish`` concatenates them into the folder, writes
``report.json`` and last ``prepared.json`` (the completion marker).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, WorkbenchError
from ..io import atomic_write_json
from .prepared_format import (INFO_FILE, REPORT_FILE, SETTINGS_FILE, SHARDS_DIR, PreparedInfo, PrepareReport,
                              quiet_datasets, read_json, save_into, to_arrow)

PART_META = "shard.json"
RUN_KEYS = ("seed", "shard_size", "batch_size")          # how the command ran; in every report.json (None: n/a)
_PART_NAME = re.compile(r"^shard_(\d{10})$")


class Skips:
    """Skipped records: ``{reason: [{key, detail, file?}, ...]}``, with counts by reason.

    Example::

        skips = Skips()
        skips.add("corrupt_image", "cat", "truncated JPEG", file="sub/cat.jpg")
        skips.counts()                         # {'corrupt_image': 1}
    """

    def __init__(self, items: Mapping[str, list] | None = None):
        self.items: dict[str, list[dict]] = {k: list(v) for k, v in (items or {}).items()}

    def add(self, reason: str, key: str, detail: str | None, file: str | None = None) -> None:
        """One skip; ``file`` is the file itself, relative to the source ("sub/cut.png")."""
        self.items.setdefault(reason, []).append({"key": key, "detail": detail, **({"file": file} if file else {})})

    def merge(self, other: Mapping[str, list]) -> None:
        """Add the skips of another ``items`` mapping (a part's ``shard.json``)."""
        for reason, entries in other.items():
            self.items.setdefault(reason, []).extend(entries)

    def counts(self) -> dict[str, int]:
        """Skips per reason, sorted by reason."""
        return {k: len(v) for k, v in sorted(self.items.items())}


def settings_diff(old: Any, new: Any, where: str = "") -> list[str]:
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
                out += settings_diff(old[key], new[key], sub)
        return out
    return [] if old == new else [f"{where or 'settings'}: {old!r} -> {new!r}"]


class PreparedWriter:
    """Writes one prepared dataset folder ``out`` made with ``settings`` (a dict with a ``fingerprint``).

    ``latent_shapes`` maps each resolution to its latent ``(C, h, w)``; ``caption_shape`` is ``(L, D)``.
    See the module docstring for the order of the calls.
    """

    def __init__(self, out: str | os.PathLike, settings: dict, *, latent_shapes: Mapping[int, tuple[int, int, int]],
                 caption_shape: tuple[int, int]):
        self.out = Path(out).expanduser().resolve()
        self.settings = settings
        self.latent_shapes = {int(r): tuple(s) for r, s in sorted(latent_shapes.items())}
        self.caption_shape = tuple(caption_shape)
        self.shards = self.out / SHARDS_DIR
        self.parts: list[tuple[Path, dict]] = []            # complete parts of the chain: (folder, shard.json)

    # -- before any work ---------------------------------------------------------------------------

    def is_complete(self) -> bool:
        """True when ``out`` already holds a complete dataset with these settings (leftover parts are removed).

        Raises ``ValueError`` naming the differing settings when ``out`` holds a prepared dataset or
        partial parts made with other settings, or when it holds unrelated files.
        """
        out = self.out
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {str(out)!r} is a file, not a folder; choose another --out")
        files = list(out.iterdir()) if out.is_dir() else []
        if not [p for p in files if not (p.name.startswith(".") and p.name.endswith(".tmp"))]:
            return False                                             # absent, empty, or only our temp files
        settings_file = out / SETTINGS_FILE
        if not settings_file.is_file():
            raise InputError(f"--out {str(out)!r} is not empty and was not written by workbench prepare (no "
                             f"{SETTINGS_FILE}); choose another --out or empty that folder")
        try:
            old = read_json(settings_file)
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{settings_file} is unreadable ({e}); delete {str(out)!r} or choose another --out") from e
        if old.get("fingerprint") != self.settings["fingerprint"]:
            state = "a prepared dataset" if (out / INFO_FILE).is_file() else "an unfinished prepare run"
            diffs = settings_diff({k: v for k, v in old.items() if k != "fingerprint"},
                                  {k: v for k, v in self.settings.items() if k != "fingerprint"})
            listed = "; ".join(diffs[:8]) + (f"; ... ({len(diffs) - 8} more)" if len(diffs) > 8 else "")
            raise InputError(f"--out {str(out)!r} holds {state} made with other settings ({listed}). Choose another "
                             f"--out, or delete {str(out)!r} to prepare it again with the new settings")
        complete = (out / INFO_FILE).is_file()
        if complete:
            shutil.rmtree(self.shards, ignore_errors=True)       # a crash after completion may leave parts
        return complete

    def existing_report(self) -> PrepareReport:
        """The report of the complete folder, marked ``nothing_to_do``."""
        return PrepareReport.from_json(read_json(self.out / REPORT_FILE), nothing_to_do=True)

    def begin(self) -> int:
        """Write ``prepare_settings.json`` and keep the complete parts; returns the first record still to write.

        Leftover ``.tmp`` parts, parts made with other settings and parts that do not extend the chain
        from record 0 are deleted.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / SETTINGS_FILE, self.settings)
        self.shards.mkdir(parents=True, exist_ok=True)
        found = {}
        for p in self.shards.iterdir():
            meta = self._part_meta(p)
            if meta is None:
                shutil.rmtree(p, ignore_errors=True)            # *.tmp, damaged, or foreign
            else:
                found[int(meta["start"])] = (p, meta)
        position, self.parts = 0, []
        for start in sorted(found):
            p, meta = found[start]
            if start != position:
                shutil.rmtree(p, ignore_errors=True)            # not contiguous with the chain
                continue
            self.parts.append((p, meta))
            position = int(meta["end"])
        return position

    def _part_meta(self, folder: Path) -> dict | None:
        if not (_PART_NAME.match(folder.name) and (folder / PART_META).is_file()):
            return None
        try:
            meta = read_json(folder / PART_META)
        except (OSError, json.JSONDecodeError):
            return None
        return meta if meta.get("fingerprint") == self.settings["fingerprint"] else None

    def written_keys(self) -> set[str]:
        """The ``source_key`` of every row in the complete parts (a resumed run writes each key once)."""
        import datasets

        keys = set()
        for folder, meta in self.parts:
            if meta["written"]:
                with quiet_datasets():
                    keys.update(datasets.load_from_disk(str(folder)).data.column("source_key").to_pylist())
        return keys

    # -- the parts -----------------------------------------------------------------------------------

    def write_part(self, start: int, end: int, rows, skips: Skips, *, captions_truncated: int = 0,
                   started_at: float | None = None) -> dict:
        """Save the rows of source records ``start .. end - 1`` as one complete part; returns its ``shard.json``.

        ``rows`` is a ``datasets.Dataset`` with the prepared columns, or None when no record was
        usable. A failure on the way removes the part's temp folder: nothing half-written stays.
        """
        tmp = self.shards / f"shard_{start:010d}.tmp"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            written = 0 if rows is None else len(rows)
            if written:
                with quiet_datasets():
                    rows.with_format(None).save_to_disk(str(tmp))
            meta = {"fingerprint": self.settings["fingerprint"], "start": start, "end": end, "seen": end - start,
                    "written": written, "skipped": skips.items, "captions_truncated": int(captions_truncated),
                    "elapsed_s": round(time.perf_counter() - (started_at or time.perf_counter()), 4)}
            atomic_write_json(tmp / PART_META, meta)
            final = self.shards / f"shard_{start:010d}"
            os.replace(tmp, final)                                   # the part is complete now
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.parts.append((final, meta))
        return meta

    def empty_table(self):
        """A zero-row table with the prepared columns."""
        import pyarrow as pa

        L, D = self.caption_shape
        table = {f"latents_{r}": to_arrow(np.zeros((0, *s), np.float16)) for r, s in self.latent_shapes.items()}
        table["caption_emb"] = to_arrow(np.zeros((0, L, D), np.float16))
        table["caption_mask"] = to_arrow(np.zeros((0, L), bool))
        table["caption"] = pa.array([], pa.string())
        table["source_key"] = pa.array([], pa.string())
        return pa.table(table)

    # -- the end -------------------------------------------------------------------------------------

    def finish(self, *, resumed_from: int, elapsed_s: float, run: Mapping[str, Any]) -> PrepareReport:
        """Concatenate the parts into ``out``, write ``report.json``, then ``prepared.json``; returns the report.

        ``run`` gives the ``RUN_KEYS`` of the command (missing ones are None). Raises ``WorkbenchError``
        naming the top skip reasons when no row at all was written.
        """
        import datasets

        t0 = time.perf_counter()
        metas = [meta for _, meta in self.parts]
        with quiet_datasets():
            data = [datasets.load_from_disk(str(p)) for p, meta in self.parts if meta["written"]]
            final = datasets.concatenate_datasets(data) if data else datasets.Dataset(self.empty_table())
        save_into(self.out, final)                                   # dataset files into OUT itself
        elapsed = elapsed_s + (time.perf_counter() - t0)
        report = self._report(metas, resumed_from, elapsed, run)
        report["elapsed_all_runs_s"] = round(sum(m["elapsed_s"] for m in metas) + (time.perf_counter() - t0), 3)
        atomic_write_json(self.out / REPORT_FILE, report)
        if report["captions_truncated"]:
            print(f"{report['captions_truncated']} distinct caption(s) were longer than the text encoder's "
                  f"{self.caption_shape[0]} tokens and were cut there (report.json: captions_truncated)", flush=True)
        if report["counts"]["written"] == 0:              # no dataset to train on: an error, not an empty success
            self._fail_empty(report)
        self._write_info(report["counts"]["written"])
        shutil.rmtree(self.shards, ignore_errors=True)
        return PrepareReport.from_json(report)

    def _report(self, metas: list[dict], resumed_from: int, elapsed: float, run: Mapping[str, Any]) -> dict:
        skips = Skips()
        for m in metas:
            skips.merge(m["skipped"])
        seen, written = sum(m["seen"] for m in metas), sum(m["written"] for m in metas)
        settings = self.settings
        return {
            "complete": True, "out": str(self.out), "fingerprint": settings["fingerprint"],
            "counts": {"seen": seen, "written": written, "skipped": seen - written,
                       "skipped_by_reason": skips.counts()},
            "skipped": skips.items,
            "captions_truncated": sum(m.get("captions_truncated", 0) for m in metas),
            "resolutions": list(self.latent_shapes),
            "latent_shapes": {str(r): list(s) for r, s in self.latent_shapes.items()},
            "caption_shape": list(self.caption_shape),
            "source": settings["source"], "codec": settings["codec"], "text_encoder": settings["text_encoder"],
            "limit": settings.get("limit"),
            **{key: run.get(key) for key in RUN_KEYS},
            "resumed_from": resumed_from,
            "elapsed_s": round(elapsed, 3),
            "elapsed_all_runs_s": None,                                # set by finish, once the save is timed
            "images_per_s": round((seen - resumed_from) / elapsed, 2) if elapsed > 0 else None,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def _fail_empty(self, report: dict) -> None:
        items = report["skipped"]
        reasons = "; ".join(f"{reason} {len(entries)} (e.g. {entries[0].get('file') or entries[0]['key']}: "
                            f"{entries[0]['detail']})" for reason, entries in
                            sorted(items.items(), key=lambda kv: -len(kv[1]))[:3]) or "none recorded"
        raise WorkbenchError(f"0 of {report['counts']['seen']} images usable in "
                             f"{self.settings['source'].get('path', 'the source')}: {reasons}; every skip is listed "
                             f"in {self.out / REPORT_FILE}")

    def _write_info(self, written: int) -> None:
        settings, (L, D) = self.settings, self.caption_shape
        channels = next(iter(self.latent_shapes.values()))[0]
        info = PreparedInfo(
            path=str(self.out), num_rows=written, resolutions=tuple(self.latent_shapes),
            latent_shapes=self.latent_shapes, channels=channels, caption_length=L, caption_dim=D,
            codec=settings["codec"], text_encoder=settings["text_encoder"], source=settings["source"],
            fingerprint=settings["fingerprint"])
        atomic_write_json(self.out / INFO_FILE, info.to_json())      # the folder is complete from here
