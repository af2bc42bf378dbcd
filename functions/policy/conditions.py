"""Policy expressions and time windows as the decision code needs them: never raising, compiled once. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from functions.conf.expr import ALIASES, CompiledExpr, ExprError, compile_expr, evaluate_canonical
from functions.conf.windows import Window, WindowSyntaxError, parse_window


@dataclass(frozen=True)
class Outcome:
    """An expression's value; `error` says why it was forced to false (bad text, division by zero, no data)."""

    value: bool
    error: str | None = None


_TRUE, _FALSE = Outcome(True), Outcome(False)
_BIG = 2**53                 # an int below it in magnitude converts to float without OverflowError

def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf


@lru_cache(maxsize=1024)
def _compiled(text: str) -> CompiledExpr | ExprError:
    try:
        return compile_expr(text)
    except ExprError as exc:
        return exc


class Clean(dict[str, float]):
    """Expression variables made usable once (floats only, aliases also under their target name): `check`
    takes them as they are, so an environment's several expressions clean its variables once. Made only by
    `cleaned`: a canonical name's value is the one its last key (itself or an alias) gave."""


def cleaned(values: Mapping[str, Any]) -> Clean:
    """`values` without the non-numbers, each alias also under the name it stands for. Pure."""
    out = Clean()
    for key, value in values.items():
        number = value if type(value) is float else float(value) if type(value) is int and -_BIG < value < _BIG \
            else _number(value)
        if number is not None:
            out[key] = number
            alias = ALIASES.get(key)
            if alias is not None:
                out[alias] = number
    return out


def check(text: Any, values: Mapping[str, float]) -> Outcome:
    """Evaluate expression `text` with `values`. Never raises: any problem is false with an error. Pure."""
    if not isinstance(text, str):
        return Outcome(False, "the expression is not a string")
    compiled = _compiled(text)
    if isinstance(compiled, ExprError):
        return Outcome(False, f"bad expression `{text}`: {compiled}")
    clean = values if type(values) is Clean else cleaned(values)
    bad = [n for n in compiled.names if n in clean and not math.isfinite(clean[n])]
    if bad:
        return Outcome(False, f"`{text}` is false: no usable value for {', '.join(sorted(bad))}")
    try:
        result = evaluate_canonical(compiled, clean)    # a Clean has every alias under its canonical name
    except Exception as exc:  # an expression must never break a tick, whatever it does
        return Outcome(False, f"`{text}` could not be evaluated: {type(exc).__name__}")
    if result.error:
        return Outcome(False, f"`{text}` is false: {result.error}")
    return _TRUE if result.value else _FALSE


@lru_cache(maxsize=4096)
def _inside(spec: str, zone: str, minute: int) -> bool:
    """Whether window `spec` (readable) holds the minute (epoch minutes; a window's bounds are whole minutes).
    Cached: every environment with the same window asks the same question in a minute."""
    window = _window(spec, zone)
    return isinstance(window, Window) and window.contains(datetime.fromtimestamp(minute * 60, tz=UTC), zone)


@lru_cache(maxsize=1024)
def _window(spec: str, tz: str) -> Window | WindowSyntaxError:
    try:
        return parse_window(spec, tz)
    except WindowSyntaxError as exc:
        return exc


def first_window(windows: Any, now: float, tz: Any) -> tuple[tuple[str, int] | None, list[str]]:
    """The (name, min) of the first window, in the policy's order, whose spec contains `now` in zone `tz`.

    Returns (None, problems) when none matches; windows that cannot be read are skipped and named in the
    problems. Pure, never raises.
    """
    problems: list[str] = []
    if not isinstance(windows, Mapping):
        return None, ["no windows"]
    zone = tz if isinstance(tz, str) and tz else "UTC"
    try:
        datetime.fromtimestamp(now, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None, [f"bad clock value {now!r}"]
    for name, window in windows.items():
        spec = window.get("spec") if isinstance(window, Mapping) else None
        low = window.get("min") if isinstance(window, Mapping) else None
        if not isinstance(spec, str) or isinstance(low, bool) or not isinstance(low, int):
            problems.append(f"window {name}: needs a spec and an integer min")
            continue
        parsed = _window(spec, zone)
        if isinstance(parsed, WindowSyntaxError):
            problems.append(f"window {name}: {parsed}")
            continue
        if _inside(spec, zone, int(now // 60)):
            return (str(name), max(1, low)), problems
    return None, problems
