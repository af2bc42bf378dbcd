"""The per-minute tick: re-drive in-flight environments, refresh what OpenNebula says about every VM, and
trim jobs and events to the retention setting.

`functions.tasks.minute_tick` (the RQ entry the scheduler enqueues every few seconds) acts once per minute
however many schedulers fire (SET NX on keys.tick). The VM refresh asks OpenNebula once per (service, endpoint)
for its whole pool and updates each record's `one_state` (runn, unkn, fail, ..., or "missing") and `cpu`
under the environment's lock (an environment busy with a step is skipped until the next minute).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from rq import Queue

from functions.cloud.one import OneClient, OneError, OneUnavailable, VmView
from functions.engine import kick as lifecycle
from functions.model import specview
from functions.model.clock import Clock, system_clock
from functions.ops import callbacks
from functions.store import envstore, keys, tenants
from functions.upkeep import reconcile

log = logging.getLogger("carina.ticks")

TICK_TTL = 180


def claim_minute(r: redis.Redis, name: str, now: float) -> bool:
    """True for the first caller of this minute (several schedulers fire once). Sets a key with TTL."""
    return bool(r.set(keys.tick(name, int(now // 60)), "1", nx=True, ex=TICK_TTL))


def _apply_snapshot(r: redis.Redis, envid: str, views: dict[int, VmView], taken: float) -> int:
    """Write one_state/cpu of the environment's records from a pool snapshot; returns records changed."""
    newest = max(views, default=-1)
    changed = 0
    with envstore.env_lock(r, envid) as got:
        if not got:
            return 0
        for rec in envstore.get_vms(r, envid).values():
            if rec.vmid is None or rec.state == "allocating":
                continue
            view = views.get(rec.vmid)
            if view is None and (rec.vmid > newest or rec.created > taken):
                continue                      # allocated after the snapshot: cannot judge
            state = view.short_status() if view is not None else "missing"
            cpu = view.cpu if view is not None and view.cpu is not None else rec.cpu
            if (state, cpu) != (rec.one_state, rec.cpu):
                rec.one_state, rec.cpu = state, cpu
                envstore.put_vm(r, envid, rec)
                changed += 1
    return changed


def _groups(r: redis.Redis) -> dict[tuple[str, str, str], list[str]]:
    """(service, endpoint, proxy) -> envids of the environments that have VM records."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for svc in tenants.list_services(r):
        for env in envstore.list_envs(r, svc["name"]):
            if not r.exists(keys.env_vms(env["envid"])):
                continue
            try:
                proxy = specview.proxy(env["spec"])
            except specview.SpecError:
                continue
            groups.setdefault((svc["name"], env.get("endpoint") or "", proxy), []).append(env["envid"])
    return groups


def refresh_vms(r: redis.Redis, clock: Clock = system_clock,
                one_factory: Callable[[str, str], OneClient] = OneClient) -> dict[str, Any]:
    """Refresh every live VM record from one pool() call per endpoint. Returns counts (for logs/tests)."""
    stats = {"endpoints": 0, "changed": 0, "errors": 0}
    for (service, endpoint, proxy), envids in _groups(r).items():
        conf = tenants.get_config(r, service) or {}
        auth = ((conf.get("ENDPOINT") or {}).get(endpoint) or {}).get("oneauth")
        if not auth:
            continue
        taken = clock()
        try:
            views = {v.vmid: v for v in one_factory(proxy, auth).pool()}
        except (OneUnavailable, OneError) as exc:
            log.warning("tick: endpoint %s of %s: %s", endpoint, service, exc)
            stats["errors"] += 1
            continue
        stats["endpoints"] += 1
        for envid in envids:
            stats["changed"] += _apply_snapshot(r, envid, views, taken)
    return stats


def retain(r: redis.Redis, keep: int) -> dict[str, int]:
    """Apply the retention setting: per service, keep the newest `keep` jobs (never an unfinished one) and
    cap the service's and each environment's event stream at `keep`. Returns counts. Safe to run twice."""
    stats = {"jobs_dropped": 0, "events_dropped": 0}
    if keep <= 0:
        return stats
    for svc in tenants.list_services(r):
        name = svc["name"]
        stats["jobs_dropped"] += envstore.trim_jobs(r, name, keep, keep_unfinished=True)
        envids = [str(e) for e in r.zrange(keys.service_envs(name), 0, -1)]
        stats["events_dropped"] += envstore.trim_events(r, name, envids, keep)
    return stats


def tick(r: redis.Redis, queue: Queue, clock: Clock = system_clock,
         one_factory: Callable[[str, str], OneClient] = OneClient, retention: int = 0) -> dict[str, Any] | None:
    """Once per minute: re-drive in-flight environments, refresh VM states, apply `retention` (jobs and
    events kept; 0 = keep all). Every call pumps due delayed drives and callback retries. None if this
    minute already ran (several schedulers, or a tick job run twice)."""
    lifecycle.pump(queue)
    callbacks.pump_retries(queue)
    minute = int(clock() // 60)
    if not claim_minute(r, "minute", clock()):
        return None
    kicked = reconcile.recover_all(r, queue, clock, minute=True)   # not the watched nor the queued ones
    stats = refresh_vms(r, clock, one_factory)
    stats.update(retain(r, retention), kicked=len(kicked), minute=minute)
    log.info("minute tick: %s", stats)
    return stats
