"""The runtime's clock seam: decisions read time only through a ``Clock``.

Tests pass a :class:`ManualClock` and move time forward by hand, so backoff,
idle stops, sleep timeouts and patience are tested without waiting for them.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds, for durations and order."""

    def wall(self) -> float:
        """Seconds since the epoch, for people."""


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class ManualClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1.7e9 + self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
