"""Widget events while a cell runs: a button that works during a foreground ``trainer.run()``.

A notebook cell that runs ``trainer.run()`` keeps the kernel's main thread busy, so a button's
click waits in the kernel's queue until the cell ends, which is too late for a Stop button.
ipykernel 7 runs *subshells*: threads with their own message queue. Routing one widget's messages
to a subshell lets its click handler run at once, on that thread, while the cell is still running::

    stop = ipywidgets.Button(description="Stop")
    stop.on_click(lambda _b: trainer.stop(wait=False))
    live = handle_during_cells(stop)      # True in an ipykernel 7 kernel; False elsewhere (nothing changes)

The handler then runs on another thread than the cell, so it must be thread-safe (setting a
``threading.Event`` is). Outside a kernel that supports subshells the widget keeps the normal
behaviour: its events run once the cell ends.
"""

from __future__ import annotations

import threading

from ..kernel import running_kernel

_SUBSHELL: str | None = None
_SUBSHELL_LOCK = threading.Lock()


def event_subshell(timeout: float = 5.0) -> str | None:
    """The id of this process's widget-event subshell (made on first use); None where subshells are not supported."""
    global _SUBSHELL
    kernel = running_kernel()
    channel = getattr(kernel, "shell_channel_thread", None)
    manager = getattr(channel, "manager", None)
    if kernel is None or channel is None or not hasattr(manager, "_create_subshell"):
        return None
    with _SUBSHELL_LOCK:
        if _SUBSHELL is None:
            made: dict = {}
            ready = threading.Event()

            def create():                      # subshells are made on the shell-channel thread
                try:
                    made["id"] = manager._create_subshell()
                except Exception as err:       # an ipykernel whose internals differ: no live events
                    made["error"] = err
                ready.set()

            channel.io_loop.add_callback(create)
            if not ready.wait(timeout) or "id" not in made:
                return None
            _SUBSHELL = made["id"]
        return _SUBSHELL


def handle_during_cells(widget) -> bool:
    """Route ``widget``'s messages from the browser to the event subshell; True when they now run at once.

    ipykernel asks a comm's ``_reply_subshell_for(data, default)`` which subshell a message goes to;
    this widget's answer is always the event subshell.
    """
    comm = getattr(widget, "comm", None)
    if comm is None or not hasattr(comm, "_reply_subshell_for"):
        return False
    subshell = event_subshell()
    if subshell is None:
        return False
    comm._reply_subshell_for = lambda data, default: subshell
    return True
