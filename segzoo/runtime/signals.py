"""Preemption: SIGTERM / SIGINT finish the current step, save, and exit 128 + signal.

A scheduler (Slurm, Kubernetes) sends SIGTERM and a user presses Ctrl-C; either way the run
should keep its work. ``GracefulStop`` turns the first signal into a flag that the training loop
reads after each step (every rank then writes one ``latest`` and exits 143 / 130); a second
signal raises ``Preempted`` at once (temporary files are removed on the way out by
segzoo.runtime.atomic). ``die_with_parent`` makes the kernel send SIGTERM to this process when
its parent dies, so a kill -9 of the launcher never leaves a training process running.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


class Preempted(BaseException):
    """Raised by the second signal (BaseException: no `except Exception` swallows it)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class GracefulStop:
    """Install with install(); `signum` is the first signal received (None while none came)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def install(self) -> "GracefulStop":
        for s in self.SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum, _frame) -> None:
        if self.signum is not None:
            raise Preempted(signum)
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)


def die_with_parent(signum: int = signal.SIGTERM) -> bool:
    """Ask Linux to send `signum` to this process when its parent exits (prctl PR_SET_PDEATHSIG).
    Returns False where that is not available (other systems). If the parent already died before
    the call, the signal is sent to ourselves now."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent == 1 or os.getppid() != parent:  # orphaned before the call took effect
        os.kill(os.getpid(), signum)
    return True
