"""Time windows: the behaviour doc's parity scenario 9, errors, time zones, and properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from functions.conf.windows import DAYS, Period, Window, WindowSyntaxError, format_window, parse_window


def at(day: str, hhmm: str) -> datetime:
    """A UTC datetime in the week of Sun 2024-01-07 (so Mon is the 8th)."""
    base = datetime(2024, 1, 7, tzinfo=UTC) + timedelta(days=DAYS.index(day))
    return base.replace(hour=int(hhmm[:2]), minute=int(hhmm[2:]))


def test_parity_scenario_9() -> None:
    office = parse_window("Mon-Fri 0900-1300")
    assert office.contains(at("Wed", "1259"))
    assert not office.contains(at("Wed", "1300"))
    assert not office.contains(at("Sat", "1000"))
    night = parse_window("Mon-Fri 0000-0859 1700-2359")
    assert night.contains(at("Tue", "1730"))
    assert not night.contains(at("Tue", "0859"))
    assert not night.contains(at("Tue", "2359"))          # the end minute is excluded
    assert parse_window("Fri-Mon").contains(at("Sun", "1200"))
    assert not parse_window("Fri-Mon").contains(at("Wed", "1200"))
    assert parse_window("Sat 0700-0800; Sun 0800-0900").contains(at("Sun", "0830"))
    assert not parse_window("Sat 0700-0800; Sun 0800-0900").contains(at("Sat", "0830"))
    assert parse_window("").contains(at("Thu", "0314"))
    assert parse_window("   ").contains(at("Thu", "0314"))
    with pytest.raises(WindowSyntaxError, match="`Monday`"):
        parse_window("Monday")


def test_single_minute_and_time_only_periods() -> None:
    one = parse_window("1230")
    assert one.contains(at("Mon", "1230")) and one.contains(at("Sat", "1230"))
    assert not one.contains(at("Mon", "1231")) and not one.contains(at("Mon", "1229"))
    assert parse_window("Tue").contains(at("Tue", "0000")) and parse_window("Tue").contains(at("Tue", "2359"))
    assert parse_window("Sat-Sat").periods == (Period(((6, 6),), ()),)


@pytest.mark.parametrize(("spec", "fragment"), [
    ("Monday", "`Monday`"),
    ("mon", "`mon`"),
    ("MON", "`MON`"),
    ("Mon-Fry", "`Fry` is not a day"),
    ("Mon-", "`Mon-`"),
    ("0900-0900", "start must be before the end"),
    ("2300-0100", "no midnight wrap"),
    ("2400", "`2400` is not a time"),
    ("0960", "`0960` is not a time"),
    ("900-1300", "`900-1300`"),
    ("09:00-13:00", "`09:00-13:00`"),
    ("Mon 0900-1300;", "period 2 is empty"),
    ("; Mon", "period 1 is empty"),
    ("Mon,Tue", "`Mon,Tue`"),
    ("\u0660\u0669\u0660\u0660", "is not a day"),
])
def test_bad_specs_name_the_token(spec: str, fragment: str) -> None:
    with pytest.raises(WindowSyntaxError) as info:
        parse_window(spec)
    assert fragment in str(info.value)


def test_time_zones() -> None:
    office = parse_window("Mon-Fri 0900-1700", tz="Europe/Paris")
    assert office.tz == "Europe/Paris"
    assert office.contains(datetime(2024, 1, 8, 8, 30, tzinfo=UTC))           # 09:30 in Paris
    assert not office.contains(datetime(2024, 1, 8, 8, 30, tzinfo=UTC), tz="UTC")
    assert not office.contains(datetime(2024, 7, 8, 15, 30, tzinfo=UTC))     # 17:30 CEST
    # the Saturday evening in New York is already Sunday in UTC
    sat = parse_window("Sat")
    dt = datetime(2024, 1, 13, 22, 0, tzinfo=ZoneInfo("America/New_York"))
    assert sat.contains(dt, tz="America/New_York") and not sat.contains(dt)
    with pytest.raises(ValueError, match="timezone-aware"):
        sat.contains(datetime(2024, 1, 13, 22, 0))
    for bad in ("Mars/Olympus", "../../etc/passwd", "/etc/localtime", "", "Europe/Paris\x00"):
        with pytest.raises(WindowSyntaxError, match="unknown time zone"):
            parse_window("Mon", tz=bad)


def test_dst_gap_and_fold() -> None:
    window = parse_window("Sun 0200-0300", tz="Europe/Paris")
    # 2024-03-31 02:00-03:00 does not exist in Paris: 00:59 UTC is 01:59 CET, 01:00 UTC is 03:00 CEST
    assert not window.contains(datetime(2024, 3, 31, 0, 59, tzinfo=UTC))
    assert not window.contains(datetime(2024, 3, 31, 1, 0, tzinfo=UTC))
    # 2024-10-27 02:00-03:00 happens twice: both are inside
    assert window.contains(datetime(2024, 10, 27, 0, 30, tzinfo=UTC))
    assert window.contains(datetime(2024, 10, 27, 1, 30, tzinfo=UTC))
    assert not window.contains(datetime(2024, 10, 27, 2, 0, tzinfo=UTC))


def test_format_round_trip_examples() -> None:
    for spec in ("Mon-Fri 0900-1300", "Mon-Fri 0000-0859 1700-2359", "Fri-Mon", "Sat 0700-0800; Sun 0800-0900",
                 "1230", "Tue Thu 0000-2359"):
        assert format_window(parse_window(spec)) == spec
    assert format_window(parse_window("  0900-1300   Mon-Fri ;Sat ")) == "Mon-Fri 0900-1300; Sat"
    assert format_window(parse_window("Mon 1230-1231")) == "Mon 1230"


# -- properties ------------------------------------------------------------------------------

def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}{minute % 60:02d}"


_day_tokens = st.tuples(st.integers(0, 6), st.integers(0, 6)).map(
    lambda p: DAYS[p[0]] if p[0] == p[1] else f"{DAYS[p[0]]}-{DAYS[p[1]]}")
_time_tokens = st.integers(0, 1439).flatmap(
    lambda a: st.just(_hhmm(a)) | st.integers(a + 1, 1439).map(lambda b: f"{_hhmm(a)}-{_hhmm(b)}")
    if a < 1439 else st.just(_hhmm(a)))
_periods = st.lists(_day_tokens | _time_tokens, min_size=1, max_size=5).map(" ".join)
_specs = st.lists(_periods, min_size=0, max_size=4).map("; ".join)


def _reference(spec: str, weekday: int, minute: int) -> bool:
    """Brute force: expand every period into the set of (day, minute) pairs it covers."""
    if not spec.strip():
        return True
    for period in spec.split(";"):
        days: set[int] = set()
        minutes: set[int] = set()
        has_days = has_times = False
        for token in period.split():
            if token[0].isalpha():
                has_days = True
                first, _, last = token.partition("-")
                day = DAYS.index(first)
                days.add(day)
                while last and day != DAYS.index(last):
                    day = (day + 1) % 7
                    days.add(day)
            else:
                has_times = True
                start, _, end = token.partition("-")
                lo = int(start[:2]) * 60 + int(start[2:])
                hi = int(end[:2]) * 60 + int(end[2:]) if end else lo + 1
                minutes.update(range(lo, hi))
        if (not has_days or weekday in days) and (not has_times or minute in minutes):
            return True
    return False


@settings(max_examples=300, deadline=None)
@given(_specs)
def test_parse_format_round_trip(spec: str) -> None:
    window = parse_window(spec)
    assert parse_window(format_window(window)) == window


@settings(max_examples=300, deadline=None)
@given(_specs, st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
       st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]))
def test_contains_matches_brute_force(spec: str, dt: datetime, tz: str) -> None:
    local = dt.astimezone(ZoneInfo(tz))
    weekday = (local.weekday() + 1) % 7
    assert parse_window(spec, tz).contains(dt) == _reference(spec, weekday, local.hour * 60 + local.minute)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60) | st.text(alphabet="MonTuesWdhFriSat 0123456789-;:", max_size=40))
def test_any_text_gives_a_window_or_window_syntax_error(spec: str) -> None:
    try:
        window = parse_window(spec)
    except WindowSyntaxError:
        return
    assert isinstance(window, Window)
    assert isinstance(window.contains(datetime(2024, 1, 1, tzinfo=UTC)), bool)
