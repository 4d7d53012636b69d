"""The project's error type, and turning low-level write failures into one line that names the file and the fix.

    raise WorkbenchError(f"{path} is being trained by PID 12 on host-a; wait for it or use another run name")

    try:
        write_checkpoint()
    except Exception as err:
        raise write_failure(err, "checkpoint step_0000100", folder, needed_bytes=33_000_000) or err

The CLI prints a ``WorkbenchError`` (and ``ValueError``, ``OSError`` ...) as one ``error: ...`` line;
``--debug`` or ``WORKBENCH_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class WorkbenchError(Exception):
    """A failure the user can act on; its message names the file or setting and what to do."""


def debug_enabled() -> bool:
    """True when ``WORKBENCH_DEBUG`` is set to something other than 0 / empty (tracebacks wanted)."""
    return os.environ.get("WORKBENCH_DEBUG", "") not in ("", "0", "false", "no")


def os_error_in(err: BaseException) -> OSError | None:
    """The first ``OSError`` in ``err``'s chain (torch wraps a full disk in a RuntimeError "enforce fail")."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno is not None:
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free bytes on the file system of ``folder`` (or its nearest existing parent); None when unknown."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:,.0f} MB"


def no_space(what: str, folder: str | os.PathLike, needed_bytes: int | None, free: int | None = None) -> WorkbenchError:
    """The one-line error for a full disk (``free`` measured now when not given)."""
    free = free_bytes(folder) if free is None else free
    return WorkbenchError(f"no space left on the device writing {what} in {folder} (needs ~{_mb(needed_bytes)}, "
                          f"{_mb(free)} free); free some space (or keep fewer checkpoints: keep_last) "
                          f"and run again: it resumes from the last complete checkpoint")


def write_failure(err: BaseException, what: str, folder: str | os.PathLike,
                  needed_bytes: int | None = None) -> WorkbenchError | None:
    """A one-line ``WorkbenchError`` for a full, read-only, forbidden or vanished output folder; None otherwise."""
    os_err = os_error_in(err)
    if os_err is None:
        return None
    if os_err.errno in (errno.ENOSPC, errno.EDQUOT):
        return no_space(what, folder, needed_bytes)
    if os_err.errno == errno.EROFS:
        return WorkbenchError(f"cannot write {what}: {folder} is on a read-only file system; choose a writable "
                              f"runs_dir (--set runs_dir=...)")
    if os_err.errno in (errno.EACCES, errno.EPERM):
        return WorkbenchError(f"cannot write {what}: permission denied in {folder}; choose a folder you can write "
                              f"(--set runs_dir=...) or fix its permissions")
    if os_err.errno == errno.ENOENT:
        return WorkbenchError(f"cannot write {what}: the folder {folder} vanished while the run was writing it; "
                              f"restore it (or choose another runs_dir) and run again")
    return WorkbenchError(f"cannot write {what} in {folder}: {os_err.strerror or os_err}")


def out_of_memory(stage) -> WorkbenchError:
    """The one-line error for a training step that ran out of GPU memory (``stage``: a ``train.Stage``)."""
    bf16 = "" if stage.mixed_precision != "no" else ", or mixed_precision bf16"
    return WorkbenchError(f"out of GPU memory in a step of {stage.micro_batch} samples ({stage.model}, "
                          f"{stage.resolution} px, mask {stage.mask_ratio}): start this stage over (--fresh) with a "
                          f"lower micro_batch (--set micro_batch={max(1, stage.micro_batch // 2)}; accumulation keeps "
                          f"global_batch {stage.global_batch}){bf16}")
