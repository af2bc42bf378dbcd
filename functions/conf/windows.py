"""Time windows in the original Carina grammar (`Mon-Fri 0900-1300; Sat 1000`). Pure.

A spec is periods separated by `;`; a period is whitespace-separated tokens: days (`Sun`..`Sat`, exact
case), inclusive day ranges that may wrap (`Fri-Mon`), single minutes (`HHMM`) and minute ranges
(`HHMM-HHMM`, start < end, end minute excluded). A period matches when (no day tokens or one matches)
and (no time tokens or one matches); the window matches when any period does. An empty spec always
matches. Evaluation is in an IANA time zone through zoneinfo.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
MAX_SPEC = 1024
_DAY_RANGE = re.compile(r"([A-Z][a-z]{2})(?:-([A-Z][a-z]{2}))?")
_TIME_RANGE = re.compile(r"([0-9]{4})(?:-([0-9]{4}))?")
_TZ_NAME = re.compile(r"[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+)*")


class WindowSyntaxError(ValueError):
    """A time-window spec outside the grammar; the message names the offending token."""


@dataclass(frozen=True)
class Period:
    """Day ranges as (first, last) with 0 = Sun (inclusive, may wrap); minute ranges as [start, end)."""

    days: tuple[tuple[int, int], ...] = ()
    times: tuple[tuple[int, int], ...] = ()

    def matches(self, weekday: int, minute: int) -> bool:
        """True if the day (0 = Sun) and minute of the day fall inside this period."""
        day_ok = not self.days or any(_day_in(weekday, a, b) for a, b in self.days)
        time_ok = not self.times or any(a <= minute < b for a, b in self.times)
        return day_ok and time_ok


@dataclass(frozen=True)
class Window:
    """A parsed spec; `tz` is the IANA zone used when `contains` is not given one."""

    periods: tuple[Period, ...] = ()
    tz: str = "UTC"

    def contains(self, dt: datetime, tz: str | None = None) -> bool:
        """True if the tz-aware `dt`, seen in zone `tz` (default self.tz), falls inside the window."""
        if dt.tzinfo is None or dt.utcoffset() is None:
            raise ValueError("dt must be timezone-aware")
        if not self.periods:
            return True
        local = dt.astimezone(zone(tz or self.tz))
        weekday = (local.weekday() + 1) % 7
        minute = local.hour * 60 + local.minute
        return any(p.matches(weekday, minute) for p in self.periods)


def _day_in(day: int, first: int, last: int) -> bool:
    if first <= last:
        return first <= day <= last
    return day >= first or day <= last


def zone(name: str) -> ZoneInfo:
    """The ZoneInfo for an IANA name. Raises WindowSyntaxError for an unknown or malformed name."""
    if not isinstance(name, str) or not _TZ_NAME.fullmatch(name) or ".." in name or len(name) > 64:
        raise WindowSyntaxError(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise WindowSyntaxError(f"unknown time zone {name!r}") from exc


def _day(token: str, name: str) -> int:
    if name not in DAYS:
        raise WindowSyntaxError(f"`{token}`: `{name}` is not a day (use {' '.join(DAYS)})")
    return DAYS.index(name)


def _minute(token: str, hhmm: str) -> int:
    hours, minutes = int(hhmm[:2]), int(hhmm[2:])
    if hours > 23 or minutes > 59:
        raise WindowSyntaxError(f"`{token}`: `{hhmm}` is not a time (HHMM, 0000 to 2359)")
    return hours * 60 + minutes


def _parse_period(text: str) -> Period:
    days: list[tuple[int, int]] = []
    times: list[tuple[int, int]] = []
    for token in text.split():
        day = _DAY_RANGE.fullmatch(token)
        clock = _TIME_RANGE.fullmatch(token)
        if day:
            first = _day(token, day.group(1))
            days.append((first, _day(token, day.group(2)) if day.group(2) else first))
        elif clock:
            start = _minute(token, clock.group(1))
            end = _minute(token, clock.group(2)) if clock.group(2) else start + 1
            if clock.group(2) and end <= start:
                raise WindowSyntaxError(f"`{token}`: the start must be before the end (no midnight wrap)")
            times.append((start, end))
        else:
            raise WindowSyntaxError(f"`{token}` is not a day (Sun..Sat, Mon-Fri) or a time (HHMM, HHMM-HHMM)")
    return Period(tuple(days), tuple(times))


def parse_window(spec: str, tz: str = "UTC") -> Window:
    """Parse a window spec (pure, safe to run twice). Raises WindowSyntaxError naming the bad token."""
    if not isinstance(spec, str):
        raise WindowSyntaxError("the window spec must be a string")
    if len(spec) > MAX_SPEC:
        raise WindowSyntaxError(f"the window spec is longer than {MAX_SPEC} characters")
    zone(tz)
    if not spec.strip():
        return Window((), tz)
    periods = []
    for number, part in enumerate(spec.split(";"), start=1):
        if not part.strip():
            raise WindowSyntaxError(f"period {number} is empty (stray `;`)")
        periods.append(_parse_period(part))
    return Window(tuple(periods), tz)


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}{minute % 60:02d}"


def format_window(window: Window) -> str:
    """The spec text of a window; parse_window(format_window(w), w.tz) == w."""
    parts = []
    for period in window.periods:
        tokens = [DAYS[a] if a == b else f"{DAYS[a]}-{DAYS[b]}" for a, b in period.days]
        for start, end in period.times:
            tokens.append(_hhmm(start) if end == start + 1 else f"{_hhmm(start)}-{_hhmm(end)}")
        parts.append(" ".join(tokens))
    return "; ".join(parts)
