"""Event routes: read an environment's, a service's or a job's events, follow them by long polling, download
an environment's log, and one job's status.

Following: `?after=<cursor>` answers the events newer than that stream id (oldest first); with `&wait=S`
(at most MAX_WAIT seconds) and nothing newer yet, the request waits for the first one (XREAD BLOCK in short
chunks) and answers an empty list when none came. Every answer carries the cursor to send next in the
`Carina-Cursor` header. A gunicorn thread held by a waiting request serves nothing else, so each process lets
at most MAX_WAITERS requests wait at once; the others answer at once (the client sleeps a moment and asks
again). With `after`, the text form is one line per event and no table header (for followers).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import falcon

from functions.store import envstore, feeds
from functions.views import shapes as views
from functions.views.tables import wants_text
from handlers.auth import require_service
from handlers.deps import Deps
from handlers.envs import answer_list, check_id

MAX_WAIT = 25               # seconds a follower may ask to wait (below the usual 30 s proxy/curl idle limits)
WAIT_CHUNK = 2.0            # seconds per XREAD BLOCK (below the Redis client's socket timeout)
MAX_WAITERS = 2             # requests per gateway process allowed to wait at once
MAX_EVENTS = 1000
LOG_EVENTS = 10000          # a download returns up to this many events (the stream's cap)
CLOSE_GRACE = 3.0           # seconds after a job's end when its status shows as final even without a closing event
FINAL = ("DONE", "FAIL", "ABORT")
_WAITERS = threading.BoundedSemaphore(MAX_WAITERS)


def _follow_params(req: falcon.Request) -> tuple[str | None, int, int]:
    """(after, wait, limit) from the query; 400 naming the bad parameter."""
    after = req.get_param("after")
    if after is not None and not feeds.CURSOR_RE.fullmatch(after):
        raise falcon.HTTPBadRequest(title="Invalid parameter",
                                    description="after: a stream id (<ms>-<seq>) from Carina-Cursor, or 0")
    wait = req.get_param_as_int("wait", min_value=0, max_value=MAX_WAIT, default=0)
    limit = req.get_param_as_int("limit", min_value=1, max_value=MAX_EVENTS, default=MAX_EVENTS)
    return after, wait, limit


def poll(deps: Deps, key: str, after: str, wait: int, limit: int,
         done: Callable[[], bool] | None = None) -> list[dict[str, str]]:
    """Events of stream `key` after `after`; waits up to `wait` s for the first one unless `done()` turns true
    (checked between chunks) or MAX_WAITERS requests of this process already wait. Read-only."""
    r = deps.redis
    entries = feeds.read_after(r, key, after, limit)
    if entries or wait <= 0 or not _WAITERS.acquire(blocking=False):
        return entries
    try:
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            entries = feeds.read_after(r, key, after, limit, block_ms=max(1, int(min(left, WAIT_CHUNK) * 1000)))
            if entries:
                return entries
            if done is not None and done():
                return feeds.read_after(r, key, after, limit)
        return []
    finally:
        _WAITERS.release()


def event_line(doc: dict[str, Any], extras: bool = False) -> str:
    """One event as a text line: `TIME TYPE MESSAGE` (with `extras`, then its other fields as key=value)."""
    text = f"{doc.get('time') or '-'} {doc.get('type', ''):<8} {doc.get('msg', '')}"
    if extras:
        core = ("id", "time", "ts", "type", "msg", "envid")
        text += "".join(f" {k}={v}" for k, v in doc.items() if k not in core)
    return text.replace("\r", " ").replace("\n", " ")


def answer_events(req: falcon.Request, resp: falcon.Response, entries: list[dict[str, str]], after: str | None,
                  key: str, r: Any) -> None:
    """Answer events as JSON, the CLI table, or (when following) plain lines; set Carina-Cursor."""
    docs = [dict(views.event_json(e), envid=e.get("envid", "")) for e in entries]
    cursor = entries[-1]["id"] if entries else (after if after is not None else feeds.last_id(r, key))
    resp.set_header("Carina-Cursor", cursor)
    if after is not None and wants_text(req.get_header("Accept")):
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "".join(event_line(d) + "\n" for d in docs)
        return
    answer_list(req, resp, docs, views.EVENT_HEADERS, views.event_row)


def _visible_envid(deps: Deps, req: falcon.Request, envid: str) -> str:
    """`envid` if the calling service owns that environment, or owned it (its events outlive it a day)."""
    service = require_service(req)
    check_id(envid)
    if envstore.get_env(deps.redis, envid, service) is None and not feeds.had_env(deps.redis, service, envid):
        raise falcon.HTTPNotFound(title="Not found", description=f"envid: no environment {envid}")
    return envid


def _owned_job(deps: Deps, req: falcon.Request, jobid: str) -> dict[str, str]:
    service = require_service(req)
    job = envstore.get_job(deps.redis, check_id(jobid, "jobid"))
    if job is None or job.get("service") != service:
        raise falcon.HTTPNotFound(title="Not found", description=f"jobid: no job {jobid}")
    return job


class EnvEvents:
    """GET /envs/{envid}/events[?after=&wait=&limit=]: one environment's events, oldest first."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response, envid: str) -> None:
        key = feeds.stream_key(envid=_visible_envid(self.deps, req, envid))
        after, wait, limit = _follow_params(req)
        if after is None:
            entries = feeds.newest(self.deps.redis, key, limit)
        else:
            entries = poll(self.deps, key, after, wait, limit)
        answer_events(req, resp, entries, after, key, self.deps.redis)


class ServiceEvents:
    """GET /events[?after=&wait=&limit=]: every event of the calling service, oldest first."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        key = feeds.stream_key(service=require_service(req))
        after, wait, limit = _follow_params(req)
        entries = feeds.newest(self.deps.redis, key, limit) if after is None else poll(self.deps, key, after,
                                                                                         wait, limit)
        answer_events(req, resp, entries, after, key, self.deps.redis)


class EnvLog:
    """GET /envs/{envid}/log: the environment's whole event log as text lines (`oneenv --download`)."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response, envid: str) -> None:
        key = feeds.stream_key(envid=_visible_envid(self.deps, req, envid))
        docs = [views.event_json(e) for e in feeds.newest(self.deps.redis, key, LOG_EVENTS)]
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "".join(event_line(d, extras=True) + "\n" for d in docs)


class Job:
    """GET /jobs/{jobid}: one job of the calling service."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response, jobid: str) -> None:
        doc = views.job_json(_owned_job(self.deps, req, jobid))
        if wants_text(req.get_header("Accept")):
            answer_list(req, resp, [doc], views.JOB_HEADERS, views.job_row)
        else:
            resp.media = doc


def follow_status(deps: Deps, job: dict[str, str]) -> str:
    """The job's status as a follower should see it: a final one once its closing event can be read (or
    CLOSE_GRACE s after it ended, for jobs ended without one), RUNNING until then. Read-only."""
    status = job.get("status", "")
    if status not in FINAL or feeds.job_closed(deps.redis, job):
        return status
    try:
        ended = float(job.get("end") or 0)
    except ValueError:
        ended = 0.0
    return status if deps.clock() - ended >= CLOSE_GRACE else "RUNNING"


def _header_text(text: str, limit: int = 300) -> str:
    """`text` made safe for a header value: one line of printable ASCII, at most `limit` characters."""
    return "".join(c if " " <= c <= "~" else " " for c in text)[:limit].strip()


class JobEvents:
    """GET /jobs/{jobid}/events[?after=&wait=&limit=]: the events of a job's environment from the job's start,
    with the job's status in `Carina-Job-Status` (and why it ended in `Carina-Job-Info`): `oneenv --wait`."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def _status(self, jobid: str) -> tuple[str, dict[str, str]]:
        job = envstore.get_job(self.deps.redis, jobid) or {}
        return follow_status(self.deps, job), job

    def on_get(self, req: falcon.Request, resp: falcon.Response, jobid: str) -> None:
        job = _owned_job(self.deps, req, jobid)
        after, wait, limit = _follow_params(req)
        envid = job.get("envid") or "-1"
        key = feeds.stream_key(envid=envid)
        start = after if after is not None else feeds.job_cursor(self.deps.redis, job)
        # The status is always read before the events answered with it: a final status then implies that the
        # job's closing event is among them (or was answered before).
        status, job = self._status(jobid)

        def done() -> bool:
            nonlocal status, job
            status, job = self._status(jobid)
            return status in FINAL

        entries: list[dict[str, str]] = []
        if not envid.startswith("-"):
            entries = poll(self.deps, key, start, 0 if status in FINAL else wait, limit, done=done)
        resp.set_header("Carina-Job-Status", status)
        if status in FINAL and job.get("info"):
            resp.set_header("Carina-Job-Info", _header_text(job["info"]))
        answer_events(req, resp, entries, start, key, self.deps.redis)


def add_routes(app: falcon.App, deps: Deps) -> None:
    """Register the event, log and job routes."""
    app.add_route("/events", ServiceEvents(deps))
    app.add_route("/envs/{envid}/events", EnvEvents(deps))
    app.add_route("/envs/{envid}/log", EnvLog(deps))
    app.add_route("/jobs/{jobid}", Job(deps))
    app.add_route("/jobs/{jobid}/events", JobEvents(deps))
