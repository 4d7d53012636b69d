"""Ctrl-C and Kernel › Interrupt as a request to stop: the run ends its step, checkpoints and returns.

    with StopOnInterrupt(trainer_stop_event) as interrupt:
        while not stop.is_set(): ...
    if interrupt.hit: print("interrupted at step ...")

A second interrupt while the first is being handled raises ``KeyboardInterrupt`` as usual, so a
step that hangs can still be broken out of.
"""

from __future__ import annotations

import signal
import threading


class StopOnInterrupt:
    """Context manager: SIGINT sets ``stop`` (a ``threading.Event``) instead of raising, on the main thread only.

    Elsewhere (a background thread, where Python cannot install signal handlers) it does nothing.
    """

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.hit = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.hit:                                   # the second Ctrl-C: give up waiting for the step
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            raise KeyboardInterrupt
        self.hit = True
        self.stop.set()

    def __enter__(self) -> "StopOnInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
