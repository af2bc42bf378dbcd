"""The injectable clock: every module asks it for the time, tests replace it."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], float]


def system_clock() -> float:
    """Seconds since the epoch, from the system."""
    return time.time()


def utc(ts: float) -> datetime:
    """A tz-aware UTC datetime for an epoch timestamp."""
    return datetime.fromtimestamp(ts, tz=UTC)


class FakeClock:
    """A clock that moves only when told to (for tests). Safe to share between threads."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
