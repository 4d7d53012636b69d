"""Ctrl-C, Kernel › Interrupt and SIGTERM as a request to stop: the run ends its step, checkpoints and returns.

    with StopOnInterrupt(trainer_stop_event) as interrupt:
        while not stop.is_set(): ...
    if interrupt.hit: print(f"stopped by {interrupt.signal_name} at step ...")

SIGTERM is what Slurm, Kubernetes and spot instances send before they preempt a job, so it is
handled like Ctrl-C: the checkpoint is written before the grace period ends. A second Ctrl-C while
the first is being handled raises ``KeyboardInterrupt`` as usual, so a step that hangs can still be
broken out of; a repeated SIGTERM is ignored (``torchrun`` forwards the one its agent received, and a
scheduler follows its grace period with SIGKILL anyway).
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signal_name: str) -> int:
    """The shell's exit code for a run stopped by ``signal_name``: 143 for SIGTERM, else 130 (SIGINT, or a
    ``Trainer.stop()`` request, reported as ``"stop"``)."""
    return 128 + (signal.SIGTERM if signal_name == "SIGTERM" else signal.SIGINT)


class StopOnInterrupt:
    """Context manager: SIGINT / SIGTERM set ``stop`` (a ``threading.Event``) instead of ending the process.

    Only on the main thread; elsewhere (a background thread, where Python cannot install signal
    handlers) it does nothing. ``hit`` tells whether a signal came, ``signum`` which one.
    """

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def hit(self) -> bool:
        """True once a stop signal arrived."""
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        """``"SIGTERM"``, ``"SIGINT"``, or ``""`` when no signal came."""
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_code(self) -> int:
        """The shell's code for the signal: 130 for SIGINT, 143 for SIGTERM."""
        return exit_code(self.signal_name)

    def _handle(self, signum, frame) -> None:
        if self.hit and signum == signal.SIGTERM:      # resent by a launcher or scheduler: already stopping
            return
        if self.hit:                                   # a second Ctrl-C: give up waiting for the step
            self.__exit__()
            raise KeyboardInterrupt
        self.signum = signum
        self.stop.set()

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():   # put back exactly what was there (SIG_IGN, SIG_DFL, ...)
            if previous is None:
                previous = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
            signal.signal(signum, previous)
        self._previous = {}
