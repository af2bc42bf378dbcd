"""Environments, their VM records, jobs and events (the operation guard and the lock: functions.store.guards; the
callback secret, the installation id and pinned host keys: functions.store.install).

All state lives in Redis (key names from functions/store/keys.py); `r` is always a decode_responses client.
Writes that must land together use MULTI pipelines; compare-and-delete uses Lua so a stale owner can
never release someone else's lock or operation.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from functions.model.clock import Clock
from functions.store import keys, observed, scripts

log = logging.getLogger("carina.envstore")

JOB_TYPES = ("CREATE", "SCALEUP", "SCALEDOWN", "REMOVE", "RECREATE")
JOB_STATES = ("PENDING", "RUNNING", "DONE", "FAIL", "ABORT")
EVENT_MAXLEN = 10000
DELETED_EVENTS_TTL = 86400     # a deleted environment's events stay readable for a day



@dataclass
class VmRecord:
    """One VM slot of an environment: `m` for the master, `s0`, `s1`, ... for slaves.

    `state` is Carina's view: allocating (intent recorded, OpenNebula not yet answered) → allocated →
    running → announced (slave added on the master) → removing → gone. `status` is the last status string
    reported by the VM or set by Carina (VM_CREATE, NET_CONFIG_DONE, MASTER_INIT_DONE, ...), last writer wins;
    `init` keeps the incarnation's first *_INIT_DONE / *_INIT_FAIL verdict, which later statuses never undo.
    `one_state` (short code), `vm_state` / `lcm_state` (OpenNebula's numbers, -1 = not seen) and `cpu` are what
    OpenNebula last said (minute tick, engine observations). `origin` is "policy" for a slave an elasticity
    policy added (a passive environment's failback shrink removes only those), "" otherwise.
    """

    slot: str
    role: str
    index: int
    endpoint: str
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    vmid: int | None = None
    state: str = "allocating"
    status: str = "VM_CREATE"
    ip: str = ""
    hostname: str = ""
    cpu: float = -1
    one_state: str = ""
    created: float = 0.0
    init: str = ""          # the VM's first init verdict: "done" or "fail:<status>"; never undone by later statuses
    one_ip: str = ""        # the address OpenNebula reports (first NIC): the only one a tokenless callback may use
    hostkey: str = ""       # SSH host key from the VM's token-proven network callback (first one wins)
    hostkey_pin: str = ""   # how its key was pinned: "callback" (checked on the first connection) or "first-use"
    origin: str = ""
    vm_state: int = -1
    lcm_state: int = -1
    sched: str = ""             # why OpenNebula has not placed the PENDING VM (its SCHED_MESSAGE), if it says
    checked: str = ""           # "<vmid>@<STIME>" of the VM whose ownership tags the minute refresh last matched

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VmRecord:
        data = json.loads(text)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


# ---------------------------------------------------------------- environments and jobs


def create_env(r: redis.Redis, service: str, name: str, spec: dict[str, Any], job_type: str, clock: Clock,
               groupid: str = "-1", msg: str = "", extra: Callable[[Any, str, str], None] | None = None,
               jobid: str | None = None) -> tuple[str, str]:
    """Record a new environment, its first job (RUNNING), the operation guard, the in-flight mark and the
    request event `msg` in one MULTI; `extra(pipe, envid, jobid)` adds writes to the same transaction.
    `jobid`: one taken with next_jobid (default: a fresh one).

    Returns (envid, jobid). Not idempotent: every call makes a new environment (ids may be skipped on errors).
    """
    envid = str(r.incr(keys.env_seq()))
    jobid = jobid or next_jobid(r)
    now = clock()
    env = env_fields(envid, service, name, spec, jobid, now, groupid) | {"op": job_type}
    with r.pipeline() as p:
        p.hset(keys.env(envid), mapping=env)
        p.zadd(keys.service_envs(service), {envid: int(envid)})
        job_writes(p, service, jobid, envid, name, job_type, now, "RUNNING")
        p.set(keys.env_op(envid), jobid)
        p.sadd(keys.inflight(), envid)
        if msg:
            event = {"ts": str(now), "envid": envid, "type": "request", "msg": f"{msg} (job {jobid})",
                     "jobid": jobid, "op": job_type}
            p.xadd(keys.env_events(envid), event, maxlen=EVENT_MAXLEN, approximate=True)
            p.xadd(keys.service_events(service), event, maxlen=EVENT_MAXLEN, approximate=True)
        if extra is not None:
            extra(p, envid, jobid)
        p.execute()
    return envid, jobid


def env_fields(envid: str, service: str, name: str, spec: dict[str, Any], jobid: str, now: float,
               groupid: str = "-1") -> dict[str, Any]:
    """The hash of a new environment (status INIT, its create job `jobid` current). Pure."""
    return {"envid": envid, "service": service, "name": name, "status": "INIT", "policy_status": "INIT",
            "app_url": "", "groupid": groupid, "endpoint": spec.get("endpoint", ""),
            "proxy": str(spec.get("proxy") or spec.get("endpoint_proxy") or ""), "spec": json.dumps(spec),
            "phase": "new", "phase_since": now, "created": now, "job": jobid, "info": "", "metrics": "",
            "desired_slaves": int(spec.get("num_slaves", 0))}


def get_env(r: redis.Redis, envid: str, service: str | None = None) -> dict[str, Any] | None:
    """The environment hash with `spec` decoded, or None; with `service`, None unless that service owns it."""
    data = r.hgetall(keys.env(envid))
    if not data or (service is not None and data.get("service") != service):
        return None
    data["spec"] = json.loads(data.get("spec") or "{}")
    return data


def update_env(r: redis.Redis, envid: str, **fields: Any) -> None:
    """Set fields of an existing environment (no-op if it was deleted). Safe to run twice."""
    if not fields:
        return
    values = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in fields.items()}
    scripts.run(r, "hset_if_exists", [keys.env(envid)], [x for kv in values.items() for x in (kv[0], str(kv[1]))])


def list_envs(r: redis.Redis, service: str) -> list[dict[str, Any]]:
    """Every environment of `service`, by ascending envid."""
    envids = r.zrange(keys.service_envs(service), 0, -1)
    envs = [get_env(r, envid) for envid in envids]
    return [e for e in envs if e is not None]


def delete_env(r: redis.Redis, envid: str, clock: Clock | None = None) -> str | None:
    """Forget an environment and its VM records; its event stream expires after a day. Safe to run twice.

    Returns the job that held the operation guard. With `clock`, that job is finished too (DONE for a
    REMOVE): a remove that took the guard over just before the deletion must not stay RUNNING for ever.
    """
    env = r.hgetall(keys.env(envid))
    with r.pipeline() as p:
        if env:
            p.zrem(keys.service_envs(env["service"]), envid)
        p.getdel(keys.env_op(envid))
        p.delete(keys.env(envid), keys.env_vms(envid), keys.env_cpu(envid))
        p.zrem(keys.vms_dirty(), envid)
        p.srem(keys.inflight(), envid)
        p.expire(keys.env_events(envid), DELETED_EVENTS_TTL)
        holder = p.execute()[1 if env else 0]
    if holder and clock is not None:
        _finish_orphan(r, holder, clock)
    return holder


def finish_vanished(r: redis.Redis, envid: str, clock: Clock) -> str | None:
    """For an environment that no longer exists: finish the job still holding its operation guard (DONE
    for a REMOVE, FAIL otherwise), drop the guard and the in-flight mark. Returns that job. Safe to run twice."""
    holder = scripts.run(r, "finish_vanished", [keys.env(envid), keys.env_op(envid), keys.inflight()], [envid])
    if holder:
        _finish_orphan(r, holder, clock)
    return holder or None


def _finish_orphan(r: redis.Redis, jobid: str, clock: Clock) -> None:
    job = r.hgetall(keys.job(jobid))
    if job.get("type") == "REMOVE":
        finish_job(r, jobid, "DONE", clock, "environment removed")
    else:
        finish_job(r, jobid, "FAIL", clock, "environment removed")


def new_job(r: redis.Redis, service: str, envid: str, name: str, job_type: str, clock: Clock,
            status: str = "RUNNING") -> str:
    """Record a new job and return its id."""
    jobid = str(r.incr(keys.job_seq()))
    with r.pipeline() as p:
        job_writes(p, service, jobid, envid, name, job_type, clock(), status)
        p.execute()
    return jobid


def next_jobid(r: redis.Redis) -> str:
    """Take a fresh job id (before the job is written, e.g. to claim the op guard with it first)."""
    return str(r.incr(keys.job_seq()))


def next_jobids(r: redis.Redis, count: int) -> list[str]:
    """Take `count` fresh job ids in one round trip (ascending)."""
    last = int(r.incrby(keys.job_seq(), count)) if count > 0 else 0
    return [str(last - count + 1 + i) for i in range(count)]


def record_job(r: redis.Redis, service: str, jobid: str, envid: str, name: str, job_type: str, clock: Clock,
               status: str = "RUNNING") -> None:
    """Write job `jobid` (an id from next_jobid). Safe to run twice (same values)."""
    with r.pipeline() as p:
        job_writes(p, service, jobid, envid, name, job_type, clock(), status)
        p.execute()


def job_fields(service: str, jobid: str, envid: str, name: str, job_type: str, now: float,
               status: str = "RUNNING", origin: str = "user") -> dict[str, Any]:
    """The hash of a new job; `origin` is "user" (a request), "policy" or "scheduler". Pure."""
    return {"jobid": jobid, "service": service, "envid": envid, "name": name, "type": job_type, "status": status,
            "submit": now, "start": now, "end": "", "info": "", "origin": origin}


def job_writes(p: Any, service: str, jobid: str, envid: str, name: str, job_type: str, now: float,
               status: str) -> None:
    """Queue the writes of a new job on pipeline `p` (part of the caller's transaction)."""
    p.hset(keys.job(jobid), mapping=job_fields(service, jobid, envid, name, job_type, now, status))
    p.zadd(keys.service_jobs(service), {jobid: int(jobid)})


def finish_job(r: redis.Redis, jobid: str, status: str, clock: Clock, info: str = "",
               fence: tuple[str, str] | None = None) -> bool:
    """Move a job to a final state unless it already has one. Returns True if this call changed it.

    With `fence` = (envid, the env lock's owner token): only while that token holds the lock (else LockLost)."""
    if fence is None:
        return bool(scripts.run(r, "finish_job", [keys.job(jobid)], [status, str(clock()), info]))
    done = int(scripts.run(r, "finish_job_if_owner", [keys.job(jobid), keys.env_lock(fence[0])],
                           [status, str(clock()), info, fence[1]]))
    if done < 0:
        raise LockLost(f"env {fence[0]}: lock lost, job {jobid} not ended")
    return bool(done)


def get_job(r: redis.Redis, jobid: str) -> dict[str, str] | None:
    return r.hgetall(keys.job(jobid)) or None


def list_jobs(r: redis.Redis, service: str, limit: int = 10000) -> list[dict[str, str]]:
    """The service's most recent `limit` jobs, oldest first."""
    jobids = r.zrange(keys.service_jobs(service), -limit, -1)
    with r.pipeline() as p:
        for jobid in jobids:
            p.hgetall(keys.job(jobid))
        return [j for j in p.execute() if j]


def trim_jobs(r: redis.Redis, service: str, keep: int, keep_unfinished: bool = False) -> int:
    """Drop all but the newest `keep` jobs of a service (with `keep_unfinished`, never a job that has not
    ended: a long create outlives newer jobs). Returns how many were dropped. Safe to run twice."""
    old = r.zrange(keys.service_jobs(service), 0, -keep - 1) if keep > 0 else []
    if old and keep_unfinished:
        with r.pipeline() as p:
            for jobid in old:
                p.hget(keys.job(jobid), "status")
            old = [j for j, st in zip(old, p.execute(), strict=True) if st is None or st in JOB_STATES[2:]]
    if old:
        with r.pipeline() as p:
            p.zrem(keys.service_jobs(service), *old)
            p.delete(*[keys.job(j) for j in old])
            p.execute()
    return len(old)


def trim_events(r: redis.Redis, service: str, envids: list[str], keep: int) -> int:
    """Cap the service's event stream and those of `envids` at the newest `keep` entries each (no-op if
    keep <= 0). Returns how many entries were dropped. Safe to run twice."""
    if keep <= 0:
        return 0
    with r.pipeline() as p:
        for key in [keys.service_events(service), *[keys.env_events(e) for e in envids]]:
            p.xtrim(key, maxlen=keep, approximate=False)
        return sum(int(n) for n in p.execute())


# ---------------------------------------------------------------- VM records


class LockLost(RuntimeError):
    """A fenced write was refused: the writer no longer holds the environment lock (another holder may)."""


def _vm_keys(envid: str) -> list[str]:
    return [keys.env_lock(envid), keys.env_vms(envid), keys.vms_gen(), keys.vms_dirty()]


def put_vm(r: redis.Redis, envid: str, rec: VmRecord, fence: str | None = None) -> None:
    """Write (create or replace) a VM record, marking the env changed (script vm_put). Safe to run twice. With
    `fence` (the env lock's owner token), only while that token still holds the lock: LockLost otherwise,
    nothing written."""
    put_vms(r, envid, [rec], fence)


def put_vms(r: redis.Redis, envid: str, recs: Sequence[VmRecord], fence: str | None = None) -> None:
    """put_vm for several records in one atomic call (all or none). Safe to run twice."""
    if not recs:
        return
    pairs = [x for rec in recs for x in (rec.slot, rec.to_json())]
    if not scripts.run(r, "vm_put", _vm_keys(envid), [fence or "", envid, *pairs]):
        raise LockLost(f"env {envid}: lock lost, VM records {', '.join(rec.slot for rec in recs)} not written")


def get_vms(r: redis.Redis, envid: str) -> dict[str, VmRecord]:
    """slot -> record, masters first then slaves by index; each with the last CPU figure of its own VM from
    env_cpu, when the minute refresh stored one (functions.store.observed)."""
    raw, cpu = r.hgetall(keys.env_vms(envid)), observed.cpu_figures(r.get(keys.env_cpu(envid)))
    recs = [VmRecord.from_json(v) for v in raw.values()]
    for rec in recs:
        figure = observed.cpu_of(cpu, rec.slot, rec.vmid) if cpu and rec.vmid is not None else None
        if figure is not None:
            rec.cpu = figure
    recs.sort(key=lambda v: (v.role != "master", v.index))
    return {v.slot: v for v in recs}


def del_vm(r: redis.Redis, envid: str, slot: str, fence: str | None = None) -> None:
    """Forget a VM record, marking the env changed (script vm_del). Safe to run twice. With `fence`: only while
    it holds the env lock (else LockLost)."""
    if not scripts.run(r, "vm_del", _vm_keys(envid), [fence or "", envid, slot]):
        raise LockLost(f"env {envid}: lock lost, VM record {slot} not deleted")


def vm_by_id(r: redis.Redis, envid: str, vmid: int) -> VmRecord | None:
    """The environment's record whose OpenNebula id is `vmid` (ids are per endpoint; one env = one endpoint)."""
    for rec in get_vms(r, envid).values():
        if rec.vmid == vmid:
            return rec
    return None


# ---------------------------------------------------------------- events, in-flight set


def add_event(r: redis.Redis, envid: str, service: str, kind: str, msg: str, clock: Clock,
              **extra: str) -> None:
    """Append an event to the environment's and the service's streams (bounded).

    An event for an environment already deleted (a late writer) keeps its stream on the deleted streams' expiry.
    """
    add_events(r, envid, service, [(kind, msg, {k: str(v) for k, v in extra.items()})], clock)


def add_events(r: redis.Redis, envid: str, service: str, events: Sequence[tuple[str, str, dict[str, str]]],
               clock: Clock) -> None:
    """add_event for several (kind, msg, extra) events of one environment, in order, in one round trip."""
    if not events:
        return
    ts = str(clock())
    with r.pipeline() as p:
        for kind, msg, extra in events:
            fields = {"ts": ts, "envid": envid, "type": kind, "msg": msg, **{k: str(v) for k, v in extra.items()}}
            p.xadd(keys.env_events(envid), fields, maxlen=EVENT_MAXLEN, approximate=True)
            p.xadd(keys.service_events(service), fields, maxlen=EVENT_MAXLEN, approximate=True)
        p.exists(keys.env(envid))
        env_exists = p.execute()[-1]
    if not env_exists:
        r.expire(keys.env_events(envid), DELETED_EVENTS_TTL, nx=True)


def list_events(r: redis.Redis, envid: str, count: int = 1000) -> list[dict[str, str]]:
    """The environment's newest `count` events, oldest first."""
    entries = r.xrevrange(keys.env_events(envid), count=count)
    return [dict(fields, id=eid) for eid, fields in reversed(entries)]


def mark_inflight(r: redis.Redis, envid: str) -> None:
    r.sadd(keys.inflight(), envid)


def clear_inflight(r: redis.Redis, envid: str) -> None:
    r.srem(keys.inflight(), envid)


def inflight(r: redis.Redis) -> list[str]:
    return sorted(r.smembers(keys.inflight()), key=int)
