"""Restart safety: re-drive every environment with unfinished work (worker start, every minute).

The in-flight set (envstore.inflight) holds every environment whose current job is not final; drive()
itself works out from Redis plus OpenNebula (VMs found by their tags) what is left to do, so kicking is
all recovery needs. Kicks are forced (a lost queued job must not block recovery); each costs at most one extra drive.
"""

from __future__ import annotations

import logging

import redis
from rq import Queue

from functions.engine import kick as lifecycle
from functions.model.clock import Clock, system_clock
from functions.ops import groups
from functions.store import envstore, watching

log = logging.getLogger("carina.reconcile")


def recover_all(r: redis.Redis, queue: Queue, clock: Clock = system_clock, minute: bool = False) -> list[str]:
    """Kick drive(envid) for every in-flight environment and move on every group whose chain has not ended
    (groups.recheck_all); returns the kicked envids. The minute tick's pass (`minute`) leaves out what is
    already taken care of: environments in the watch set (the watcher kicks them when their VMs change) and
    those whose drive job still waits on the queue or runs (a backlog must not grow by a duplicate of every
    queued drive each minute). Safe to run twice."""
    groups.recheck_all(r, queue, clock)
    envids = envstore.inflight(r)
    if minute and envids:
        skip = watching.watched_ids(r) | lifecycle.drive_pending(queue, envids)
        envids = [e for e in envids if e not in skip]
    for envid in envids:
        lifecycle.kick(queue, envid, force=True)
    if envids:
        log.info("re-driving %d in-flight environment(s): %s", len(envids), " ".join(envids))
    return envids
