"""Read-only views for operators: event streams read after a cursor (optionally waiting for new entries),
where a job's events begin and whether its closing event was written, and the census behind /metrics.

Cursors are Redis stream ids (`<ms>-<seq>`, or `0` for "from the start"). Nothing here writes to Redis.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import redis

from functions.store import keys

CURSOR_RE = re.compile(r"0|[0-9]{1,19}-[0-9]{1,19}")   # 19 digits: always below 2**64
SCAN_BATCH = 200           # events read per step when looking for a job's first or closing event
SCAN_LIMIT = 10000         # at most this many events are scanned (the streams are capped near this)
_MAX_SEQ = 2**64 - 1


def stream_key(envid: str | None = None, service: str | None = None) -> str:
    """The event stream of an environment (`envid`) or of a whole service (`service`)."""
    if envid is not None:
        return keys.env_events(envid)
    if service is None:
        raise ValueError("stream_key: give envid or service")
    return keys.service_events(service)


def before(stream_id: str) -> str:
    """The largest stream id smaller than `stream_id` (a cursor that includes that entry). Pure."""
    ms, _, seq = stream_id.partition("-")
    if int(seq or 0) > 0:
        return f"{ms}-{int(seq) - 1}"
    return f"{int(ms) - 1}-{_MAX_SEQ}" if int(ms) > 0 else "0"


def _entries(raw: list[tuple[str, dict[str, str]]]) -> list[dict[str, str]]:
    return [dict(fields, id=eid) for eid, fields in raw]


def read_after(r: redis.Redis, key: str, after: str, count: int = 1000, block_ms: int = 0) -> list[dict[str, str]]:
    """Up to `count` entries of stream `key` newer than cursor `after`, oldest first. With `block_ms` > 0 and
    nothing newer yet, waits up to that long (XREAD BLOCK) for the first. Read-only; safe to run twice."""
    if block_ms > 0:
        answer = r.xread({key: after}, count=count, block=block_ms)
    else:
        answer = r.xread({key: after}, count=count)
    return _entries(answer[0][1]) if answer else []


def newest(r: redis.Redis, key: str, count: int = 1000) -> list[dict[str, str]]:
    """The newest `count` entries of stream `key`, oldest first. Read-only."""
    return _entries(list(reversed(r.xrevrange(key, count=count))))


def last_id(r: redis.Redis, key: str) -> str:
    """The id of the newest entry of stream `key`, or `0` when it is empty or absent. Read-only."""
    top = r.xrevrange(key, count=1)
    return top[0][0] if top else "0"


def _scan_newest(r: redis.Redis, key: str, field: str, value: str, since: float | None = None) -> str | None:
    """The id of the newest entry whose `field` is `value` (and, with `since`, whose `ts` is not older),
    looking back at most SCAN_LIMIT entries."""
    upper, seen = "+", 0
    while seen < SCAN_LIMIT:
        batch = r.xrevrange(key, max=upper, count=SCAN_BATCH)
        for eid, fields in batch:
            if fields.get(field) == value and (since is None or _ts(fields) >= since):
                return eid
        if len(batch) < SCAN_BATCH:
            return None
        seen += len(batch)
        upper = "(" + batch[-1][0]
    return None


def _ts(fields: dict[str, str]) -> float:
    try:
        return float(fields.get("ts") or 0)
    except ValueError:
        return 0.0


def job_cursor(r: redis.Redis, job: dict[str, str]) -> str:
    """A cursor just before the job's first event (its `request` event, which carries `jobid`) in its
    environment's stream; from the job's submit time when that event is no longer there. Read-only."""
    envid = job.get("envid") or "-1"
    if envid.startswith("-"):
        return "0"
    found = _scan_newest(r, keys.env_events(envid), "jobid", job.get("jobid", ""))
    if found is not None:
        return before(found)
    try:
        return before(f"{int(float(job.get('submit') or 0) * 1000)}-0")
    except ValueError:
        return "0"


def job_closed(r: redis.Redis, job: dict[str, str]) -> bool:
    """True once the stream of the job's environment holds the job's closing event: one about the job (`job`
    field = its id, as the engine writes for DONE, FAIL and pre-emption) written at or after its end time.
    Read-only."""
    envid = job.get("envid") or "-1"
    ended = _ts({"ts": job.get("end", "")})
    if envid.startswith("-") or not ended:
        return False
    return _scan_newest(r, keys.env_events(envid), "job", job.get("jobid", ""), since=ended) is not None


def census(r: redis.Redis) -> dict[str, Counter[Any]]:
    """Counts over every service: `envs` by policy_status, `vms` by Carina state, `jobs` by (type, status).
    Read-only (a few pipelined reads per service)."""
    envs: Counter[Any] = Counter()
    vms: Counter[Any] = Counter()
    jobs: Counter[Any] = Counter()
    for service in sorted(r.smembers(keys.services())):
        envids = r.zrange(keys.service_envs(service), 0, -1)
        jobids = r.zrange(keys.service_jobs(service), 0, -1)
        with r.pipeline(transaction=False) as p:
            for envid in envids:
                p.hget(keys.env(envid), "policy_status")
                p.hvals(keys.env_vms(envid))
            for jobid in jobids:
                p.hmget(keys.job(jobid), "type", "status")
            out = p.execute()
        for status, records in zip(out[0:2 * len(envids):2], out[1:2 * len(envids):2], strict=True):
            if status is not None:
                envs[status] += 1
            for text in records:
                vms[_vm_state(text)] += 1
        for typ, status in out[2 * len(envids):]:
            if typ is not None:
                jobs[(typ, status or "")] += 1
    return {"envs": envs, "vms": vms, "jobs": jobs}


def _vm_state(text: str) -> str:
    try:
        state = json.loads(text).get("state")
    except (ValueError, AttributeError):
        return "unknown"
    return state if isinstance(state, str) and state else "unknown"


def had_env(r: redis.Redis, service: str, envid: str) -> bool:
    """True if one of the service's jobs is about environment `envid` (it may have been removed since).
    Read-only; reads one field of each of the service's jobs."""
    jobids = r.zrange(keys.service_jobs(service), 0, -1)
    with r.pipeline(transaction=False) as p:
        for jobid in jobids:
            p.hget(keys.job(jobid), "envid")
        return envid in p.execute()
