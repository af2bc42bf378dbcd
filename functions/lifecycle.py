"""The lifecycle engine's queue entry points: `kick(queue, envid, delay)` and `drive(envid)`.

`drive` is an idempotent, level-triggered step function run by RQ; `kick` enqueues it, deduplicated:
at most one drive job per environment waits in the queue at a time (a later-due kick while an
earlier one is pending is a no-op; an earlier-due kick supersedes the later one). The pending mark
is cleared when a drive job starts, before it reads any state, so a kick that arrives while a drive
runs always leads to one more run and no wake-up is ever lost.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import redis
from rq import Queue
from rq.exceptions import DuplicateJobError

from functions import keys

log = logging.getLogger("carina.lifecycle")

DRIVE = "functions.lifecycle.drive"
JOB_TIMEOUT = 600          # seconds; a drive step is short (SSH calls have their own timeout)
RESULT_TTL = 60            # keep finished drive jobs briefly (debugging), not forever
PENDING_SLACK = 0.5        # seconds: a pending kick due this much later still counts as "already queued"
PENDING_GRACE = 60         # seconds past its due time a pending mark lives (a lost job can't block kicks)

# Set the pending mark unless one is already due no later than ours (+ slack). Returns 1 if set.
_MARK = """
local cur = redis.call('GET', KEYS[1])
if cur and tonumber(cur) <= tonumber(ARGV[1]) + tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""
# Clear the pending mark if it stands for the running job (same due time) or is due by now.
_CLEAR = """
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local due = tonumber(cur)
if due <= tonumber(ARGV[1]) or math.abs(due - tonumber(ARGV[2])) < 0.002 then
  redis.call('DEL', KEYS[1]) return 1
end
return 0
"""
EARLY_SLACK = 1.5          # RQ's scheduler stores due times in whole seconds: a delayed job may run ~1 s early


def kick(queue: Queue, envid: str, delay: float = 0.0, force: bool = False) -> bool:
    """Make sure `drive(envid)` runs within `delay` seconds. Returns True if a job was enqueued.

    Safe to call any number of times: while a drive job due no later is already waiting, nothing is
    added. `force` (recovery, the minute tick) enqueues even then, in case that job was lost; it costs at
    most one extra, harmless drive. Uses real time (RQ schedules in real time), never the injected clock.
    """
    envid = str(envid)
    delay = max(0.0, float(delay))
    due = time.time() + delay
    ttl = int(delay + PENDING_GRACE)
    conn = queue.connection
    slack = -1e12 if force else PENDING_SLACK
    marked = conn.eval(_MARK, 1, keys.env_kick(envid), repr(due), repr(slack), str(ttl))
    if not marked:
        return False
    job_id = f"drive-{envid}-{int(due * 1000)}"
    opts = {"job_id": job_id, "unique": True, "job_timeout": JOB_TIMEOUT, "result_ttl": RESULT_TTL,
            "failure_ttl": 86400, "description": f"drive env {envid}"}
    try:
        if delay > 0:
            queue.enqueue_in(timedelta(seconds=delay), DRIVE, envid, **opts)
        else:
            queue.enqueue(DRIVE, envid, **opts)
    except DuplicateJobError:
        return False
    return True


def _job_due(job_id: str | None) -> float:
    """The due time encoded in a drive job id (`drive-<envid>-<due ms>`), or -1."""
    tail = (job_id or "").rpartition("-")[2]
    return int(tail) / 1000 if tail.isdigit() else -1.0


def clear_kick(conn: redis.Redis, envid: str, job_id: str | None = None) -> bool:
    """Forget the pending mark of `envid` as drive job `job_id` starts: the mark stands for this job, or is
    due by now (jobs may run a little early). Safe to run twice."""
    return bool(conn.eval(_CLEAR, 1, keys.env_kick(str(envid)), repr(time.time() + EARLY_SLACK),
                          repr(_job_due(job_id))))


def drive(envid: str) -> str:
    """RQ entry: run one step of the environment's lifecycle (see functions.engine). Safe to run twice."""
    from functions.engine import run_drive  # late import: keeps kick() importable with few dependencies

    return run_drive(str(envid))
