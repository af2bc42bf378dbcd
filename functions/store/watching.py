"""The watch set: environments waiting on OpenNebula (a VM booting, waiting to be placed or going away), each
with the VM states its last step saw, and the schedule of the watcher that polls them.

An environment is in the set from the end of a drive that waits on OpenNebula until the watcher sees one of
its VMs change (then it is taken out and kicked) or its next drive starts. The watcher (functions.engine.watch)
runs one pass at a time: a worker's pump takes the pass when it is due (`take_pass`, leased), the pass sets
when the next one is due (`next_pass`: soon after a change, backing off while nothing changes).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from functions.store import keys, scripts

MIN_INTERVAL = 0.5     # seconds between passes while VMs change (and after an environment starts waiting)
MAX_INTERVAL = 4.0     # seconds between passes after a long quiet spell (doubling from MIN_INTERVAL)
PASS_LEASE = 30.0      # seconds a taken pass stays taken (a pass lost with its worker comes back after this)


@dataclass(frozen=True)
class Entry:
    """Why an environment waits: the VMs (OpenNebula id -> state as its step saw it) on one endpoint."""

    service: str
    endpoint: str
    proxy: str
    vms: dict[int, str]
    since: float = 0.0

    def to_json(self) -> str:
        return json.dumps({"service": self.service, "endpoint": self.endpoint, "proxy": self.proxy,
                           "vms": {str(k): v for k, v in sorted(self.vms.items())}, "since": self.since},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Entry:
        """Parse an entry; raises ValueError (or KeyError/TypeError) on a malformed one."""
        data = json.loads(text)
        return cls(service=str(data["service"]), endpoint=str(data["endpoint"]), proxy=str(data["proxy"]),
                   vms={int(k): str(v) for k, v in dict(data["vms"]).items()}, since=float(data.get("since", 0)))


def add(r: redis.Redis, envid: str, entry: Entry, now: float | None = None) -> None:
    """Watch the environment (replacing its entry) and bring the next pass forward. Safe to run twice."""
    now = time.time() if now is None else now
    with r.pipeline(transaction=False) as p:
        p.hset(keys.watch(), str(envid), entry.to_json())
        p.zadd(keys.watch_due(), {"watch": now + MIN_INTERVAL}, lt=True)
        p.set(keys.watch_interval(), repr(MIN_INTERVAL))
        p.execute()


def drop(r: redis.Redis, envid: str) -> None:
    """Stop watching the environment (its drive runs, or it is gone). Safe to run twice."""
    r.hdel(keys.watch(), str(envid))


def watched(r: redis.Redis) -> dict[str, str]:
    """envid -> raw entry of every watched environment (raw, so `take` can compare it)."""
    return dict(r.hgetall(keys.watch()))


def watched_ids(r: redis.Redis) -> set[str]:
    """The envids in the watch set."""
    return {str(e) for e in r.hkeys(keys.watch())}


def take(r: redis.Redis, envid: str, raw: str) -> bool:
    """Take the environment out of the set if its entry is still `raw` (a newer drive's entry stays).
    True if taken: the caller kicks it."""
    return bool(scripts.run(r, "hdel_if_equals", [keys.watch()], [str(envid), raw]))


def take_pass(r: redis.Redis, now: float | None = None) -> bool:
    """True if a watcher pass is due and something is watched; the pass is then leased to the caller."""
    now = time.time() if now is None else now
    return bool(scripts.run(r, "watch_take", [keys.watch_due(), keys.watch()], [repr(now), repr(PASS_LEASE)]))


def next_pass(r: redis.Redis, changed: bool, now: float | None = None) -> float:
    """Set when the next pass is due: MIN_INTERVAL after a change, else twice the last interval (at most
    MAX_INTERVAL); an earlier due time (a new entry) is kept. Returns the interval chosen."""
    now = time.time() if now is None else now
    try:
        last = float(r.get(keys.watch_interval()) or MIN_INTERVAL)
    except ValueError:
        last = MIN_INTERVAL
    interval = MIN_INTERVAL if changed else min(MAX_INTERVAL, max(MIN_INTERVAL, last * 2))
    with r.pipeline(transaction=False) as p:
        p.set(keys.watch_interval(), repr(interval))
        p.zadd(keys.watch_due(), {"watch": now + interval}, lt=True)
        p.execute()
    return interval


PASS_LOCK_TTL = 120    # seconds: a pass holds the lock at most this long (one OpenNebula call per endpoint)


@contextmanager
def pass_lock(r: redis.Redis) -> Iterator[bool]:
    """Hold the watcher's lock for one pass; yields False (without waiting) if another pass holds it."""
    token = uuid.uuid4().hex
    if not r.set(keys.watch_lock(), token, nx=True, ex=PASS_LOCK_TTL):
        yield False
        return
    try:
        yield True
    finally:
        scripts.run(r, "release_if_owner", [keys.watch_lock()], [token])
