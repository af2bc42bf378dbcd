"""The first matching time window against a brute-force minute-of-week reference; expressions never raise."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from functions.policy.conditions import check, first_window

DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
WEEK = 7 * 1440


# ---------------------------------------------------------------- an independent reference of the grammar

def ref_days(token: str) -> set[int]:
    """Walk the day range forward one day at a time (a range may wrap past Sat)."""
    first, _, last = token.partition("-")
    day, out = DAYS.index(first), set()
    while True:
        out.add(day)
        if DAYS[day] == (last or first):
            return out
        day = (day + 1) % 7


def ref_minutes(token: str) -> set[int]:
    start, _, end = token.partition("-")
    a = int(start[:2]) * 60 + int(start[2:])
    b = int(end[:2]) * 60 + int(end[2:]) if end else a + 1
    return set(range(a, b))


def ref_covered(spec: str) -> set[int]:
    """Every minute of the week (0 = Sun 00:00) the spec covers, enumerated one minute at a time."""
    if not spec.strip():
        return set(range(WEEK))
    covered: set[int] = set()
    for period in spec.split(";"):
        tokens = period.split()
        days = [t for t in tokens if t[0].isalpha()]
        times = [t for t in tokens if t[0].isdigit()]
        day_set = set().union(*(ref_days(t) for t in days)) if days else set(range(7))
        minute_set = set().union(*(ref_minutes(t) for t in times)) if times else set(range(1440))
        for m in range(WEEK):
            if m // 1440 in day_set and m % 1440 in minute_set:
                covered.add(m)
    return covered


hhmm = st.integers(0, 1439).map(lambda m: f"{m // 60:02d}{m % 60:02d}")
time_token = st.one_of(hhmm, st.tuples(st.integers(0, 1438), st.integers(1, 1439)).filter(lambda p: p[0] < p[1])
                       .map(lambda p: f"{p[0] // 60:02d}{p[0] % 60:02d}-{p[1] // 60:02d}{p[1] % 60:02d}"))
day_token = st.one_of(st.sampled_from(DAYS), st.tuples(st.sampled_from(DAYS), st.sampled_from(DAYS))
                      .map(lambda p: f"{p[0]}-{p[1]}"))
period = st.tuples(st.lists(day_token, max_size=2), st.lists(time_token, max_size=3)) \
    .filter(lambda p: p[0] or p[1]).map(lambda p: " ".join(p[0] + p[1]))
spec = st.one_of(st.just(""), st.lists(period, min_size=1, max_size=3).map("; ".join))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(spec, st.integers(1, 9)), min_size=1, max_size=4),
       st.integers(1_600_000_000, 1_900_000_000), st.sampled_from(ZONES))
def test_first_window_matches_brute_force_reference(windows: list[tuple[str, int]], now: int, tz: str) -> None:
    policy_windows = {f"w{i}": {"spec": s, "min": low} for i, (s, low) in enumerate(windows)}
    local = datetime.fromtimestamp(now, tz=UTC).astimezone(ZoneInfo(tz))
    minute_of_week = ((local.weekday() + 1) % 7) * 1440 + local.hour * 60 + local.minute
    expected = next(((f"w{i}", low) for i, (s, low) in enumerate(windows) if minute_of_week in ref_covered(s)), None)
    pick, problems = first_window(policy_windows, now, tz)
    assert pick == expected
    assert problems == []


def test_first_window_order_and_bad_windows() -> None:
    tue_1000 = datetime(2024, 1, 9, 10, 0, tzinfo=UTC).timestamp()
    windows = {"bad": {"spec": "Monday", "min": 9}, "morn": {"spec": "Mon-Fri 0900-1300", "min": 6},
               "all": {"spec": "", "min": 2}}
    pick, problems = first_window(windows, tue_1000, "UTC")
    assert pick == ("morn", 6) and len(problems) == 1 and "bad" in problems[0]
    assert first_window(windows, datetime(2024, 1, 13, 10, 0, tzinfo=UTC).timestamp(), "UTC")[0] == ("all", 2)
    assert first_window({"x": {"spec": "Mon 0900"}}, tue_1000, "UTC")[0] is None
    assert first_window(None, tue_1000, "UTC") == (None, ["no windows"])
    # 10:00 UTC on Tuesday is 05:00 in New York: outside the morning window there
    assert first_window({"morn": {"spec": "Mon-Fri 0900-1300", "min": 6}}, tue_1000, "America/New_York")[0] is None


# ---------------------------------------------------------------- expressions never raise

NAMES = ["avgcpu", "numvms", "nummissing", "numunknown", "numfailed", "numfail"]
atoms = st.one_of(st.sampled_from(NAMES), st.sampled_from(["0", "1", "0.5", "50", "100"]))


def combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(children, st.sampled_from(["+", "-", "*", "/"]), children).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        children.map(lambda c: f"-{c}"))


numbers = st.recursive(atoms, combine, max_leaves=6)
comparisons = st.tuples(numbers, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), numbers).map(" ".join)
conditions = st.recursive(comparisons, lambda c: st.one_of(
    st.tuples(c, st.sampled_from(["&&", "||", "and", "or"]), c).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
    c.map(lambda x: f"!({x})")), max_leaves=4)
values = st.one_of(st.just(0.0), st.just(math.nan), st.just(math.inf), st.just(-math.inf),
                   st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**400, 10**400))


@settings(max_examples=300, deadline=None)
@given(st.one_of(conditions, st.text(max_size=40)), st.dictionaries(st.sampled_from(NAMES), values))
def test_check_never_raises(text: str, env: dict[str, float]) -> None:
    outcome = check(text, env)
    assert isinstance(outcome.value, bool)
    assert outcome.error is None or (isinstance(outcome.error, str) and not outcome.value)


def test_division_by_zero_is_false_with_a_message() -> None:
    guide = "(numunknown + nummissing + numfail)/numvms > 0.50"
    outcome = check(guide, {"numvms": 0, "numunknown": 0, "nummissing": 0, "numfailed": 0})
    assert outcome.value is False and "division by zero" in (outcome.error or "")
    assert check(guide, {"numvms": 3, "numunknown": 1, "nummissing": 1, "numfailed": 0}).value is True   # 2/3
    assert check(guide, {"numvms": 4, "numunknown": 1, "nummissing": 1, "numfailed": 0}).value is False  # 1/2


def test_missing_or_non_finite_metric_is_false_with_a_message() -> None:
    missing = check("avgcpu > 50", {"numvms": 2})
    assert missing.value is False and "avgcpu" in (missing.error or "")
    for bad in (math.nan, math.inf):
        outcome = check("avgcpu > 50 || numvms > 0", {"avgcpu": bad, "numvms": 2})
        assert outcome.value is False and "avgcpu" in (outcome.error or "")
    assert check("numvms > 1", {"numvms": 2, "avgcpu": math.nan}).value is True     # unused values do not matter
    assert check("avgcpu >", {}).error and check(None, {}).error
    assert check("__import__('os')", {}).value is False
