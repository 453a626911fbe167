"""Stopping a training run safely.

``StopSignal``: SIGINT / SIGTERM (Ctrl-C, a cluster's pre-emption) set a flag instead of killing the process; the
training loop checks it after each optimiser step, writes a resumable checkpoint and exits. A second signal
stops at once (the previous checkpoint is intact: writes are atomic).
"""
from __future__ import annotations

import signal
import threading


class StopSignal:
    """Context manager: while active, the first SIGINT/SIGTERM sets ``requested`` (and ``signum``)."""

    def __init__(self, signals=(signal.SIGINT, signal.SIGTERM)):
        self.signals = signals
        self.requested = False
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.requested:  # a second signal: the user means it
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set from there
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


class RunInterrupted(Exception):  # noqa: N818 - not an error: a requested stop
    """Raised after the resumable checkpoint is written; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
