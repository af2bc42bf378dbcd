"""The watcher: environments waiting on OpenNebula are observed in batches, never by a polling job each.

A drive that waits for VMs to boot, to be placed or to go away ends with a Watch (functions.engine.context);
the loop records it in the watch set (functions.store.watching) with the state of each VM as the step saw
it. A watcher pass (`run`, the RQ job functions.tasks.watch on the high-priority queue) makes ONE call per
endpoint (service, endpoint, proxy) for the VMs of every environment due a look (OneClient.views), compares,
and kicks only the environments whose VMs changed (what it saw is handed to their drives: no second call),
or that waited longer than RECHECK (a safety net: one drive per environment every few minutes). A long wait
backs off: an environment is looked at soon after it started waiting, then every eighth of its wait (at
most watching.ENV_MAX_INTERVAL). Passes run one at a time (a lock), are taken by the workers' pump threads
when due (`schedule`), and come when the first environment is due (between MIN_INTERVAL and MAX_INTERVAL).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from rq import Queue

from functions.cloud.one import OneClient, OneError, OneUnavailable, VmView
from functions.engine import kick as lifecycle
from functions.engine import vmops
from functions.model.clock import Clock, system_clock
from functions.store import tenants, watching
from functions.store.watching import Entry

log = logging.getLogger("carina.watch")

WATCH = "functions.tasks.watch"
JOB_TIMEOUT = 60          # seconds a pass may run (one OpenNebula call per endpoint, each with its own timeout)
RECHECK = 600.0           # seconds: an environment watched this long without a change is driven once anyway

Group = tuple[str, str, str]                       # (service, endpoint, proxy)
Member = tuple[str, str, Entry]                    # (envid, raw entry, entry)


def _groups(r: redis.Redis, queue: Queue, entries: dict[str, str], stats: dict[str, int]) -> dict[Group, list[Member]]:
    """The due environments by endpoint; a malformed entry is taken out and its environment kicked."""
    groups: dict[Group, list[Member]] = {}
    for envid, raw in entries.items():
        try:
            entry = Entry.from_json(raw)
        except (ValueError, KeyError, TypeError, AttributeError):
            _wake(r, queue, envid, raw, stats)
            continue
        groups.setdefault((entry.service, entry.endpoint, entry.proxy), []).append((envid, raw, entry))
    return groups


def _wake(r: redis.Redis, queue: Queue, envid: str, raw: str, stats: dict[str, int]) -> None:
    """Take the environment out of the watch set (if its entry is still `raw`) and kick its drive."""
    if watching.take(r, envid, raw):
        lifecycle.kick(queue, envid)
        stats["kicked"] += 1


def _views(r: redis.Redis, group: Group, vmids: list[int],
           one_factory: Callable[[str, str], OneClient]) -> dict[int, VmView] | None:
    """The group's watched VMs from one OpenNebula call; None if there is no way to ask (no credentials
    in the service's config) or OpenNebula failed (logged)."""
    service, endpoint, proxy = group
    conf = tenants.get_config(r, service) or {}
    auth = ((conf.get("ENDPOINT") or {}).get(endpoint) or {}).get("oneauth")
    if not auth:
        log.warning("watch: endpoint %s of %s: no oneauth in the service's config", endpoint, service)
        return None
    try:
        return one_factory(proxy, auth).views(vmids)
    except (OneUnavailable, OneError, ValueError) as exc:
        log.warning("watch: endpoint %s of %s: %s", endpoint, service, exc)
        return None


def _judge(members: list[Member], views: dict[int, VmView] | None, now: float,
           woken: list[Member], later: dict[str, float], seen: dict[str, str]) -> None:
    """Sort the due members of one endpoint: to wake (a VM changed, or waited RECHECK), or to look at later
    (backing off); the views of changed VMs go to `seen` for the drives woken."""
    for member in members:
        envid, _, entry = member
        moved = views is not None and any(vmops.changed(state, views.get(vmid)) for vmid, state in entry.vms.items())
        if moved:
            assert views is not None
            at = time.time()
            seen.update({f"{envid}:{vmid}": vmops.view_json(views[vmid], at) for vmid in entry.vms if vmid in views})
        if moved or now - entry.since > RECHECK:
            woken.append(member)
        else:
            later[envid] = now + watching.backoff(now - entry.since)


def run_pass(r: redis.Redis, queue: Queue, clock: Clock = system_clock,
             one_factory: Callable[[str, str], OneClient] = OneClient) -> dict[str, int]:
    """One pass over the environments due a look: one OpenNebula call per endpoint for their VMs; kick those
    whose VMs changed (or that waited RECHECK seconds), look at the others again later. Returns counts.
    Safe to run twice (a second pass finds nothing new)."""
    stats = {"due": 0, "endpoints": 0, "kicked": 0, "errors": 0}
    now = clock()
    woken: list[Member] = []
    later: dict[str, float] = {}
    seen: dict[str, str] = {}
    for group, members in _groups(r, queue, watching.due(r, now), stats).items():
        stats["due"] += len(members)
        views = _views(r, group, sorted({v for _, _, e in members for v in e.vms}), one_factory)
        stats["errors" if views is None else "endpoints"] += 1
        _judge(members, views, now, woken, later, seen)
    watching.put_seen(r, seen)
    for envid, raw, _ in woken:
        _wake(r, queue, envid, raw, stats)
    watching.look_again(r, later)
    return stats


def run(r: redis.Redis, queue: Queue, clock: Clock = system_clock,
        one_factory: Callable[[str, str], OneClient] = OneClient) -> dict[str, Any] | None:
    """A watcher pass under the watcher's lock, then the next pass scheduled for when the first watched
    environment is due (at least MIN_INTERVAL, at most MAX_INTERVAL away). None if another pass holds the
    lock (that one schedules the next). Safe to run any number of times."""
    with watching.pass_lock(r) as got:
        if not got:
            return None
        stats: dict[str, Any] = {"kicked": 0}
        try:
            stats = run_pass(r, queue, clock, one_factory)
        finally:
            first = watching.earliest(r)
            wait = watching.MAX_INTERVAL if first is None else first - clock()
            stats["next"] = watching.next_pass(r, wait)
    if stats["kicked"] or stats.get("errors"):
        log.info("watch: %s", stats)
    return stats


def schedule(high: Queue, now: float | None = None) -> bool:
    """Enqueue a watcher pass on `high` (the high-priority queue) if one is due and something is watched.
    Called by every worker's pump thread; the pass is leased, so only one is queued at a time."""
    now = time.time() if now is None else now
    if not watching.take_pass(high.connection, now):
        return False
    high.enqueue(WATCH, job_id=f"watch-{int(now * 1000)}", job_timeout=JOB_TIMEOUT, result_ttl=10,
                 failure_ttl=3600, description="watch the VMs of waiting environments")
    return True
