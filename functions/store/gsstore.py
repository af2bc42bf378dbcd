"""The global scheduler's state in Redis: the global configuration, the requests, their indexes, the usage
counters, the allocator lock, reclaim times and the "allocation wanted" flags (keys from store/keys.py).

A request is a hash (`gs.model.Request.to_hash()` plus `slot`, `nonce` and `ended`): `slot` is the VM slot of
its environment it is for and `nonce` the slot incarnation (VmRecord.nonce) that uses it once allocated, so
every allocation is bound to one VM. Each status has a sorted set; `gs_env_slots(envid)` maps each slot to its
current request. Every status change goes through the Lua script `gs_move`, which moves the request between
status sets and updates the pool and service usage counters in the same atomic call (PEND -> ALLOCATED only if
still PEND, fenced by the allocator lock): the counters always equal what ALLOCATED requests hold, and
`check_counters` recomputes them from the requests to prove it (and repairs any drift).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import redis

from functions.gs.allocate import usage
from functions.gs.model import ALLOCATED, CANCELLED, PEND, RELEASED, STATUSES, Request, Size
from functions.model.clock import Clock
from functions.store import envstore, keys, scripts

log = logging.getLogger("carina.gsstore")

LIVE = (PEND, ALLOCATED)
FINISHED = (RELEASED, CANCELLED)
LOCK_TTL = 30.0            # seconds: an allocation pass takes milliseconds
ALLOC_MARK_TTL = 60        # seconds a queued allocation job's mark lives (a lost job can't block others)


@dataclass(frozen=True)
class Stored:
    """A request as stored: the request, the VM slot it is for, the slot incarnation using it, when it ended."""

    req: Request
    slot: str = ""
    nonce: str = ""
    ended: float = 0.0


def _stored(raw: dict[str, str]) -> Stored | None:
    if not raw:
        return None
    try:
        req = Request.from_hash(raw)
        ended = float(raw.get("ended") or 0)
    except ValueError as exc:
        log.warning("skipping a malformed request %s: %s", raw.get("id"), exc)
        return None
    return Stored(req, raw.get("slot", ""), raw.get("nonce", ""), ended)


# ---------------------------------------------------------------- the global configuration


def save_global(r: redis.Redis, normalized: dict[str, Any], source: str, kind: str, clock: Clock) -> None:
    """Replace the global configuration atomically (one MULTI). Safe to run twice."""
    record = {"current": json.dumps(normalized), "source": source, "kind": kind, "uploaded_at": str(clock())}
    with r.pipeline(transaction=True) as pipe:
        pipe.delete(keys.gs_global())
        pipe.hset(keys.gs_global(), mapping=record)
        pipe.set(keys.gs_dirty(), "1")
        pipe.execute()


def get_global(r: redis.Redis) -> dict[str, Any] | None:
    """The normalized global configuration (gs.config.load_global's shape), or None when none was uploaded."""
    raw = r.hget(keys.gs_global(), "current")
    return json.loads(raw) if raw else None


def global_record(r: redis.Redis) -> dict[str, str] | None:
    """The stored record (current, source, kind, uploaded_at), or None. Read-only."""
    return r.hgetall(keys.gs_global()) or None


# ---------------------------------------------------------------- reading requests


def get(r: redis.Redis, reqid: int | str) -> Stored | None:
    return _stored(r.hgetall(keys.gs_request(reqid)))


def many(r: redis.Redis, reqids: Iterable[int | str]) -> list[Stored]:
    """The stored requests of `reqids` (missing or malformed ones left out), in the given order."""
    ids = list(reqids)
    if not ids:
        return []
    with r.pipeline(transaction=False) as p:
        for reqid in ids:
            p.hgetall(keys.gs_request(reqid))
        found = [_stored(raw) for raw in p.execute()]
    return [s for s in found if s is not None]


def in_status(r: redis.Redis, *statuses: str) -> list[Stored]:
    """Every request in one of `statuses`, by id."""
    ids: set[int] = set()
    for status in statuses:
        ids.update(int(x) for x in r.zrange(keys.gs_status(status), 0, -1))
    return many(r, sorted(ids))


def live(r: redis.Redis) -> list[Stored]:
    """The PEND and ALLOCATED requests (what allocation works on), by id."""
    return in_status(r, *LIVE)


def listed(r: redis.Redis, service: str | None = None) -> list[Stored]:
    """The requests kept (every status), by id; only `service`'s when given."""
    if service is None:
        return in_status(r, *STATUSES)
    return many(r, [int(x) for x in r.zrange(keys.gs_service_reqs(service), 0, -1)])


def env_slots(r: redis.Redis, envid: str) -> dict[str, Stored]:
    """slot -> the request that slot of the environment holds or waits for (any status still recorded)."""
    mapping = r.hgetall(keys.gs_env_slots(envid))
    found = {s.req.id: s for s in many(r, mapping.values())}
    return {slot: found[int(reqid)] for slot, reqid in mapping.items() if reqid.isdigit() and int(reqid) in found}


def slot_request(r: redis.Redis, envid: str, slot: str) -> Stored | None:
    reqid = r.hget(keys.gs_env_slots(envid), slot)
    return get(r, reqid) if reqid else None


# ---------------------------------------------------------------- writing requests


def new_request(r: redis.Redis, req: Request, slot: str, fence: tuple[str, str] | None = None) -> Stored:
    """Record `req` (its id and status ignored: a fresh id, PEND) for `slot` of its environment, unless that slot
    already has a live request, which is returned instead. With `fence` = (envid, env lock token): only while that
    token holds the environment lock (envstore.LockLost otherwise, nothing written). Sets the allocation flag."""
    slots_key = keys.gs_env_slots(req.envid)
    watched = (slots_key, keys.env_lock(fence[0])) if fence else (slots_key,)
    reqid = int(r.incr(keys.gs_seq()))
    made = replace(req, id=reqid, status=PEND, pool=None, reclaimed_at=None)
    data = made.to_hash() | {"slot": slot, "nonce": "", "ended": ""}

    def txn(pipe: Any) -> Stored:
        if fence and pipe.get(watched[1]) != fence[1]:
            raise envstore.LockLost(f"env {fence[0]}: lock lost, no request recorded for {slot}")
        current = pipe.hget(slots_key, slot)
        existing = _stored(pipe.hgetall(keys.gs_request(current))) if current else None
        if existing is not None and existing.req.status in LIVE:
            return existing
        pipe.multi()
        pipe.hset(keys.gs_request(reqid), mapping=data)
        pipe.zadd(keys.gs_status(PEND), {str(reqid): reqid})
        pipe.zadd(keys.gs_service_reqs(req.service), {str(reqid): reqid})
        pipe.hset(slots_key, slot, str(reqid))
        pipe.set(keys.gs_dirty(), "1")
        return Stored(made, slot)

    return r.transaction(txn, *watched, value_from_callable=True)


def move(r: redis.Redis, reqid: int | str, allowed: Iterable[str], new: str, *, pool: str = "", reason: str = "",
         now: float = 0.0, fence: str = "") -> str:
    """Move the request to `new` if its status is one of `allowed` (Lua gs_move: status sets and usage counters
    change in the same call). `fence`: the allocator lock's token, required to still hold it. Returns "ok", "gone",
    "fenced" or the status that was not allowed. Safe to run twice (the second finds the new status)."""
    return str(scripts.run(r, "gs_move", [keys.gs_request(reqid), keys.gs_pool_usage(), keys.gs_service_usage(),
                                          *(keys.gs_status(s) for s in STATUSES), keys.gs_lock()],
                           [" ".join(allowed), new, pool, reason, repr(float(now)), fence]))


def bind(r: redis.Redis, reqid: int, nonce: str) -> None:
    """Record the slot incarnation (VmRecord.nonce) that uses the request. Safe to run twice."""
    scripts.run(r, "hset_if_exists", [keys.gs_request(reqid)], ["nonce", nonce])


def end(r: redis.Redis, stored: Stored, now: float, reason: str, cancel: bool = False) -> str:
    """Finish a request: ALLOCATED -> RELEASED (CANCELLED with `cancel`), PEND -> CANCELLED, and unbind its slot.
    Returns the status it ended in ("" if it had already ended). Sets the allocation flag when capacity came
    back. Safe to run twice."""
    reqid, ended = stored.req.id, ""
    for _ in range(3):                      # PEND may become ALLOCATED between two calls: at most one retry
        got = move(r, reqid, (ALLOCATED,), CANCELLED if cancel else RELEASED, reason=reason, now=now)
        if got == "ok":
            ended = CANCELLED if cancel else RELEASED
            r.set(keys.gs_dirty(), "1")
            break
        got = move(r, reqid, (PEND,), CANCELLED, reason=reason, now=now)
        if got == "ok":
            ended = CANCELLED
            break
        if got != ALLOCATED:
            break
    if stored.slot:
        scripts.run(r, "hdel_if_equal", [keys.gs_env_slots(stored.req.envid)], [stored.slot, str(reqid)])
    return ended


def release_slot(r: redis.Redis, envid: str, slot: str, nonce: str, now: float) -> str:
    """The VM of `slot` (incarnation `nonce`) is gone: give back its request (RELEASED, or CANCELLED if it was
    still PEND). A request bound to another incarnation is left alone. Returns the status it ended in, or "".
    Safe to run twice; nothing happens for a slot without a request (no global configuration)."""
    stored = slot_request(r, envid, slot)
    if stored is None or stored.req.status not in LIVE or (stored.nonce and nonce and stored.nonce != nonce):
        return ""
    return end(r, stored, now, f"the VM of slot {slot} is gone")


def end_env(r: redis.Redis, envid: str, now: float, reason: str) -> int:
    """The environment is removed: CANCEL every request it still holds or waits for and forget its slots.
    Returns how many ended. Safe to run twice."""
    count = 0
    for stored in env_slots(r, envid).values():
        if stored.req.status in LIVE and end(r, stored, now, reason, cancel=True):
            count += 1
    r.delete(keys.gs_env_slots(envid))
    return count


def cancel_pending(r: redis.Redis, envid: str, now: float, reason: str) -> int:
    """CANCEL the environment's PEND requests (its remove was asked: nothing will use them). Returns how many.
    Safe to run twice."""
    return sum(bool(end(r, s, now, reason)) for s in env_slots(r, envid).values() if s.req.status == PEND)


def mark_reclaimed(r: redis.Redis, reqid: int, envid: str, now: float) -> None:
    """Note that the scheduler asked the environment to give request `reqid` back at `now`."""
    with r.pipeline(transaction=True) as p:
        p.hset(keys.gs_reclaimed(), envid, repr(float(now)))
        p.execute()
    scripts.run(r, "hset_if_exists", [keys.gs_request(reqid)], ["reclaimed_at", repr(float(now))])


def last_reclaims(r: redis.Redis, now: float, keep: float = 3600.0) -> dict[str, float]:
    """envid -> when it was last reclaimed (entries older than `keep` seconds are dropped)."""
    out: dict[str, float] = {}
    stale: list[str] = []
    for envid, when in r.hgetall(keys.gs_reclaimed()).items():
        try:
            value = float(when)
        except ValueError:
            value = 0.0
        if now - value > keep:
            stale.append(envid)
        else:
            out[envid] = value
    if stale:
        r.hdel(keys.gs_reclaimed(), *stale)
    return out


def trim_finished(r: redis.Redis, keep: int) -> int:
    """Forget all but the newest `keep` RELEASED/CANCELLED requests. Returns how many were dropped. Safe to
    run twice."""
    finished = sorted({int(x) for s in FINISHED for x in r.zrange(keys.gs_status(s), 0, -1)})
    old = finished[:-keep] if keep > 0 else finished
    if not old:
        return 0
    with r.pipeline(transaction=False) as p:
        for reqid in old:
            p.hget(keys.gs_request(reqid), "service")
        owners = p.execute()
    with r.pipeline(transaction=True) as p:
        for reqid, service in zip(old, owners, strict=True):
            p.delete(keys.gs_request(reqid))
            for status in FINISHED:
                p.zrem(keys.gs_status(status), str(reqid))
            if service:
                p.zrem(keys.gs_service_reqs(service), str(reqid))
        p.execute()
    return len(old)


# ---------------------------------------------------------------- usage counters


def _sizes(raw: dict[str, str]) -> dict[str, Size]:
    out: dict[str, Size] = {}
    for field, value in raw.items():
        name, _, dim = field.rpartition(":")
        size = out.get(name, Size())
        out[name] = size._replace(**{"vcpus" if dim == "vcpus" else "mem": int(value)})
    return {name: size for name, size in out.items() if size != Size()}


def counters(r: redis.Redis) -> tuple[dict[str, Size], dict[str, Size]]:
    """(per pool, per service) capacity held, as counted (names with nothing held left out). Read-only."""
    return _sizes(r.hgetall(keys.gs_pool_usage())), _sizes(r.hgetall(keys.gs_service_usage()))


def _fields(sizes: dict[str, Size]) -> dict[str, str]:
    return {f"{name}:{dim}": str(value) for name, size in sizes.items()
            for dim, value in (("vcpus", size.vcpus), ("mem", size.mem))}


def check_counters(r: redis.Redis) -> list[str]:
    """Recompute the usage counters from the ALLOCATED requests; where they differ, say so and set them to the
    recomputed values (atomically: retried if a request moved meanwhile). Returns the differences found ([] when
    they matched). Safe to run any time, twice."""
    watched = (keys.gs_status(ALLOCATED), keys.gs_pool_usage(), keys.gs_service_usage())

    def txn(pipe: Any) -> list[str]:
        ids = [int(x) for x in pipe.zrange(keys.gs_status(ALLOCATED), 0, -1)]
        reqs = [s.req for s in (_stored(pipe.hgetall(keys.gs_request(i))) for i in ids) if s is not None]
        want_pool, want_svc = usage(reqs)
        have_pool = _sizes(pipe.hgetall(keys.gs_pool_usage()))
        have_svc = _sizes(pipe.hgetall(keys.gs_service_usage()))
        drift = [f"{kind} {name}: counted {have.get(name, Size())}, requests hold {want.get(name, Size())}"
                 for kind, have, want in (("pool", have_pool, want_pool), ("service", have_svc, want_svc))
                 for name in sorted(set(have) | set(want)) if have.get(name, Size()) != want.get(name, Size())]
        if drift:
            pipe.multi()
            pipe.delete(keys.gs_pool_usage(), keys.gs_service_usage())
            if want_pool:
                pipe.hset(keys.gs_pool_usage(), mapping=_fields(want_pool))
            if want_svc:
                pipe.hset(keys.gs_service_usage(), mapping=_fields(want_svc))
        return drift

    return r.transaction(txn, *watched, value_from_callable=True)


# ---------------------------------------------------------------- the allocator lock and flags


@contextmanager
def allocator_lock(r: redis.Redis, ttl: float = LOCK_TTL) -> Iterator[str]:
    """Become the one allocator for a while: yields the owner token, or "" (without waiting) if another pass
    holds it. Released by compare-and-delete; a killed holder's lock expires after `ttl` seconds."""
    token = uuid.uuid4().hex
    if not r.set(keys.gs_lock(), token, nx=True, px=max(1, int(ttl * 1000))):
        yield ""
        return
    try:
        yield token
    finally:
        scripts.run(r, "release_if_owner", [keys.gs_lock()], [token])


def mark_dirty(r: redis.Redis) -> None:
    r.set(keys.gs_dirty(), "1")


def is_dirty(r: redis.Redis) -> bool:
    return bool(r.exists(keys.gs_dirty()))


def take_dirty(r: redis.Redis) -> bool:
    """True (and the flag cleared) when an allocation was wanted since the last pass."""
    return bool(r.getdel(keys.gs_dirty()))


def claim_alloc_job(r: redis.Redis) -> bool:
    """True for the caller that should queue the allocation job (none queued yet). Sets the mark with a TTL."""
    return bool(r.set(keys.gs_alloc_mark(), "1", nx=True, ex=ALLOC_MARK_TTL))


def clear_alloc_job(r: redis.Redis) -> None:
    """The queued allocation job started: the next request may queue another."""
    r.delete(keys.gs_alloc_mark())
