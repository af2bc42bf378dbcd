"""The one hierarchy of refusals raised by functions/ for the gateway to answer (mapped to HTTP in
handlers/errors.py). Each carries a message that names the input at fault and that input's name in `field`."""

from __future__ import annotations


class CarinaError(Exception):
    """A refused request; `field` names the input at fault."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class BadInput(CarinaError):
    """Malformed input (a bad name, a file of the wrong kind): HTTP 400."""


class NotFound(CarinaError):
    """No such service, configuration, environment or file (for this caller): HTTP 404."""


class Invalid(CarinaError):
    """Well-formed but cannot be carried out as configured (missing template, group...): HTTP 422."""


class Conflict(CarinaError):
    """The state forbids it now (duplicate, no configuration uploaded, not ready): HTTP 409."""


class Busy(Conflict):
    """Another operation holds the environment: HTTP 409 "operation in progress (job N)"."""
