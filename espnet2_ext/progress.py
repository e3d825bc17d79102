"""Progress lines for long jobs (dumping, decoding): done/total, rate and the time left, every N items.

A 7,000-utterance decoding job or a 120,000-utterance dump runs for minutes to hours with nothing
else in its log; these lines say it is alive and when it will end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta


class Progress:
    """``what: done/total unit (pct), rate unit/s, elapsed, ETA`` each time ``done`` passes a multiple of
    ``every``, and once at the end."""

    def __init__(
        self, what: str, total: int, every: int, unit: str = "utt", clock: Callable[[], float] = time.monotonic
    ) -> None:
        if every < 1:
            raise ValueError(f"progress interval must be >= 1, got {every}")
        self.what, self.total, self.every, self.unit, self.clock = what, total, every, unit, clock
        self.start = clock()
        self.reported = 0

    def update(self, done: int) -> None:
        """``done`` items of ``total`` are finished."""
        if done // self.every > self.reported // self.every or (done >= self.total > self.reported):
            self.reported = done
            elapsed = max(self.clock() - self.start, 1e-9)
            rate = done / elapsed
            left = (self.total - done) / rate if rate > 0 else float("inf")
            eta = str(timedelta(seconds=round(left))) if left != float("inf") else "unknown"
            logging.info(
                "%s: %d/%d %s (%.1f%%), %.2f %s/s, elapsed %s, ETA %s", self.what, done, self.total, self.unit,
                100.0 * done / max(self.total, 1), rate, self.unit, timedelta(seconds=round(elapsed)), eta,
            )  # fmt: skip
