"""The lifecycle engine's queue entry points: `kick(queue, envid, delay)`, `pump`, `clear_kick`.

`drive` (functions.tasks.drive) is an idempotent, level-triggered step function run by RQ; `kick` enqueues
it, deduplicated: at most one drive job per environment waits in the queue at a time. The pending mark is cleared when a
drive job starts, before it reads any state, so a kick that arrives while a drive runs always leads to
one more run and no wake-up is ever lost.

Delayed kicks go to a Redis sorted set (envid -> earliest due time) that every worker pumps onto the
queue (`pump`, a thread in worker.py; the minute tick pumps too). RQ's own delayed jobs are not used:
they are moved by the single worker holding RQ's scheduler lock, and when that worker is killed the
others take over only after minutes, which would stall every polling environment.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import redis
from rq import Queue
from rq.exceptions import DuplicateJobError

from functions.store import keys, scripts

log = logging.getLogger("carina.lifecycle")

DRIVE = "functions.tasks.drive"
JOB_TIMEOUT = 600          # seconds; a drive step is short (SSH calls have their own timeout)
RESULT_TTL = 60            # keep finished drive jobs briefly (debugging), not forever
PENDING_SLACK = 0.5        # seconds: a pending kick due this much later still counts as "already queued"
PENDING_GRACE = 60         # seconds past its due time a pending mark lives (a lost job can't block kicks)

EARLY_SLACK = 1.5          # seconds: a mark due this soon counts as the running job's


def kick(queue: Queue, envid: str, delay: float = 0.0, force: bool = False) -> bool:
    """Make sure `drive(envid)` runs within `delay` seconds. Returns True if a job was enqueued.

    Safe to call any number of times: while a drive job due no later is already waiting, nothing is
    added. `force` (recovery, the minute tick) enqueues even then, in case that job was lost; it costs at
    most one extra, harmless drive. Uses real time (RQ schedules in real time), never the injected clock.
    """
    envid = str(envid)
    delay = max(0.0, float(delay))
    conn = queue.connection
    now = time.time()
    if delay > 0:
        conn.zadd(keys.kick_schedule(), {envid: now + delay}, lt=True)   # keeps the earliest due time
        return True
    slack = -1e12 if force else PENDING_SLACK
    if not _mark(conn, envid, now, slack):
        return False
    try:
        queue.enqueue(DRIVE, envid, unique=True, **_drive_options(envid, now))
    except DuplicateJobError:
        return False
    return True


def _mark(client: Any, envid: str, now: float, slack: float) -> Any:
    """Set the env's pending-kick mark unless a drive due within `slack` s is already marked (script kick_mark);
    truthy when it was set. On a pipeline the answer comes with its execute()."""
    return scripts.run(client, "kick_mark", [keys.env_kick(envid)], [repr(now), repr(slack), str(PENDING_GRACE)])


def _drive_options(envid: str, now: float) -> dict[str, Any]:
    """RQ options of the drive job of `envid` kicked at `now` (its id names both)."""
    return {"job_id": f"drive-{envid}-{int(now * 1000)}", "job_timeout": JOB_TIMEOUT, "result_ttl": RESULT_TTL,
            "failure_ttl": 86400, "description": f"drive env {envid}"}


def kick_many(queue: Queue, envids: Sequence[str]) -> list[str]:
    """`kick(queue, e)` for each of `envids`, in two pipelined round trips for all: the pending marks,
    then the drive jobs of the envs that had none waiting. Returns the envids kicked. The marks keep it
    deduplicated as kick does (RQ's unique check is left out: it cannot be pipelined, and a job id names its env
    and the millisecond its mark was set). Safe to call any number of times."""
    conn, now = queue.connection, time.time()
    with conn.pipeline(transaction=False) as p:
        for envid in envids:
            _mark(p, str(envid), now, PENDING_SLACK)
        marked = [str(e) for e, m in zip(envids, p.execute(), strict=True) if m]   # a repeated env: marked once
    if marked:
        with conn.pipeline() as p:
            for envid in marked:
                queue.enqueue(DRIVE, envid, pipeline=p, **_drive_options(envid, now))
            p.execute()
    return marked


LIVE_JOB = (b"queued", b"started", b"deferred", b"scheduled")


def drive_pending(queue: Queue, envids: list[str]) -> set[str]:
    """The envids whose pending-kick mark stands for a drive job that still waits on the queue or runs (RQ's
    job hash says so): kicking them again would only add a duplicate behind it. Read-only, two round trips."""
    conn = queue.connection
    with conn.pipeline(transaction=False) as p:
        for envid in envids:
            p.get(keys.env_kick(str(envid)))
        marks = p.execute()
    jobs = {str(e): f"drive-{e}-{int(float(m) * 1000)}" for e, m in zip(envids, marks, strict=True) if m}
    with conn.pipeline(transaction=False) as p:
        for job_id in jobs.values():
            p.hget(queue.job_class.key_for(job_id), "status")
        statuses = p.execute()
    return {e for e, status in zip(jobs, statuses, strict=True)
            if (status.encode() if isinstance(status, str) else status) in LIVE_JOB}


KICK_LEASE = 10.0           # seconds a taken delayed kick stays leased before it is due again


def pump(queue: Queue, now: float | None = None, batch: int = 200) -> list[str]:
    """Move every delayed kick that is due onto the queue (deduplicated). Returns the envids kicked.

    Each due entry is leased atomically (its due time pushed KICK_LEASE on), kicked, then removed unless a new,
    earlier kick replaced it meanwhile: several workers pumping at once never double it, and a pumper killed
    between taking and kicking loses nothing (the entry is due again after the lease).
    """
    now = time.time() if now is None else now
    leased = now + KICK_LEASE
    taken = scripts.run(queue.connection, "lease_due", [keys.kick_schedule()],
                        [repr(now), str(batch), repr(KICK_LEASE)])
    envids = [e.decode() if isinstance(e, bytes) else str(e) for e in taken]
    for envid in envids:
        kick(queue, envid)
        scripts.run(queue.connection, "zrem_if_score", [keys.kick_schedule()], [envid, repr(leased)])
    return envids


def _job_due(job_id: str | None) -> float:
    """The due time encoded in a drive job id (`drive-<envid>-<due ms>`), or -1."""
    tail = (job_id or "").rpartition("-")[2]
    return int(tail) / 1000 if tail.isdigit() else -1.0


def clear_kick(conn: redis.Redis, envid: str, job_id: str | None = None) -> bool:
    """Forget the pending mark of `envid` as drive job `job_id` starts: the mark stands for this job, or is
    due by now (jobs may run a little early). Safe to run twice."""
    return bool(scripts.run(conn, "kick_clear", [keys.env_kick(str(envid))],
                                [repr(time.time() + EARLY_SLACK), repr(_job_due(job_id))]))
