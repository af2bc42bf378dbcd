"""The per-minute tick: re-drive in-flight environments, refresh what OpenNebula says about every VM, run the
policies (functions.upkeep.policies), trim jobs and events to the retention setting, and run the global
scheduler (functions.ops.gsched: its check and an allocation pass every minute; a pass on any tick call when
capacity came back or a request arrived).

`functions.tasks.minute_tick` (the RQ entry the scheduler enqueues every few seconds) acts once per minute
however many schedulers fire (SET NX on keys.tick). The VM refresh (functions.upkeep.refresh) asks OpenNebula a
fixed few calls per (proxy, credentials) — the states and last CPU of Carina's own VM ids (one
`vmpool.infoset` of short bodies per 10,000 ids) — and updates each record's `one_state` (runn, unkn, fail,
..., or "missing"), `cpu` and `vm_state` / `lcm_state` by compare-and-set (an environment busy with a step is
skipped until the next minute).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from rq import Queue

from functions.cloud.one import OneClient
from functions.engine import kick as lifecycle
from functions.model.clock import Clock, system_clock
from functions.ops import callbacks, gsched
from functions.policy import DEFAULT_GRACE
from functions.store import envstore, gsstore, keys, tenants
from functions.upkeep import policies, reconcile, refresh

log = logging.getLogger("carina.ticks")

TICK_TTL = 180


def claim_minute(r: redis.Redis, name: str, now: float) -> bool:
    """True for the first caller of this minute (several schedulers fire once). Sets a key with TTL."""
    return bool(r.set(keys.tick(name, int(now // 60)), "1", nx=True, ex=TICK_TTL))


def refresh_vms(r: redis.Redis, clock: Clock = system_clock,
                one_factory: Callable[[str, str], OneClient] = OneClient) -> dict[str, Any]:
    """Refresh every VM record from a fixed few calls per (proxy, credentials): functions.upkeep.refresh."""
    return refresh.refresh_vms(r, clock, one_factory)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block, back on after (as it was). The minute's pass makes
    hundreds of thousands of short-lived, acyclic objects (records, rows, decisions): each collection would
    rescan every one still alive (~25 % of the pass's CPU at 10k environments); refcounting frees them anyway.
    Nested use is safe: only the outermost block turns it back on."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def observe_and_decide(r: redis.Redis, queue: Queue, clock: Clock = system_clock,
                       one_factory: Callable[[str, str], OneClient] = OneClient,
                       grace: float = DEFAULT_GRACE) -> dict[str, Any]:
    """The minute's VM refresh and the policy pass (policies.Pass) woven into it, with the cyclic GC paused: the
    pass reads what the refresh does not change while OpenNebula answers, decides each endpoint's envs as soon as
    their records are written, and the rest after. Returns the refresh's counts with the policy pass's under
    "policies". Safe to run twice in a minute."""
    step = policies.Pass(r, queue, clock, grace)
    with gc_paused():
        stats, records = refresh.refresh(r, clock, one_factory, meanwhile=step.read_ahead, each=step.feed)
        stats["policies"] = step.finish(records)
        del records
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
    stats = observe_and_decide(r, queue, clock, one_factory, grace)
    stats.update(retain(r, retention), kicked=len(kicked), minute=minute)
    if gsstore.get_global(r) is not None or gsstore.live(r):
        stats["gs"] = gsched.minute(r, queue, clock)
    log.info("minute tick: %s", stats)
    return stats
