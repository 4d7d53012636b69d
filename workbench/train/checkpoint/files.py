"""Checkpoint folders on disk: names, the checksum manifest, verifying, finding the newest valid one, retention,
and the registry of temp folders being written (so retention never deletes one in flight)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from workbench.config import complete_model_config
from workbench.errors import InputError, MissingFileError, WorkbenchError
from workbench.io import remove_inside

FORMAT = 1                                       # manifest format version
MANIFEST = "manifest.json"
MODEL_FILE, EMA_FILE = "model.safetensors", "ema.safetensors"
OPTIMIZER_FILE, SCHEDULER_FILE = "optimizer.pt", "scheduler.pt"
STATE_FILE, CONFIG_FILE = "state.pt", "config.json"
REQUIRED_FILES = (MODEL_FILE, STATE_FILE, CONFIG_FILE)
DAMAGED_DIR = "damaged"                          # checkpoints/damaged/: damaged checkpoints, moved aside, never deleted

_STEP_DIR = re.compile(r"^step_(\d+)$")
_TEMP_DIR = re.compile(r"^\.tmp-(?:old-|del-)?step_\d+-(\d+)-[0-9a-f]+$")
_IN_FLIGHT: set[str] = set()                     # names of the temp dirs this process is writing now
_IN_FLIGHT_LOCK = threading.Lock()



class CheckpointError(InputError):
    """A checkpoint is partial, corrupt, or lacks a part the caller asked to load."""


def verify_checkpoint(path: str | Path, *, checksums: bool = True, files: Iterable[str] | None = None) -> list[str]:
    """Problems with the checkpoint at ``path``; ``[]`` when it is complete and intact.

    Checks the manifest (present, readable JSON, known format, matching step), that every
    required file is listed, and the size and sha256 of each listed file (or only ``files``).
    ``checksums=False`` skips the hashing (a quick structural check).
    """
    path = Path(path)
    manifest, problems = _read_manifest_checked(path)
    if manifest is None:
        return problems
    listed = manifest["files"]
    problems += [f"{name}: required but not in {MANIFEST}" for name in REQUIRED_FILES if name not in listed]
    wanted = listed if files is None else [name for name in files if name in listed]
    for name in wanted:
        problems += _file_problems(path / name, listed[name], checksums)
    if CONFIG_FILE in wanted and not problems:
        try:
            json.loads((path / CONFIG_FILE).read_text())
        except (OSError, ValueError) as err:
            problems.append(f"{CONFIG_FILE}: unreadable JSON ({err})")
    return problems


def _read_manifest_checked(path: Path) -> tuple[dict | None, list[str]]:
    """The parsed manifest and ``[]``, or ``None`` and the problems that prevent reading it."""
    if not path.is_dir():
        return None, [f"{path} is not a directory"]
    if not (path / MANIFEST).is_file():
        return None, [f"missing {MANIFEST} (incomplete checkpoint: the save was interrupted or files were removed)"]
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        return None, [f"{MANIFEST}: unreadable JSON ({err})"]
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None, [f"{MANIFEST}: has no 'files' mapping"]
    if manifest.get("format") != FORMAT:
        return None, [f"{MANIFEST}: unknown format {manifest.get('format')!r} (this version reads {FORMAT})"]
    match = _STEP_DIR.match(path.name)
    if match and int(match.group(1)) != manifest.get("step"):
        return None, [f"{MANIFEST}: step {manifest.get('step')!r} does not match the folder name {path.name}"]
    return manifest, []


def _file_problems(file: Path, expected: Mapping, checksums: bool) -> list[str]:
    """Size and checksum problems of one listed file."""
    if not file.is_file():
        return [f"{file.name}: missing"]
    size = file.stat().st_size
    if size != expected.get("bytes"):
        return [f"{file.name}: size {size} bytes, manifest says {expected.get('bytes')}"]
    if checksums and _sha256(file) != expected.get("sha256"):
        return [f"{file.name}: sha256 checksum mismatch (file is corrupt)"]
    return []


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def list_checkpoints(root: str | Path) -> list[Path]:
    """The ``step_*`` folders under ``root``, oldest step first (``.tmp-*`` folders are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_valid_checkpoint(root: str | Path, log: Callable[[str], Any] = warnings.warn) -> Path | None:
    """The newest checkpoint under ``root`` that verifies, or ``None``.

    Each newer partial or corrupt checkpoint is skipped and reported through ``log`` with its
    path and problems.
    """
    for path in reversed(list_checkpoints(root)):
        problems = verify_checkpoint(path)
        if not problems:
            return path
        log(f"skipping invalid checkpoint {path}: {'; '.join(problems)}")
    return None


def resolve_checkpoint(spec: str | Path) -> Path:
    """A checkpoint folder from ``spec``: the folder itself, or the newest valid one under a stage folder.

    Accepts ``.../step_NNNNNNN`` (returned as is; loading verifies it), a checkpoints root
    (``runs/x/stage1/checkpoints``) or a stage folder (``runs/x/stage1``). Raises
    ``FileNotFoundError`` saying what was looked for.
    """
    path = Path(spec)
    if not path.exists():
        raise MissingFileError(f"no checkpoint at {path}: the path does not exist")
    if _STEP_DIR.match(path.name) or (path / MANIFEST).is_file():
        return path
    for root in (path / "checkpoints", path):
        candidates = list_checkpoints(root)
        if candidates:
            found = latest_valid_checkpoint(root)
            if found is None:
                raise MissingFileError(f"no valid checkpoint under {root}: all {len(candidates)} are partial "
                                        "or corrupt (see the warnings)")
            return found
    stages = sorted(p.name for p in path.iterdir() if (p / "checkpoints").is_dir()) if path.is_dir() else []
    if stages:
        raise MissingFileError(f"{path} is a run with stages {', '.join(stages)}: name one, "
                                f"e.g. {path / stages[-1]}")
    raise MissingFileError(f"no checkpoints under {path}: expected a step_NNNNNNN folder, a checkpoints folder "
                            "holding them, or a stage folder with a checkpoints/ subfolder")


def read_manifest(path: str | Path) -> dict:
    """The parsed ``manifest.json`` of a checkpoint (``CheckpointError`` when it cannot be read)."""
    manifest, problems = _read_manifest_checked(Path(path))
    if manifest is None:
        raise CheckpointError(f"checkpoint {path}: {'; '.join(problems)}")
    return manifest


def read_config(path: str | Path) -> dict:
    """The ``config.json`` of a checkpoint: ``{"model": {...}, "stage": {...} or None, "sampling": {...}}``.

    ``"model"`` is made current by ``complete_model_config``: fields older versions kept that are not
    architecture (``RETIRED_MODEL_FIELDS``) are left out, and fields added since are filled with their
    defaults (which keep the old behaviour), so every old checkpoint keeps loading and sampling as before.
    """
    config = json.loads((Path(path) / CONFIG_FILE).read_text())
    if isinstance(config.get("model"), dict):            # an older checkpoint's config, made current
        config["model"] = complete_model_config(config["model"])
    return config


def is_final(path: str | Path) -> bool:
    """Whether the checkpoint's manifest marks it as a stage's final checkpoint."""
    try:
        return bool(read_manifest(path).get("final"))
    except CheckpointError:
        return False


def apply_retention(root: str | Path, keep_last: int | None, log: Callable[[str], Any] = warnings.warn) -> list[Path]:
    """Keep every final checkpoint and the newest ``keep_last`` others; delete the older complete ones.

    Retention deletes only what it can prove is its own to delete: complete, intact, non-final
    checkpoints older than the newest ``keep_last`` of them, and ``.tmp-*`` folders whose writer is
    gone. A damaged ``step_*`` folder (no manifest, a wrong size or checksum) is never deleted: it is
    moved to ``checkpoints/damaged/`` with one line through ``log``, because its weights may still be
    intact. ``keep_last=None`` keeps every checkpoint. Each deleted folder is renamed aside first, so an
    interrupted deletion never leaves a half-deleted ``step_*``. Returns the deleted paths.
    """
    if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
        raise InputError(f"keep_last: expected an integer >= 1 or None (keep all), got {keep_last!r}")
    root = Path(root)
    deleted = remove_stale_temps(root)
    if keep_last is None:
        return deleted
    intact, finals = [], set()
    for path in list_checkpoints(root):
        problems = verify_checkpoint(path, checksums=False)      # sizes and manifest: cheap at every save
        if problems:
            moved = move_damaged(path)
            log(f"damaged checkpoint {path.name} ({'; '.join(problems)}) moved to {moved}; nothing was deleted")
            continue
        intact.append(path)
        if is_final(path):
            finals.add(path)
    others = [p for p in intact if p not in finals]
    for path in others[:-keep_last]:
        _remove_dir(path)
        deleted.append(path)
    return deleted


def move_damaged(path: Path) -> Path:
    """Move a damaged checkpoint folder into ``checkpoints/damaged/`` (a new name if one is taken); returns it."""
    aside = path.parent / DAMAGED_DIR
    aside.mkdir(exist_ok=True)
    target = aside / path.name
    while target.exists():
        target = aside / f"{path.name}-{secrets.token_hex(2)}"
    os.rename(path, target)
    return target


def remove_stale_temps(root: str | Path) -> list[Path]:
    """Remove ``.tmp-*`` folders whose writer is gone (dead pid, or this pid but not in flight)."""
    root = Path(root)
    if not root.is_dir():
        return []
    removed = []
    for path in sorted(root.iterdir()):
        match = _TEMP_DIR.match(path.name)
        if not match or path.is_symlink() or not path.is_dir():
            continue
        pid = int(match.group(1))
        with _IN_FLIGHT_LOCK:
            busy = path.name in _IN_FLIGHT
        if busy or (pid != os.getpid() and _pid_alive(pid)):
            continue
        remove_inside(path, root)
        removed.append(path)
    return removed


def _remove_dir(path: Path) -> None:
    """Rename ``path`` to a hidden temp name, then delete it (only inside its own checkpoints folder)."""
    if path.is_symlink():
        raise WorkbenchError(f"refused to delete {path}: it is a symlink, not a checkpoint the workbench wrote")
    aside = path.parent / f".tmp-del-{path.name}-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(path, aside)
    remove_inside(aside, path.parent)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _in_flight(path: Path):
    """Register a temp folder as being written by this process, so retention leaves it alone."""
    with _IN_FLIGHT_LOCK:
        _IN_FLIGHT.add(path.name)
    try:
        yield
    finally:
        with _IN_FLIGHT_LOCK:
            _IN_FLIGHT.discard(path.name)


def _fsync_dir(path: Path) -> None:
    """fsync a directory so renames and new entries in it are durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file(path: Path, write: Callable) -> None:
    """Create ``path``, let ``write(f)`` fill it, then flush and fsync it."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
