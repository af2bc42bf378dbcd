"""The watch set: environments waiting on OpenNebula (a VM booting, waiting to be placed or going away), each
with the VM states its last step saw; when the watcher looks at each next; and the watcher's own schedule.

An environment is in the set from the end of a drive that waits on OpenNebula until the watcher sees one of
its VMs change (then it is taken out and kicked) or its next drive starts. The watcher (functions.engine.watch)
looks at an environment soon after it started waiting, then less and less often (`backoff`), and runs one pass
at a time: a worker's pump takes the pass when it is due (`take_pass`, leased), the pass sets when the next
one is due (`next_pass`). Times in the watch set are the engine's clock; the pass schedule is real time.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from functions.store import keys, scripts

MIN_INTERVAL = 0.5     # seconds between passes while environments are due (and after one starts waiting)
MAX_INTERVAL = 4.0     # seconds between passes at most (nothing due sooner)
PASS_LEASE = 30.0      # seconds a taken pass stays taken (a pass lost with its worker comes back after this)
ENV_MAX_INTERVAL = 15.0  # seconds between two looks at one environment's VMs after a long wait
SEEN_TTL = 60          # seconds the watcher's views of changed VMs are kept for the drives it woke
PASS_LOCK_TTL = 20     # seconds a pass holds the lock at most (a pass killed with its worker frees it soon)


@dataclass(frozen=True)
class Entry:
    """Why an environment waits: the VMs (OpenNebula id -> state as its step saw it) on one endpoint, since
    when (clock time)."""

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
        """Parse an entry; raises ValueError (or KeyError/TypeError/AttributeError) on a malformed one."""
        data = json.loads(text)
        return cls(service=str(data["service"]), endpoint=str(data["endpoint"]), proxy=str(data["proxy"]),
                   vms={int(k): str(v) for k, v in dict(data["vms"]).items()}, since=float(data.get("since", 0)))


def backoff(waited: float) -> float:
    """Seconds until the watcher looks again at an environment that has waited `waited` seconds with no change:
    an eighth of the wait, between MIN_INTERVAL and ENV_MAX_INTERVAL. Pure."""
    return min(ENV_MAX_INTERVAL, max(MIN_INTERVAL, waited / 8))


def add(r: redis.Redis, envid: str, entry: Entry, now: float | None = None) -> None:
    """Watch the environment (replacing its entry), looked at by the next pass, which is brought forward.
    Safe to run twice."""
    now = time.time() if now is None else now
    with r.pipeline(transaction=False) as p:
        p.hset(keys.watch(), str(envid), entry.to_json())
        p.zadd(keys.watch_next(), {str(envid): entry.since})
        p.zadd(keys.watch_due(), {"watch": now + MIN_INTERVAL}, lt=True)
        p.execute()


def drop(r: redis.Redis, envid: str) -> None:
    """Stop watching the environment (its drive runs, or it is gone). Safe to run twice."""
    with r.pipeline(transaction=False) as p:
        p.hdel(keys.watch(), str(envid))
        p.zrem(keys.watch_next(), str(envid))
        p.execute()


def watched(r: redis.Redis) -> dict[str, str]:
    """envid -> raw entry of every watched environment."""
    return dict(r.hgetall(keys.watch()))


def watched_ids(r: redis.Redis) -> set[str]:
    """The envids in the watch set."""
    return {str(e) for e in r.hkeys(keys.watch())}


def due(r: redis.Redis, now: float, limit: int = 5000) -> dict[str, str]:
    """envid -> raw entry of the environments whose next look is due by `now` (clock time), at most `limit`.
    A due envid without an entry is forgotten."""
    envids = [str(e) for e in r.zrangebyscore(keys.watch_next(), "-inf", now, start=0, num=limit)]
    if not envids:
        return {}
    raws = r.hmget(keys.watch(), envids)
    gone = [e for e, raw in zip(envids, raws, strict=True) if raw is None]
    if gone:
        r.zrem(keys.watch_next(), *gone)
    return {e: raw for e, raw in zip(envids, raws, strict=True) if raw is not None}


def look_again(r: redis.Redis, when: Mapping[str, float]) -> None:
    """Set when the watcher next looks at these environments (clock time), if they are still watched."""
    if when:
        r.zadd(keys.watch_next(), dict(when), xx=True)


def earliest(r: redis.Redis) -> float | None:
    """When the first watched environment is due a look (clock time), or None if none is watched."""
    first = r.zrange(keys.watch_next(), 0, 0, withscores=True)
    return float(first[0][1]) if first else None


def take(r: redis.Redis, envid: str, raw: str) -> bool:
    """Take the environment out of the set if its entry is still `raw` (a newer drive's entry stays).
    True if taken: the caller kicks it."""
    return bool(scripts.run(r, "unwatch_if_equals", [keys.watch(), keys.watch_next()], [str(envid), raw]))


def put_seen(r: redis.Redis, views: Mapping[str, str]) -> None:
    """Keep what the watcher saw of changed VMs ("envid:vmid" -> JSON) for the drives it wakes (SEEN_TTL)."""
    if views:
        with r.pipeline(transaction=False) as p:
            p.hset(keys.watch_seen(), mapping=dict(views))
            p.expire(keys.watch_seen(), SEEN_TTL)
            p.execute()


def pop_seen(r: redis.Redis, envid: str, vmid: int) -> str | None:
    """What the watcher saw of the VM when it woke the environment (read once), or None."""
    field = f"{envid}:{vmid}"
    with r.pipeline() as p:
        p.hget(keys.watch_seen(), field)
        p.hdel(keys.watch_seen(), field)
        return p.execute()[0]


def take_pass(r: redis.Redis, now: float | None = None) -> bool:
    """True if a watcher pass is due and something is watched; the pass is then leased to the caller."""
    now = time.time() if now is None else now
    return bool(scripts.run(r, "watch_take", [keys.watch_due(), keys.watch()], [repr(now), repr(PASS_LEASE)]))


def next_pass(r: redis.Redis, delay: float, now: float | None = None) -> float:
    """Set the next pass `delay` seconds from now (between MIN_INTERVAL and MAX_INTERVAL); an earlier due
    time (a new entry) is kept. Returns the delay used."""
    now = time.time() if now is None else now
    delay = min(MAX_INTERVAL, max(MIN_INTERVAL, delay))
    r.zadd(keys.watch_due(), {"watch": now + delay}, lt=True)
    return delay


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
