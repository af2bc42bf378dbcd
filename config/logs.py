"""Structured logs: one JSON object per line on stderr, from the gateway (gunicorn included), the workers
and the scheduler.

Each line has `ts` (ISO 8601 UTC), `level`, `logger`, `process` (gateway, worker, scheduler), `pid`, `msg`,
and `service`, `envid`, `jobid` where they apply: bound for the current request or job with `bind`/`bound`
(a context variable: per thread, per task) or given on one call as `extra={"envid": ...}`. gunicorn's access
lines also carry `method`, `path`, `status`, `duration_ms` (never the query string). Every text field is
scrubbed of secrets (tokens, `Bearer` values, `oneauth`, private keys) before it is written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

CONTEXT_FIELDS = ("service", "envid", "jobid")
_context: ContextVar[dict[str, str]] = ContextVar("carina_log_context", default={})  # noqa: B039 - never mutated

_SECRETS = (
    (re.compile(r"(?i)(token=)[^&\s\"']+"), r"\1***"),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1***"),
    (re.compile(r"(?i)(oneauth[\"']?\s*(?:=>|:|=)\s*[\"']?)[^\"'\s,}]+"), r"\1***"),
    (re.compile(r"(?i)(carina_token[\"']?\s*(?:=>|:|=)\s*[\"']?)[^\"'\s,}]+"), r"\1***"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S), "***key***"),
)


def scrub(text: str) -> str:
    """`text` with token values, Bearer credentials, oneauth values and private keys replaced by ***. Pure."""
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    return text


def bind(**fields: object) -> None:
    """Add `fields` (service, envid, jobid) to every later log line of this thread or task; empty values
    are ignored. Safe to run twice."""
    given = {k: str(v) for k, v in fields.items() if v not in (None, "")}
    if given:
        _context.set({**_context.get(), **given})


def clear() -> None:
    """Forget every bound field (at the end of a request)."""
    _context.set({})


@contextmanager
def bound(**fields: object) -> Iterator[None]:
    """Bind `fields` for the duration of the block, then restore what was bound before."""
    token = _context.set({**_context.get(), **{k: str(v) for k, v in fields.items() if v not in (None, "")}})
    try:
        yield
    finally:
        _context.reset(token)


def context() -> dict[str, str]:
    """The fields bound now (a copy)."""
    return dict(_context.get())


def _access_fields(args: Mapping[str, Any]) -> dict[str, Any]:
    """method, path, status, duration_ms, remote from gunicorn's access-log atoms."""
    try:
        duration = round(int(args.get("D", 0)) / 1000, 1)
    except (TypeError, ValueError):
        duration = None
    return {"msg": f"{args.get('m', '-')} {args.get('U', '-')} {args.get('s', '-')}", "method": args.get("m"),
            "path": args.get("U"), "status": args.get("s"), "duration_ms": duration, "remote": args.get("h")}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object (one line), scrubbed of secrets."""

    def __init__(self, process: str = "", **kwargs: Any) -> None:
        super().__init__()
        self.process_name = process

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")
            + f"{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "process": self.process_name or None,
            "pid": record.process}
        if record.name == "gunicorn.access" and isinstance(record.args, Mapping):
            doc.update(_access_fields(record.args))
        else:
            doc["msg"] = record.getMessage()
        doc.update(_context.get())
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value not in (None, ""):
                doc[name] = str(value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        return json.dumps({k: scrub(v) if isinstance(v, str) else v for k, v in doc.items() if v is not None})


def setup(process: str, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Send every log record of this process (root logger, Python warnings too) as JSON lines to `stream`
    (default stderr), replacing the root's handlers. Safe to run twice."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(process))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)


def gunicorn_logconfig(process: str = "gateway") -> dict[str, Any]:
    """gunicorn's `logconfig_dict`: its error and access logs and the root logger as JSON lines on stderr."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"json": {"()": "config.logs.JsonFormatter", "process": process}},
        "handlers": {"json": handler},
        "root": {"level": "INFO", "handlers": ["json"]},
        "loggers": {name: {"level": "INFO", "handlers": ["json"], "propagate": False, "qualname": name}
                    for name in ("gunicorn.error", "gunicorn.access")},
    }
