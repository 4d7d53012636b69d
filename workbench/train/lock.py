"""One writer per stage folder: an exclusive ``fcntl`` lock on ``<run>/.<stage>.lock``, held while a Trainer lives.

    lock = StageLock.acquire("runs/demo/stage1", owner=trainer)   # WorkbenchError naming the holder if taken
    ...
    lock.release()

The lock file sits beside the stage folder (so ``fresh=True`` can delete the folder whole) and
records the holder (PID, host, start time). The operating system drops the lock when
its process dies, so a lock left by a killed run is taken over at once, with a line that says so.
Within one process (a notebook that builds a second Trainer for the same stage), the new owner
takes the lock over from an idle one; a running one keeps it. Readers (sampling, the report, the
dashboard) never take the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import weakref
from pathlib import Path

from ..errors import WorkbenchError


def lock_path(stage_dir: str | os.PathLike) -> Path:
    """The lock file of a stage folder: ``<run>/.<stage>.lock``."""
    stage_dir = Path(stage_dir)
    return stage_dir.parent / f".{stage_dir.name}.lock"

_HELD: dict[str, "StageLock"] = {}          # resolved stage folder -> this process's lock on it
_HELD_GUARD = threading.Lock()


def _describe(holder: dict) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "an unknown time"
    return f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')} since {when}"


def read_holder(stage_dir: str | os.PathLike) -> dict:
    """What the lock file says about its holder (``{}`` when there is none or it is unreadable)."""
    try:
        return json.loads(lock_path(stage_dir).read_text() or "{}")
    except (OSError, ValueError):
        return {}


class StageLock:
    """An exclusive lock on a stage folder (see the module docstring)."""

    def __init__(self, stage_dir: Path, fd: int, owner):
        self.stage_dir, self._fd = stage_dir, fd
        self._owner = weakref.ref(owner) if owner is not None else (lambda: None)

    @classmethod
    def acquire(cls, stage_dir: str | os.PathLike, owner=None, log=print) -> "StageLock":
        """Lock ``stage_dir`` for ``owner`` (an object with a ``running`` attribute, e.g. a Trainer)."""
        stage_dir = Path(stage_dir)
        stage_dir.parent.mkdir(parents=True, exist_ok=True)
        key = str(stage_dir.resolve())
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is not None:
                previous = held._owner()
                if previous is not None and getattr(previous, "running", False):
                    raise WorkbenchError(f"{stage_dir} is being trained by another Trainer in this process; "
                                         f"stop it first (trainer.stop()) or use another run name")
                held._owner = weakref.ref(owner) if owner is not None else (lambda: None)
                return held                      # an idle Trainer's lock passes to the new one
            path = lock_path(stage_dir)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise WorkbenchError(f"{stage_dir} is being trained by {_describe(read_holder(stage_dir))} "
                                     f"(lock {path}); wait for that run to end, stop it, or use another run "
                                     f"name") from None
            stale = read_holder(stage_dir)
            if stale.get("pid") and (stale.get("pid"), stale.get("host")) != (os.getpid(), socket.gethostname()):
                log(f"{stage_dir}: took over the lock of {_describe(stale)}, which is no longer running")
            record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode(), 0)
            lock = cls(stage_dir, fd, owner)
            _HELD[key] = lock
            return lock

    def release(self) -> None:
        """Unlock (idempotent). The lock file stays; an unlocked file means nobody holds it."""
        with _HELD_GUARD:
            if self._fd is None:
                return
            _HELD.pop(str(self.stage_dir.resolve()), None)
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
