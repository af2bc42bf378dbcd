"""The injectable clock: every module asks it for the time, tests replace it.

In-process tests pass a FakeClock. Tests of the real stack (several processes) set CARINA_CLOCK_SKEW_FILE for
every Carina process: `system_clock` then runs ahead of the system's time by the seconds that file holds, read
again at most every SKEW_EVERY s, so a test moves every process to the next minute at once instead of waiting
for it (tests/stack.py Stack.run_minute). Unset (always, outside tests): the system's time.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], float]

SKEW_FILE = os.environ.get("CARINA_CLOCK_SKEW_FILE") or None
SKEW_EVERY = 0.1             # seconds between two reads of the skew file
_skew = [0.0, 0.0]           # the seconds last read, when to read again (time.monotonic)


def system_clock() -> float:
    """Seconds since the epoch, from the system (plus the skew of CARINA_CLOCK_SKEW_FILE, when set)."""
    if SKEW_FILE is None:
        return time.time()
    return time.time() + _skew_now(SKEW_FILE)


def _skew_now(path: str) -> float:
    """The skew file's seconds, read again once SKEW_EVERY s have passed (an unreadable, empty or non-finite one
    keeps the last value). Safe from several threads (a race reads the file twice)."""
    mono = time.monotonic()
    if mono >= _skew[1]:
        try:
            with open(path) as fh:
                value = float(fh.read().strip() or _skew[0])
            _skew[0] = value if math.isfinite(value) else _skew[0]
        except (OSError, ValueError):
            pass
        _skew[1] = mono + SKEW_EVERY
    return _skew[0]


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
