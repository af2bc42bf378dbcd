"""The operation guard of an environment (one operation at a time: HTTP 409) and its lock (one writer at a time).

`r` is always a decode_responses client. Compare-and-delete uses Lua so a stale owner can never release someone
else's lock or operation.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from functions.store import keys, scripts

log = logging.getLogger("carina.guards")

LOCK_TTL = 10               # seconds; the env lock is renewed every LOCK_TTL/4 while held


# ---------------------------------------------------------------- the operation guard (HTTP 409)


def claim_op(r: redis.Redis, envid: str, jobid: str) -> bool:
    """Take the environment's operation slot for `jobid`; False if another operation holds it."""
    return bool(r.set(keys.env_op(envid), jobid, nx=True))


def current_op(r: redis.Redis, envid: str) -> str | None:
    return r.get(keys.env_op(envid))


def release_op(r: redis.Redis, envid: str, jobid: str) -> bool:
    """Free the operation slot if `jobid` still holds it. Safe to run twice."""
    return bool(scripts.run(r, "release_if_owner", [keys.env_op(envid)], [jobid]))


def take_over_op(r: redis.Redis, envid: str, jobid: str) -> str | None:
    """Give the slot to `jobid` whatever holds it (remove pre-empts). Returns the previous holder."""
    return r.set(keys.env_op(envid), jobid, get=True)


# ---------------------------------------------------------------- one writer per environment


@contextmanager
def env_lock(r: redis.Redis, envid: str, ttl: float = LOCK_TTL) -> Iterator[str]:
    """Try to become the single writer of an environment; yields the owner token (the fence for fenced writes),
    or "" (without waiting) if taken.

    The one lock primitive of Carina: a random owner token under keys.env_lock with a short TTL, renewed
    every ttl/4 by a background thread while held (a slow step keeps it, a killed holder frees it within
    `ttl` seconds), released by a Lua compare-and-delete (a stale holder never frees someone else's lock).
    """
    key, token, ms = keys.env_lock(envid), uuid.uuid4().hex, max(1, int(ttl * 1000))
    if not r.set(key, token, nx=True, px=ms):
        yield ""
        return
    stop = threading.Event()
    keeper = threading.Thread(target=_keep_lock, args=(r, key, token, ms, stop), name=f"lock-{envid}", daemon=True)
    keeper.start()
    try:
        yield token
    finally:
        stop.set()
        keeper.join(5)
        scripts.run(r, "release_if_owner", [key], [token])


RERUN_TTL = 60        # seconds a rerun request lives (its asker also left a delayed kick: nothing is lost)


def want_rerun(r: redis.Redis, envid: str) -> None:
    """Ask whoever holds the environment's lock to run another drive as soon as it is done. Safe to run twice."""
    r.set(keys.env_rerun(envid), "1", ex=RERUN_TTL)


def take_rerun(r: redis.Redis, envid: str) -> bool:
    """True (once) if another drive asked for a rerun while this holder had the lock; clears the request."""
    return bool(r.getdel(keys.env_rerun(envid)))


def _keep_lock(r: redis.Redis, key: str, token: str, ms: int, stop: threading.Event) -> None:
    """Renew the lock every ms/4 while `token` owns it; ends when stopped or the lock was lost."""
    while not stop.wait(ms / 4000):
        try:
            if not scripts.run(r, "renew_if_owner", [key], [token, str(ms)]):
                log.warning("lock %s lost before its holder released it", key)
                return
        except redis.RedisError as exc:     # Redis restarting: keep trying while the TTL lasts
            log.warning("lock %s: could not renew (%s)", key, exc)
