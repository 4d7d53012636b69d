"""One writer per stage folder: an exclusive ``fcntl`` lock on ``<run>/.<stage>.lock``, held while a Trainer lives.

    lock = StageLock.acquire("runs/demo/stage1", owner=trainer)   # WorkbenchError naming the holder if taken
    ...
    lock.release()

The lock file sits beside the stage folder (so ``fresh=True`` can delete the folder whole) and
records the holder (PID, host, start time). The operating system drops the lock when
its process dies, so a lock left by a killed run is taken over at once, with a line that says so.
Within one process (a notebook that builds a second Trainer for the same stage), the Trainers
share the lock while the others are idle; one that is running keeps the folder to itself.
Readers (sampling, the report, the dashboard) never take the lock.
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

_HELD: dict[str, StageLock] = {}          # resolved stage folder -> this process's lock on it
_HELD_GUARD = threading.RLock()       # re-entrant: a finalizer may run while it is held


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
    """An exclusive lock on a stage folder (see the module docstring).

    In one process the lock is shared by the Trainers built for that folder (a notebook that
    re-runs its cell); it is released when the last of them is closed or garbage-collected.
    """

    def __init__(self, stage_dir: Path, fd: int, key: str):
        self.stage_dir, self._fd, self._key = stage_dir, fd, key
        self._owners: list[weakref.ref] = []

    @classmethod
    def acquire(cls, stage_dir: str | os.PathLike, owner=None, log=print) -> StageLock:
        """Lock ``stage_dir`` for ``owner`` (an object with a ``running`` attribute, e.g. a Trainer)."""
        stage_dir = Path(stage_dir)
        stage_dir.parent.mkdir(parents=True, exist_ok=True)
        key = str(stage_dir.resolve())
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is not None:                 # another Trainer of this process: shared while it is idle
                held.check_exclusive(owner)
                held._add(owner)
                return held
            path = lock_path(stage_dir)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise WorkbenchError(f"{stage_dir} is being trained by {_describe(read_holder(stage_dir))} "
                                         f"(lock {path}); wait for that run to end, stop it, or use another run "
                                         f"name") from None
                stale = read_holder(stage_dir)
                if stale.get("pid") and (stale.get("pid"), stale.get("host")) != (os.getpid(), socket.gethostname()):
                    log(f"{stage_dir}: took over the lock of {_describe(stale)}, which is no longer running")
                record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
                os.ftruncate(fd, 0)
                os.pwrite(fd, record.encode(), 0)
            except BaseException:
                os.close(fd)                     # closing drops the flock too
                raise
            lock = cls(stage_dir, fd, key)
            lock._add(owner)
            _HELD[key] = lock
            return lock

    def _add(self, owner) -> None:
        if owner is not None:
            self._owners.append(weakref.ref(owner))
            weakref.finalize(owner, self._forget)          # a Trainer that is garbage-collected lets go

    def _live(self) -> list:
        return [o for o in (r() for r in self._owners) if o is not None]

    def check_exclusive(self, owner) -> None:
        """Raise when another live owner in this process is running (two runs must not write one folder)."""
        if any(o is not owner and getattr(o, "running", False) for o in self._live()):
            raise WorkbenchError(f"{self.stage_dir} is being trained by another Trainer in this process; "
                                 f"stop it first (trainer.stop()) or use another run name")

    def _forget(self) -> None:
        with _HELD_GUARD:
            self._owners = [r for r in self._owners if r() is not None]
            if not self._owners:
                self._unlock()

    def release(self, owner=None) -> None:
        """``owner`` lets go; the lock is released when no owner is left (``owner=None``: at once). Idempotent."""
        with _HELD_GUARD:
            self._owners = [r for r in self._owners if r() is not None and r() is not owner]
            if owner is None or not self._owners:
                self._unlock()

    def _unlock(self) -> None:
        if self._fd is None:
            return
        _HELD.pop(self._key, None)
        try:
            os.ftruncate(self._fd, 0)            # an empty lock file: nobody holds it
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
