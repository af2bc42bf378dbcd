"""Starting an operation in one atomic step: the job record, the operation guard, the environment's
op/job/phase fields, the in-flight mark and the request event are written in a single MULTI (under WATCH of
the guard and the environment), so a crash or a Redis error between writes can never leave a guard pointing
at a job that never starts, nor a job RUNNING without the guard. The kick that follows is not part of it: an
environment in the in-flight set is re-driven by recovery and by the minute tick.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from functions.model.clock import Clock
from functions.store import envstore, keys

FINAL = ("DONE", "FAIL", "ABORT")


@dataclass(frozen=True)
class Started:
    """The outcome of start_op: `result` is "started", "busy" (holder keeps the guard) or "gone"."""

    result: str
    jobid: str = ""
    previous: str | None = None


def _holder_is_stale(pipe: Any, holder: str) -> bool:
    """A holder whose job ended, or was never written (only possible from before requests were atomic)."""
    status = pipe.hget(keys.job(holder), "status")
    return status is None or status in FINAL


def _removed(pipe: Any, env_key: str) -> bool:
    """The environment's last operation is a REMOVE that ended DONE: a worker was killed before deleting it."""
    if pipe.hget(env_key, "op") != "REMOVE":
        return False
    last = pipe.hget(env_key, "job")
    return bool(last) and pipe.hget(keys.job(last), "status") == "DONE"


def start_op(r: redis.Redis, service: str, envid: str, op: str, clock: Clock, msg: str,
             take_over: bool = False, take_from: str | None = None, **job_extra: str) -> Started:
    """Start operation `op` on the environment atomically (see the module docstring).

    Without `take_over` the guard must be free or held by an ended job ("busy" otherwise); with it (a remove)
    the guard is taken from whatever holds it, returned as `previous`; with `take_from`, only from that job.
    "gone": the environment does not exist, or (without `take_over`) its remove is DONE and only the deletion is
    left (nothing written). Not idempotent: each "started" is a new job (job ids may be skipped, never reused).
    """
    jobid = envstore.next_jobid(r)
    guard, env_key = keys.env_op(envid), keys.env(envid)

    def attempt(pipe: Any) -> Started:
        if not pipe.exists(env_key):
            return Started("gone")
        holder = pipe.get(guard)
        if holder and not (take_over or holder == take_from) and not _holder_is_stale(pipe, holder):
            return Started("busy", previous=holder)
        if not take_over and _removed(pipe, env_key):
            return Started("gone")
        name = pipe.hget(env_key, "name") or ""
        now = clock()
        pipe.multi()
        pipe.hset(keys.job(jobid), mapping={"jobid": jobid, "service": service, "envid": envid, "name": name,
                                            "type": op, "status": "RUNNING", "submit": now, "start": now,
                                            "end": "", "info": "", **job_extra})
        pipe.zadd(keys.service_jobs(service), {jobid: int(jobid)})
        pipe.set(guard, jobid)
        pipe.hset(env_key, mapping={"op": op, "job": jobid, "phase": "new", "phase_since": now})
        pipe.sadd(keys.inflight(), envid)
        event = {"ts": str(now), "envid": envid, "type": "request", "msg": f"{msg} (job {jobid})",
                 "jobid": jobid, "op": op}
        pipe.xadd(keys.env_events(envid), event, maxlen=envstore.EVENT_MAXLEN, approximate=True)
        pipe.xadd(keys.service_events(service), event, maxlen=envstore.EVENT_MAXLEN, approximate=True)
        return Started("started", jobid, holder)

    outcome: list[Started] = []

    def txn(pipe: Any) -> None:
        outcome[:] = [attempt(pipe)]

    r.transaction(txn, guard, env_key)
    return outcome[0]
