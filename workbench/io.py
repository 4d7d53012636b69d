"""Leaf file helpers: atomic writes (a temp file in the same folder, fsync, rename) and content hashes.

A reader never sees a half-written file: it sees the old content or the new, whole. Every
module that writes a file someone else reads (JSON records, PNGs, reports, weights) goes through
these::

    from workbench.io import atomic_write_json
    atomic_write_json("runs/demo/scores.json", {"overall": 0.41})
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (creating its folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (plus a newline) to ``path`` atomically; returns the path."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


def digest(*chunks: bytes) -> str:
    """Short, stable sha256 hex digest (16 characters) of some bytes: the project's one content hash."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()[:16]


def fingerprint(obj: Any) -> str:
    """``digest`` of a JSON-able value in canonical form (sorted keys; other objects as ``str``).

    Settings, parameters and file listings are fingerprinted with it, so "made with the same
    settings?" is one comparison everywhere (prepare, sources, the pipeline, codecs).
    """
    return digest(json.dumps(obj, sort_keys=True, default=str).encode("utf-8", "surrogateescape"))


def remove_inside(path: str | os.PathLike, root: str | os.PathLike) -> None:
    """Delete the file or folder ``path``, but only when it really lies inside ``root`` (symlinks resolved).

    Every deletion the workbench makes (``--fresh``, checkpoint retention, stale temp folders) goes
    through this, so a hostile name, a symlink or a bug can never delete outside a stage folder::

        remove_inside("runs/demo/stage1/samples", "runs/demo/stage1")
    """
    import shutil

    from .errors import WorkbenchError

    target, base = Path(path), Path(root).resolve()
    resolved = target.parent.resolve() / target.name          # the entry itself, not what a symlink points at
    if resolved == base or base not in resolved.parents:
        raise WorkbenchError(f"refused to delete {target}: it is not inside {base} (nothing was deleted)")
    if target.is_symlink() or not target.is_dir():
        target.unlink(missing_ok=True)
    else:
        shutil.rmtree(target)
