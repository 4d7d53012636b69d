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
        self._installed, self._previous = False, None

    def _handle(self, signum, frame) -> None:
        if self.hit:                                   # the second Ctrl-C: give up waiting for the step
            self.__exit__()
            raise KeyboardInterrupt
        self.hit = True
        self.stop.set()

    def __enter__(self) -> "StopOnInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:                            # put back exactly what was there (SIG_IGN, SIG_DFL, ...)
            previous = self._previous if self._previous is not None else signal.default_int_handler
            signal.signal(signal.SIGINT, previous)
            self._installed = False
