"""What the minute's VM refresh reads and writes in Redis, in batches of environments per round trip.

`where_and_records` says for each environment where its VMs live (service, endpoint, proxy) and reads the
few fields of its VM records the refresh compares (extracted from the JSON in Redis: records never cross the
wire), unless a step holds the environment; `write` replaces just the observed fields (FIELDS) of changed
records in place, by compare-and-set on those fields (skipped while a step holds the env lock).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

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


HELD = "held"
FIELDS = ("vmid", "one_state", "cpu", "vm_state", "lcm_state", "checked", "one_ip")   # what the refresh writes
_SAFE = re.compile(r"[A-Za-z0-9.:@+-]*")


@dataclass(frozen=True)
class Seen:
    """A VM record's fields the refresh needs, as stored (JSON value text; "" when the record lacks one)."""

    slot: str
    vmid: str
    state: str
    created: str
    checked: str
    one_state: str
    cpu: str
    vm_state: str
    lcm_state: str
    one_ip: str

    def written(self) -> tuple[str, ...]:
        """The written fields (FIELDS) as read."""
        return self.vmid, self.one_state, self.cpu, self.vm_state, self.lcm_state, self.checked, self.one_ip


def records(r: redis.Redis, envids: Sequence[str]) -> dict[str, list[Seen] | str]:
    """envid -> its records' Seen fields (extracted in Redis: the records never cross the wire), or HELD for
    an env a step holds. One pipelined round trip. Read-only."""
    with r.pipeline(transaction=False) as p:
        for chunk in _chunks(envids, PER_CALL):
            scripts.run(p, "observe_read", [k for envid in chunk for k in (keys.env_lock(envid), keys.env_vms(envid))])
        return _seen(envids, [x for part in p.execute() for x in part])


def _seen(envids: Sequence[str], replies: Sequence[Any]) -> dict[str, list[Seen] | str]:
    out: dict[str, list[Seen] | str] = {}
    for envid, flat in zip(envids, replies, strict=True):
        if flat == 0:
            out[envid] = HELD
            continue
        if flat and type(flat[0]) is not str:
            flat = [_s(x) for x in flat]
        out[envid] = [Seen(*flat[j:j + 10]) for j in range(0, len(flat), 10)]
    return out


def where_and_records(r: redis.Redis, envids: Sequence[str]) -> tuple[list[EnvWhere], dict[str, list[Seen] | str]]:
    """Where each env's VMs live (service, endpoint, proxy; its VM ids from its records) and its records'
    Seen fields (or HELD), in one pipelined round trip of Lua calls. Read-only. A deleted env comes back with
    an empty service and no records."""
    with r.pipeline(transaction=False) as p:
        for chunk in _chunks(envids, PER_CALL):
            scripts.run(p, "observe_where", [keys.env(envid) for envid in chunk])
        for chunk in _chunks(envids, PER_CALL):
            scripts.run(p, "observe_read", [k for envid in chunk for k in (keys.env_lock(envid), keys.env_vms(envid))])
        parts = p.execute()
    calls = (len(envids) + PER_CALL - 1) // PER_CALL
    where = [_s(x) for part in parts[:calls] for x in part]
    stored = _seen(envids, [x for part in parts[calls:] for x in part])
    cache: dict[str, str] = {}
    out = []
    for i, envid in enumerate(envids):
        service, endpoint, proxy = where[3 * i:3 * i + 3]
        seen = stored[envid]
        ids = tuple(int(x.vmid) for x in seen if x.vmid.isdigit()) if isinstance(seen, list) else ()
        out.append(EnvWhere(envid, service, endpoint, _proxy_of(proxy, cache), ids))
    return out, stored


def full_records(r: redis.Redis, wanted: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(envid, slot) -> the decoded record (absent when gone or unreadable), pipelined. Read-only."""
    with r.pipeline(transaction=False) as p:
        for envid, slot in wanted:
            p.hget(keys.env_vms(envid), slot)
        found = p.execute()
    out = {}
    for key, text in zip(wanted, found, strict=True):
        try:
            rec = json.loads(text) if text else None
        except ValueError:
            rec = None
        if isinstance(rec, dict):
            out[key] = rec
    return out


Write = tuple[str, tuple[str, ...], tuple[str, ...]]     # slot, the FIELDS as read, as they become


def write(r: redis.Redis, changes: dict[str, list[Write]]) -> dict[str, int]:
    """Replace the FIELDS of records in place: envid -> [(slot, FIELDS as read, FIELDS as they become)]
    (JSON value text: numbers, or letters/digits/.:@+- for strings). A record is written only if its vmid and every
    field that changes still read as given and no step holds the env's lock; its other fields stay as stored.
    Returns envid -> records written (-1: lock held). Safe to run twice (the second finds the fields
    changed)."""
    for items in changes.values():
        for _, old, new in items:
            if len(old) != len(FIELDS) or len(new) != len(FIELDS) or not all(_SAFE.fullmatch(v) for v in new):
                raise ValueError(f"observed.write: bad values {new!r}")
    envids = [e for e, items in changes.items() if items]
    out: dict[str, int] = {}
    with r.pipeline(transaction=False) as p:
        for chunk in _chunks(envids, PER_CALL):
            names = [k for envid in chunk for k in (keys.env_lock(envid), keys.env_vms(envid))]
            payload = [[[slot, list(old), list(new)] for slot, old, new in changes[envid]] for envid in chunk]
            scripts.run(p, "observe_write", names, [json.dumps(payload)])
        for chunk, done in zip(_chunks(envids, PER_CALL), p.execute(), strict=True):
            out.update(zip(chunk, (int(n) for n in done), strict=True))
    return out
