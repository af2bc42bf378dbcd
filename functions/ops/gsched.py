"""The global scheduler at work: VMs ask it for capacity, one allocation pass at a time places the requests
(functions.gs.allocate.plan: by class, then priority, then age) and takes back capacity a lower class borrowed.

- `capacity` is the engine's Ctx.capacity hook (wired in functions.tasks): with a global configuration in force,
  a VM an environment wants becomes a request (its template's vCPUs and memory, the environment's endpoint as the
  pool it asks for); the VM is allocated only once the request is ALLOCATED. Without one, nothing changes.
- `allocate_now` is one pass under the allocator lock: it stores the decisions (PEND -> ALLOCATED only if still
  PEND, fenced by the lock), kicks every environment whose request was granted, and for each reclaim starts a
  SCALEDOWN of the borrowing environment's VM in that pool (job origin "scheduler"), at most once per environment
  per RECLAIM_INTERVAL. It runs as the queued job functions.tasks.gs_allocate right after a request arrives, and
  from the tick (every tick call when capacity came back, every minute anyway).
- `after_job` (an engine end hook) and `check` (every minute) make sure no request outlives what wanted it: a
  PEND request whose operation ended is CANCELLED, an ALLOCATED one whose VM is gone is RELEASED, an environment
  removed cancels all of its; `check` also recomputes the usage counters from the requests and fixes any drift.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import redis
from rq import Queue

from functions.engine.kick import kick
from functions.gs.allocate import Reclaim, plan
from functions.gs.config import pools_of, services_of
from functions.gs.model import ALLOCATED, PEND, Request
from functions.model import specview
from functions.model.clock import Clock
from functions.store import envstore, gsstore, guards, opstart, runtime, tenants
from functions.store.envstore import VmRecord
from functions.store.gsstore import Stored

if TYPE_CHECKING:
    from functions.engine.context import Ctx, Env

log = logging.getLogger("carina.gsched")

ALLOCATE_TASK = "functions.tasks.gs_allocate"
RECLAIM_INTERVAL = 60.0     # seconds: at most one reclaim per environment in this time
FINISHED_KEPT = 1000        # RELEASED / CANCELLED requests kept for --requests


# ---------------------------------------------------------------- the engine's hooks


def service_class(r: redis.Redis, conf: dict[str, Any], service: str) -> str:
    """The service's class: its SERVICES entry, else the class it was added with."""
    entry = (conf.get("SERVICES") or {}).get(service)
    if entry:
        return str(entry["priority"])
    return str((tenants.get_service(r, service) or {}).get("class") or "")


def wanted(ctx: Ctx, env: Env, rec: VmRecord, conf: dict[str, Any]) -> Request:
    """The request for the slot's VM (id given when stored): its template's vCPUs (rounded up) and memory, the
    environment's endpoint as the pool, the service's class, the environment's elasticity priority."""
    entry = specview.template_entry(env.spec, rec.role)
    policy = env.cfg.get("elasticity_policy") or {}
    return Request(id=0, envid=env.envid, service=env.service, vcpus=max(1, math.ceil(float(entry.get("cpu", 1)))),
                   memory=int(entry.get("memory", 1024)), pool_wanted=env.endpoint,
                   cls=service_class(ctx.r, conf, env.service), priority=int(policy.get("priority") or 0),
                   created=ctx.clock(), env=env.name)


def _waiting(stored: Stored) -> str:
    req = stored.req
    return (f"request {req.id} PEND ({req.vcpus} vCPUs, {req.memory} MB, pool {req.pool_wanted}): "
            f"{req.reason or 'waiting for the global scheduler'}")


def capacity(ctx: Ctx, env: Env, rec: VmRecord) -> str | None:
    """Ctx.capacity: None when the slot's new VM may be allocated now (no global configuration, a service that
    asks for scale-ups only and this is not one, or its request is ALLOCATED: then bound to this incarnation),
    else why it waits (its request is PEND; a new request is recorded and an allocation pass queued). Safe to run
    twice: a slot has at most one live request."""
    conf = gsstore.get_global(ctx.r)
    if conf is None:
        return None
    entry = (conf.get("SERVICES") or {}).get(env.service) or {}
    if entry.get("scaleups_only") and env.op != "SCALEUP":
        return None
    stored = gsstore.slot_request(ctx.r, env.envid, rec.slot)
    if stored is None or stored.req.status not in gsstore.LIVE:
        stored = gsstore.new_request(ctx.r, wanted(ctx, env, rec, conf), rec.slot,
                                     fence=(env.envid, ctx.fence) if ctx.fence else None)
        if stored.req.status == PEND:
            request_allocation(ctx.r, ctx.queue)
    if stored.req.status == ALLOCATED:
        gsstore.bind(ctx.r, stored.req.id, rec.nonce)
        return None
    return _waiting(stored)


def request_allocation(r: redis.Redis, queue: Queue) -> bool:
    """Make sure an allocation pass runs soon: queue functions.tasks.gs_allocate unless one is queued already.
    Returns True if a job was queued. Safe to call any number of times."""
    gsstore.mark_dirty(r)
    if not gsstore.claim_alloc_job(r):
        return False
    high = runtime.sibling(queue, runtime.HIGH)          # periodic, short: never behind a backlog of drives
    high.enqueue(ALLOCATE_TASK, job_id=f"gs-allocate-{int(time.time() * 1000)}", job_timeout=60, result_ttl=60,
                 failure_ttl=86400, description="global scheduler: allocate")
    return True


def settle_env(r: redis.Redis, envid: str, vms: dict[str, VmRecord], now: float, why: str) -> int:
    """With no operation running on the environment: CANCEL its PEND requests (nothing waits for them) and
    RELEASE every ALLOCATED one whose slot has no VM of that incarnation. Returns how many ended. Safe twice."""
    ended = 0
    for slot, stored in gsstore.env_slots(r, envid).items():
        rec = vms.get(slot)
        if stored.req.status == ALLOCATED and rec is not None and not stored.nonce:
            gsstore.bind(r, stored.req.id, rec.nonce)          # granted before binding was recorded
            continue
        if stored.req.status == ALLOCATED and rec is not None and rec.nonce == stored.nonce:
            continue
        reason = (f"not needed any more ({why})" if stored.req.status == PEND
                  else f"slot {slot} has no VM of this request ({why})")
        if gsstore.end(r, stored, now, reason):
            ended += 1
    return ended


def after_job(ctx: Ctx, env: Env, job_status: str) -> None:
    """Engine end hook: the job's leftovers go back (settle_env) and a pass is queued when capacity came back."""
    if not gsstore.env_slots(ctx.r, env.envid) and not gsstore.is_dirty(ctx.r):
        return
    settle_env(ctx.r, env.envid, envstore.get_vms(ctx.r, env.envid), ctx.clock(),
               f"{env.op} job {env.jobid} ended {job_status}")
    if gsstore.is_dirty(ctx.r) and gsstore.get_global(ctx.r) is not None:
        request_allocation(ctx.r, ctx.queue)


# ---------------------------------------------------------------- one allocation pass


def allocate_now(r: redis.Redis, queue: Queue, clock: Clock) -> dict[str, Any]:
    """One allocation pass (see the module docstring). Returns counts. Safe to run twice and concurrently: a
    second pass while one runs only asks for another later."""
    conf = gsstore.get_global(r)
    if conf is None:
        return {"skipped": "no global configuration"}
    with gsstore.allocator_lock(r) as token:
        if not token:
            gsstore.mark_dirty(r)
            return {"skipped": "another allocation pass is running"}
        gsstore.take_dirty(r)
        now = clock()
        stored = {s.req.id: s for s in gsstore.live(r)}
        try:
            decisions, reclaims = plan(pools_of(conf), services_of(conf), [s.req for s in stored.values()], now,
                                       gsstore.last_reclaims(r, now), RECLAIM_INTERVAL)
        except ValueError as exc:
            log.error("global scheduler: cannot allocate: %s", exc)
            return {"error": str(exc)}
        stats = _store_decisions(r, queue, clock, stored, decisions, token)
        stats["reclaims"] = sum(_reclaim(r, queue, clock, rc, stored) for rc in reclaims)
    if stats["granted"] or stats["reclaims"]:
        log.info("global scheduler: %s", stats)
    return stats


def _store_decisions(r: redis.Redis, queue: Queue, clock: Clock, stored: dict[int, Stored],
                     decisions: list[Request], token: str) -> dict[str, Any]:
    """Write the decisions that change something; kick each environment whose request was granted or whose
    waiting reason changed (its operation then says so)."""
    stats = {"granted": 0, "waiting": 0}
    now = clock()
    for new in decisions:
        old = stored[new.id].req
        if new.status == ALLOCATED:
            if gsstore.move(r, new.id, (PEND,), ALLOCATED, pool=new.pool or "", now=now, fence=token) == "ok":
                stats["granted"] += 1
                envstore.add_event(r, new.envid, new.service, "capacity",
                                   f"request {new.id} ALLOCATED: {new.vcpus} vCPUs, {new.memory} MB from pool "
                                   f"{new.pool}", clock, reqid=str(new.id))
                kick(queue, new.envid)
            continue
        stats["waiting"] += 1
        if new.reason != old.reason and gsstore.move(r, new.id, (PEND,), PEND, reason=new.reason, now=now,
                                                     fence=token) == "ok":
            kick(queue, new.envid)
    return stats


def _reclaim(r: redis.Redis, queue: Queue, clock: Clock, rc: Reclaim, stored: dict[int, Stored]) -> int:
    """Start the SCALEDOWN that gives `rc.victim` back (its slot, origin "scheduler"). Returns 1 if started, 0 if
    not possible now (a master, the environment busy or gone: the next pass decides again)."""
    victim = stored.get(rc.victim.id)
    if victim is None or not victim.slot or victim.slot == "m":
        log.info("global scheduler: cannot reclaim request %s (slot %r): only slaves are scaled down",
                 rc.victim.id, victim.slot if victim else None)
        return 0
    envid = victim.req.envid
    env = envstore.get_env(r, envid)
    if env is None:
        return 0
    msg = f"scale down of {victim.slot} by the global scheduler: {rc.reason}"
    started = opstart.start_op(r, str(env["service"]), envid, "SCALEDOWN", clock, msg, slots=victim.slot,
                               origin="scheduler")
    if started.result == "busy" and started.previous and _waits_for_capacity(r, envid, env, started.previous):
        started = opstart.start_op(r, str(env["service"]), envid, "SCALEDOWN", clock, msg,
                                   take_from=started.previous, slots=victim.slot, origin="scheduler")
        if started.result == "started" and started.previous:
            _preempted(r, clock, envid, str(env["service"]), started.previous, started.jobid)
    if started.result != "started":
        return 0
    gsstore.mark_reclaimed(r, victim.req.id, envid, clock())
    waiting = stored.get(rc.waiting)
    if waiting is not None:
        envstore.add_event(r, waiting.req.envid, waiting.req.service, "capacity",
                           f"request {rc.waiting}: the global scheduler takes back capacity borrowed by another "
                           f"service (request {rc.victim.id} in pool {rc.pool})", clock, reqid=str(rc.waiting))
    kick(queue, envid)
    return 1


def _waits_for_capacity(r: redis.Redis, envid: str, env: dict[str, Any], jobid: str) -> bool:
    """True when job `jobid` holding the environment is a SCALEUP whose new VM waits for a grant (its slot's
    request PEND, no VM record yet): it may be pre-empted by a reclaim (nothing is being built; grants happen
    only under the allocator lock this pass holds)."""
    job = envstore.get_job(r, jobid) or {}
    slot = str(env.get("op_slot") or "")
    if job.get("type") != "SCALEUP" or env.get("op_job") != jobid or not slot:
        return False
    stored = gsstore.slot_request(r, envid, slot)
    return stored is not None and stored.req.status == PEND and slot not in envstore.get_vms(r, envid)


def _preempted(r: redis.Redis, clock: Clock, envid: str, service: str, previous: str, jobid: str) -> None:
    """The waiting scale-up `previous` gave way to the reclaim `jobid`: end it FAIL and withdraw its request."""
    why = f"pre-empted by the global scheduler's reclaim (job {jobid})"
    if envstore.finish_job(r, previous, "FAIL", clock, why):
        envstore.add_event(r, envid, service, "preempted", f"job {previous} {why}", clock, jobid=previous)
    gsstore.cancel_pending(r, envid, clock(), why)


# ---------------------------------------------------------------- upkeep


def _orphans(r: redis.Redis, now: float) -> int:
    """End the live requests nothing can use any more: their environment is gone, their slot names another
    request, or (environment idle, checked under its lock) what settle_env ends. Returns how many ended."""
    by_env: dict[str, list[Stored]] = defaultdict(list)
    for stored in gsstore.live(r):
        by_env[stored.req.envid].append(stored)
    ended = 0
    for envid, reqs in by_env.items():
        if envstore.get_env(r, envid) is None:
            ended += gsstore.end_env(r, envid, now, "environment removed")
            for stored in reqs:                 # not bound to a slot any more
                ended += bool(gsstore.end(r, stored, now, "environment removed", cancel=True))
            continue
        slots = {s.req.id for s in gsstore.env_slots(r, envid).values()}
        for stored in reqs:
            if stored.req.id not in slots:
                ended += bool(gsstore.end(r, stored, now, "no VM slot is bound to this request"))
        if guards.current_op(r, envid) is None:
            with guards.env_lock(r, envid) as got:
                if got and guards.current_op(r, envid) is None:
                    ended += settle_env(r, envid, envstore.get_vms(r, envid), now, "no operation running")
    return ended


def check(r: redis.Redis, clock: Clock) -> dict[str, Any]:
    """The minute's consistency check: recompute the usage counters from the requests (drift logged and fixed),
    end orphaned requests, forget old finished ones. Returns counts. Safe to run twice."""
    drift = gsstore.check_counters(r)
    for line in drift:
        log.warning("global scheduler: usage counter drift fixed: %s", line)
    now = clock()
    return {"drift": len(drift), "orphans": _orphans(r, now),
            "trimmed": gsstore.trim_finished(r, FINISHED_KEPT)}


def pump(r: redis.Redis, queue: Queue, clock: Clock) -> dict[str, Any] | None:
    """Every tick call: an allocation pass when one was asked for (a request arrived, capacity came back)."""
    if not gsstore.is_dirty(r):
        return None
    return allocate_now(r, queue, clock)


def minute(r: redis.Redis, queue: Queue, clock: Clock) -> dict[str, Any]:
    """Once a minute: check, then allocate (pending requests, reclaims whose interval has passed)."""
    stats = check(r, clock)
    stats.update(allocate_now(r, queue, clock))
    return stats
