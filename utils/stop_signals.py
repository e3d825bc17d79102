"""SIGINT/SIGTERM handling for the dispatchers: stop cleanly, never mid-bookkeeping.

A signal is only turned into an Interrupted exception while the dispatcher is blocked
waiting (inside `interruptible()`); elsewhere it is recorded and raised at the next
`check()`.  So a job is never started or submitted without the dispatcher knowing it.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """A stop signal reached the dispatcher; exit status 128 + signum by convention."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Installs handlers for STOP_SIGNALS on construction."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._waiting = False
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self.signum = signum
        if self._waiting:
            raise Interrupted(signum)

    def check(self) -> None:
        """Raise Interrupted if a stop signal arrived since the handlers were installed."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """Let a stop signal interrupt the blocking calls made inside this block."""
        self._waiting = True
        try:
            self.check()
            yield
        finally:
            self._waiting = False

    @staticmethod
    def ignore() -> None:
        """Ignore further stop signals (while cleaning up after the first one)."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
