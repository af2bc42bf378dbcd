"""marshmallow fields and validators for the service configuration (used by confschema). Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from marshmallow import ValidationError, fields

from functions.conf.expr import ExprError, compile_expr
from functions.conf.windows import WindowSyntaxError, parse_window, zone

MAX_TEXT = 4096
_INT_TEXT = re.compile(r"-?[0-9]{1,18}")
_NUM_TEXT = re.compile(r"-?[0-9]{1,18}(\.[0-9]{1,18})?")
_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")
CONTEXT_NAME = re.compile(r"[A-Za-z0-9_]+")


class Text(fields.Field):
    """A string; numbers are accepted and turned into text (Ruby's to_s), booleans are not."""

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValidationError("must be a string")
        text = value if isinstance(value, str) else str(value)
        if len(text) > MAX_TEXT:
            raise ValidationError(f"longer than {MAX_TEXT} characters")
        return text


class Int(fields.Field):
    """An integer; a digit string ("10", as global.rb writes them) or a whole float is accepted."""

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> int:
        if isinstance(value, bool):
            raise ValidationError("must be an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
            return int(value.strip())
        raise ValidationError("must be an integer")


class Num(fields.Field):
    """A number (int or float, kept as given); a numeric string is accepted."""

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None,
                     **kwargs: Any) -> int | float:
        if isinstance(value, bool):
            raise ValidationError("must be a number")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value == value and abs(value) != float("inf"):
            return value
        if isinstance(value, str) and _NUM_TEXT.fullmatch(value.strip()):
            text = value.strip()
            return float(text) if "." in text else int(text)
        raise ValidationError("must be a number")


class Windows(fields.Field):
    """`{name => {:spec => 'Mon-Fri 0900-1300', :min => 4}}`; specs parsed, errors keyed by window name."""

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None,
                     **kwargs: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ValidationError("must be a hash of name => {spec, min}")
        out: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for name, window in value.items():
            key = str(name)
            try:
                out[key] = _window(window)
            except ValidationError as exc:
                errors[key] = exc.messages
        if errors:
            raise ValidationError(errors)
        return out


def _window(window: Any) -> dict[str, Any]:
    if not isinstance(window, dict):
        raise ValidationError("must be a hash {spec, min}")
    errors: dict[str, list[str]] = {}
    for key in window:
        if key not in ("spec", "min"):
            errors[str(key)] = ["unknown key"]
    spec, low = window.get("spec"), window.get("min")
    if spec is None:
        errors["spec"] = ["missing (required)"]
    elif not isinstance(spec, str):
        errors["spec"] = ["must be a string"]
    else:
        try:
            parse_window(spec)
        except WindowSyntaxError as exc:
            errors["spec"] = [str(exc)]
    if low is None:
        errors["min"] = ["missing (required)"]
    else:
        try:
            low = Int().deserialize(low)
        except ValidationError:
            errors["min"] = ["must be an integer"]
        else:
            if low < 1:
                errors["min"] = ["must be at least 1 (the master counts)"]
    if errors:
        raise ValidationError(errors)
    return {"spec": spec, "min": low}


def check_expr(text: str) -> None:
    """Validator: the policy expression compiles with the known variables."""
    try:
        compile_expr(text)
    except ExprError as exc:
        raise ValidationError(f"bad expression `{text}`: {exc}") from None


def check_tz(name: str) -> None:
    """Validator: an IANA time zone name known to zoneinfo."""
    try:
        zone(name)
    except WindowSyntaxError as exc:
        raise ValidationError(f"{exc} (use an IANA name like Europe/Paris)") from None


def file_name(path: str) -> None:
    """Validator: a template path whose last part is a plain file name (the uploaded .vm file)."""
    base = path.rsplit("/", 1)[-1]
    if not _FILE.fullmatch(base) or base in (".", ".."):
        raise ValidationError(f"{path!r} does not end in a plain file name like example.vm")


def name_list(names: list[str]) -> None:
    """Validator: a non-empty list of distinct names."""
    if not names:
        raise ValidationError("must list at least one member")
    seen: set[str] = set()
    twice: set[str] = set()
    for name in names:
        (twice if name in seen else seen).add(name)
    if twice:
        shown = sorted(twice)
        more = f" and {len(shown) - 5} more" if len(shown) > 5 else ""
        raise ValidationError(f"listed twice: {', '.join(n[:64] for n in shown[:5])}{more}")
