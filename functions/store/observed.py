"""What the minute's VM refresh reads and writes in Redis, in batches of environments per round trip.

`where_and_ids` says for each environment where its VMs live (service, endpoint, proxy) and their OpenNebula
ids; `records` reads the VM records as stored (raw JSON) of the environments no step holds; `write` replaces
changed records by compare-and-set (the SHA-1 of the record read; skipped while a step holds the env lock).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import redis

from functions.store import keys, scripts

PER_CALL = 250                    # environments per Lua call (Redis stays responsive between calls)


@dataclass(frozen=True)
class EnvWhere:
    """Where an environment's VMs live: its service, endpoint name, proxy URL ("" if unknown), VM ids."""

    envid: str
    service: str
    endpoint: str
    proxy: str
    vmids: tuple[int, ...]


def _s(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _proxy_of(text: str, cache: dict[str, str]) -> str:
    """The proxy URL from an environment's `proxy` field, or from its spec JSON (cached per spec text)."""
    if not text.startswith("{"):
        return text
    if text not in cache:
        try:
            spec = json.loads(text)
        except ValueError:
            spec = {}
        url = (spec.get("proxy") or spec.get("endpoint_proxy") or "") if isinstance(spec, dict) else ""
        cache[text] = str(url)
    return cache[text]


def where_and_ids(r: redis.Redis, envids: Sequence[str]) -> list[EnvWhere]:
    """Service, endpoint, proxy and VM ids of each env (one pipelined round trip of Lua calls). Read-only.
    A deleted env comes back with an empty service and no ids."""
    with r.pipeline(transaction=False) as p:
        for chunk in _chunks(envids, PER_CALL):
            scripts.run(p, "observe_ids", [k for envid in chunk for k in (keys.env(envid), keys.env_vms(envid))])
        replies = [x for part in p.execute() for x in part]
    cache: dict[str, str] = {}
    out = []
    for i, envid in enumerate(envids):
        service, endpoint, proxy, ids = (_s(x) for x in replies[4 * i:4 * i + 4])
        out.append(EnvWhere(envid, service, endpoint, _proxy_of(proxy, cache),
                            tuple(map(int, ids.split(","))) if ids else ()))
    return out


HELD = "held"


def records(r: redis.Redis, envids: Sequence[str]) -> dict[str, dict[str, str] | str]:
    """envid -> {slot: record JSON as stored} of each env, or HELD for an env a step holds. Read-only."""
    with r.pipeline(transaction=False) as p:
        for chunk in _chunks(envids, PER_CALL):
            scripts.run(p, "observe_read", [k for envid in chunk for k in (keys.env_lock(envid), keys.env_vms(envid))])
        replies = [x for part in p.execute() for x in part]
    out: dict[str, dict[str, str] | str] = {}
    for envid, flat in zip(envids, replies, strict=True):
        if flat == 0:
            out[envid] = HELD
        elif flat and type(flat[0]) is str:
            out[envid] = dict(zip(flat[::2], flat[1::2], strict=True))
        else:
            out[envid] = {_s(flat[j]): _s(flat[j + 1]) for j in range(0, len(flat), 2)}
    return out


def digest(text: str) -> str:
    """The SHA-1 (hex) a write compares the stored record with (Redis's redis.sha1hex of the same bytes)."""
    return hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def write(r: redis.Redis, changes: dict[str, list[tuple[str, str, str]]]) -> dict[str, int]:
    """Replace records: envid -> [(slot, digest of the record read, new record JSON)]. Each record is written
    only if it is unchanged since read and no step holds the env's lock. Returns envid -> records written
    (-1: lock held). Safe to run twice (the second finds the digests changed)."""
    envids = [e for e, items in changes.items() if items]
    out: dict[str, int] = {}
    with r.pipeline(transaction=False) as p:
        for chunk in _chunks(envids, PER_CALL):
            names = [k for envid in chunk for k in (keys.env_lock(envid), keys.env_vms(envid))]
            scripts.run(p, "observe_write", names, [json.dumps([changes[envid] for envid in chunk])])
        for chunk, done in zip(_chunks(envids, PER_CALL), p.execute(), strict=True):
            out.update(zip(chunk, (int(n) for n in done), strict=True))
    return out
