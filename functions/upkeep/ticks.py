"""The per-minute tick: re-drive in-flight environments, refresh what OpenNebula says about every VM, run the
policies (functions.upkeep.policies), trim jobs and events to the retention setting, and run the global
scheduler (functions.ops.gsched: its check and an allocation pass every minute; a pass on any tick call when
capacity came back or a request arrived).

`functions.tasks.minute_tick` (the RQ entry the scheduler enqueues every few seconds) acts once per minute
however many schedulers fire (SET NX on keys.tick). The VM refresh asks OpenNebula once per (service, endpoint)
for its whole pool and updates each record's `one_state` (runn, unkn, fail, ..., or "missing"), `cpu`,
`vm_state` / `lcm_state` and `one_ip` (the address OpenNebula reports: legacy callbacks must come from it)
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
from functions.model import ownership, specview
from functions.model.clock import Clock, system_clock
from functions.ops import callbacks, gsched
from functions.policy import DEFAULT_GRACE
from functions.store import envstore, gsstore, keys, tenants
from functions.upkeep import policies, reconcile

log = logging.getLogger("carina.ticks")

TICK_TTL = 180


def claim_minute(r: redis.Redis, name: str, now: float) -> bool:
    """True for the first caller of this minute (several schedulers fire once). Sets a key with TTL."""
    return bool(r.set(keys.tick(name, int(now // 60)), "1", nx=True, ex=TICK_TTL))


def _confirm(one: OneClient | None, vmid: int) -> tuple[bool, VmView | None]:
    """(known, view) of a VM the pool snapshot may predate: asks OpenNebula for that one VM (None = gone)."""
    if one is None:
        return False, None
    try:
        view = one.info(vmid)
    except (OneUnavailable, OneError):
        return False, None
    return True, (view if view is not None and not view.gone else None)


def _apply_snapshot(r: redis.Redis, envid: str, service: str, views: dict[int, VmView], taken: float,
                    one: OneClient | None = None) -> int:
    """Write one_state/cpu/vm_state/lcm_state/one_ip of the environment's records from a pool snapshot; returns
    records changed. A record absent from the snapshot whose id is above every id in it (it may have been
    allocated after the snapshot, or be the newest VM, vanished) is asked about alone through `one`. A VM id
    whose tags name another owner (a reused id) counts as the record's VM missing."""
    newest = max(views, default=-1)
    install = envstore.known_installation_id(r)
    changed = 0
    with envstore.env_lock(r, envid) as got:
        if not got:
            return 0
        for rec in envstore.get_vms(r, envid).values():
            if rec.vmid is None or rec.state == "allocating" or rec.created > taken:
                continue                      # not allocated, or allocated after the snapshot: cannot judge
            view = views.get(rec.vmid)
            if view is None and rec.vmid > newest:
                known, view = _confirm(one, rec.vmid)
                if not known:
                    continue
            tags = ownership.vm_tags(service, install, envid, rec.slot, rec.nonce, rec.role)
            if view is not None and ownership.mismatch(view.user_template, tags):
                view = None
            state = view.short_status() if view is not None else "missing"
            cpu = view.cpu if view is not None and view.cpu is not None else rec.cpu
            numbers = (view.state, view.lcm_state) if view is not None else (rec.vm_state, rec.lcm_state)
            one_ip = view.ip if view is not None and view.ip else rec.one_ip   # legacy callbacks' address
            if (state, cpu, *numbers, one_ip) != (rec.one_state, rec.cpu, rec.vm_state, rec.lcm_state, rec.one_ip):
                rec.one_state, rec.cpu, (rec.vm_state, rec.lcm_state), rec.one_ip = state, cpu, numbers, one_ip
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
        one = one_factory(proxy, auth)
        try:
            views = {v.vmid: v for v in one.pool()}
        except (OneUnavailable, OneError) as exc:
            log.warning("tick: endpoint %s of %s: %s", endpoint, service, exc)
            stats["errors"] += 1
            continue
        stats["endpoints"] += 1
        for envid in envids:
            stats["changed"] += _apply_snapshot(r, envid, service, views, taken, one)
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
         one_factory: Callable[[str, str], OneClient] = OneClient, retention: int = 0,
         grace: float = DEFAULT_GRACE) -> dict[str, Any] | None:
    """Once per minute: re-drive in-flight environments, refresh VM states, run the policies (`grace`: the
    boot grace of functions.policy), apply `retention` (jobs and events kept; 0 = keep all), check and run the
    global scheduler. Every call pumps due delayed drives, callback retries and a wanted allocation pass. None
    if this minute already ran (several schedulers, or a tick job run twice)."""
    lifecycle.pump(queue)
    callbacks.pump_retries(queue)
    gsched.pump(r, queue, clock)
    minute = int(clock() // 60)
    if not claim_minute(r, "minute", clock()):
        return None
    kicked = reconcile.recover_all(r, queue, clock, minute=True)   # not the watched nor the queued ones
    stats = refresh_vms(r, clock, one_factory)
    stats["policies"] = policies.run(r, queue, clock, grace)
    stats.update(retain(r, retention), kicked=len(kicked), minute=minute)
    if gsstore.get_global(r) is not None or gsstore.live(r):
        stats["gs"] = gsched.minute(r, queue, clock)
    log.info("minute tick: %s", stats)
    return stats
