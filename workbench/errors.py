"""The project's error type, and turning low-level write failures into one line that names the file and the fix.

    raise WorkbenchError(f"{path} is being trained by PID 12 on host-a; wait for it or use another run name")

    try:
        write_checkpoint()
    except Exception as err:
        raise write_failure(err, "checkpoint step_0000100", folder, needed_bytes=33_000_000) or err

The CLI prints a ``WorkbenchError`` (``InputError`` and ``MissingFileError`` are its ``ValueError`` and
``FileNotFoundError`` forms) and an ``OSError`` about a named file as one ``error: ...`` line; any other
exception is a bug and keeps its traceback. ``--debug`` or ``WORKBENCH_DEBUG=1`` shows the traceback always.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path


class WorkbenchError(Exception):
    """A failure the user can act on; its message names the file or setting and what to do."""


class InputError(WorkbenchError, ValueError):
    """A bad value, setting, shape or file content that the user gave; the message says which and what to give."""


class MissingFileError(WorkbenchError, FileNotFoundError):
    """A file or folder the user named (or that a step needs) is not there; the message says where it looked."""


def debug_enabled() -> bool:
    """True when ``WORKBENCH_DEBUG`` is set to something other than 0 / empty (tracebacks wanted)."""
    return os.environ.get("WORKBENCH_DEBUG", "") not in ("", "0", "false", "no")


# messages of writers that report a full disk in their own exception type (safetensors' SafetensorError)
_TEXT_ERRNOS = (("No space left on device", errno.ENOSPC), ("Disk quota exceeded", errno.EDQUOT),
                ("Read-only file system", errno.EROFS), ("Permission denied", errno.EACCES))


def os_error_in(err: BaseException) -> OSError | None:
    """The first ``OSError`` in ``err``'s chain, or one read from a writer's message.

    torch wraps a full disk in a RuntimeError ("enforce fail"); safetensors raises ``SafetensorError``
    ("I/O error: No space left on device"), which is no ``OSError`` at all.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno is not None:
            return err
        for text, code in _TEXT_ERRNOS:
            if text in str(err):
                return OSError(code, os.strerror(code))
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _existing(folder: str | os.PathLike) -> Path:
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free bytes on the file system of ``folder`` (or its nearest existing parent); None when unknown."""
    try:
        return shutil.disk_usage(_existing(folder)).free
    except OSError:
        return None


def free_inodes(folder: str | os.PathLike) -> int | None:
    """Files that can still be created on the file system of ``folder``; None when it does not count them."""
    try:
        st = os.statvfs(_existing(folder))
    except (OSError, AttributeError):
        return None
    return st.f_favail if st.f_files else None


FILES_PER_CHECKPOINT = 8                 # files and folders one checkpoint creates (with its temp folder)


def has_room(free: int | None, needed_bytes: int | None) -> bool:
    """Whether ``free`` bytes hold ``needed_bytes`` with 5% and 1 MB to spare (unknown sizes: assume so)."""
    return free is None or needed_bytes is None or free >= needed_bytes * 1.05 + (1 << 20)


def size_text(n: int | None) -> str:
    """``"6.2 MB"``, ``"512 KB"``, ``"1.3 GB"``: enough digits that "needs 6.2 MB, 5.9 MB free" reads right."""
    if n is None:
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:,.1f} {unit}" if value < 100 else f"{value:,.0f} {unit}"
    return f"{n} bytes"


def no_space(what: str, folder: str | os.PathLike, needed_bytes: int | None, free: int | None = None,
             keep_last: int | None = None) -> WorkbenchError:
    """The one-line error for a full disk or a file system out of inodes, with the fix that applies.

    ``keep_last`` (checkpoints only): the workbench needs room for keep_last + 1 checkpoints, so fewer
    is advised only when there are more than one to keep.
    """
    free = free_bytes(folder) if free is None else free
    inodes = free_inodes(folder)
    roomy = needed_bytes is not None and free is not None and has_room(free, needed_bytes)
    if inodes == 0 or (roomy and inodes is not None and inodes < FILES_PER_CHECKPOINT * 4):   # space is not it
        state = f"no free inodes (files) left on its file system: {inodes} inodes, {size_text(free)} free"
        fix = "delete files there (many small ones) or choose another runs_dir (--set runs_dir=...)"
    else:
        state = f"needs ~{size_text(needed_bytes)}, {size_text(free)} free" + (
            f", {inodes:,} inodes free" if inodes is not None else "")
        fix = "free some space or choose another runs_dir (--set runs_dir=...)"
        if keep_last is not None and keep_last > 1:
            fix += f", or keep fewer checkpoints (keep_last={keep_last - 1}; it needs room for keep_last + 1)"
    return WorkbenchError(f"no space left on the device writing {what} in {folder} ({state}); {fix}, and run "
                          f"again: it resumes from the last complete checkpoint")


def write_failure(err: BaseException, what: str, folder: str | os.PathLike,
                  needed_bytes: int | None = None, keep_last: int | None = None) -> WorkbenchError | None:
    """A one-line ``WorkbenchError`` for a full, read-only, forbidden or vanished output folder; None otherwise."""
    os_err = os_error_in(err)
    if os_err is None:
        return None
    if os_err.errno in (errno.ENOSPC, errno.EDQUOT):
        return no_space(what, folder, needed_bytes, keep_last=keep_last)
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


@contextmanager
def writing(what: str, folder: str | os.PathLike):
    """Context manager: a full, read-only or vanished folder while writing ``what`` becomes one line naming it::

        with writing("metrics.jsonl", stage_dir):
            log.write(record)
    """
    try:
        yield
    except WorkbenchError:
        raise
    except Exception as err:
        friendly = write_failure(err, what, folder)
        if friendly is None:
            raise
        raise friendly from err


def out_of_memory(stage) -> WorkbenchError:
    """The one-line error for a training step that ran out of GPU memory (``stage``: a ``train.Stage``)."""
    bf16 = "" if stage.mixed_precision != "no" else ", or mixed_precision bf16"
    return WorkbenchError(f"out of GPU memory in a step of {stage.micro_batch} samples ({stage.model}, "
                          f"{stage.resolution} px, mask {stage.mask_ratio}): start this stage over (--fresh) with a "
                          f"lower micro_batch (--set micro_batch={max(1, stage.micro_batch // 2)}; accumulation keeps "
                          f"global_batch {stage.global_batch}){bf16}")
