"""What the minute's VM refresh reads and writes in Redis, in batches of environments per round trip.

`where` says for each environment where its VMs live (service, endpoint, proxy); `records` reads the fields
of its VM records the refresh compares, unless a step holds the environment (plain pipelined reads, records
decoded by orjson: ~3 us a record); `write` replaces just the observed fields (FIELDS) of changed
records in place, by compare-and-set on those fields (skipped while a step holds the env lock).

A VM's CPU changes every minute, so it lives apart from its record, in the env's env_cpu string (JSON
{slot: [vmid, cpu]}, `write_cpu`): the minute writes one short string per environment instead of rewriting
every record, and `envstore.get_vms` / `policystore.read_envs` give each record the figure of its own VM
(`cpu_of`: a figure of another VM at the slot, before it was reused, is not taken).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
import redis

from functions.store import keys, scripts

PER_CALL = 250                    # environments per Lua call (Redis stays responsive between calls)


@dataclass(frozen=True)
class EnvWhere:
    """Where an environment's VMs live: its service, endpoint name, proxy URL ("" if unknown)."""

    envid: str
    service: str
    endpoint: str
    proxy: str


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
FIELDS = ("vmid", "one_state", "vm_state", "lcm_state", "checked", "one_ip")   # record fields the refresh writes
CPU_TTL = 900                     # seconds an env's CPU figures live unless a refresh renews them
_SAFE = re.compile(r"[A-Za-z0-9.:@+-]*")


class Seen(NamedTuple):
    """A VM record's fields the refresh needs, as stored (JSON value text; "" when the record lacks one; `cpu` the
    record's own figure); `doc` the decoded record with the CPU figure env_cpu holds for its VM, as
    envstore.get_vms reads it."""

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
    role: str = ""
    init: str = ""
    origin: str = ""
    doc: dict[str, Any] | None = None          # the decoded record (its cpu from env_cpu), kept for readers

    def written(self) -> tuple[str, ...]:
        """The written fields (FIELDS) as read."""
        return self.vmid, self.one_state, self.vm_state, self.lcm_state, self.checked, self.one_ip


Figures = dict[str, list[Any]]                # slot -> [vmid, cpu]: an env's CPU figures as env_cpu holds them


def cpu_figures(text: str | bytes | None) -> Figures:
    """The figures an env_cpu string holds ({} when none or unreadable). Pure."""
    if not text:
        return {}
    try:
        found = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return found if type(found) is dict else {}


def cpu_of(figures: Figures, slot: object, vmid: object) -> float | None:
    """The CPU figure `figures` hold for VM `vmid` at `slot`, or None when none or one of another VM (the slot was
    reused). Pure."""
    found = figures.get(slot) if type(slot) is str else figures.get(str(slot))
    if type(found) is not list or len(found) != 2 or str(found[0]) != str(vmid):
        return None
    cpu = found[1]
    return float(cpu) if type(cpu) in (int, float) else None


def _num(value: Any) -> str:
    """A decoded JSON number as json.dumps writes it (null: "null"; absent or not a number: "")."""
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is float:
        return repr(value)
    return "null" if value is None else ""


def _str(value: Any) -> str:
    return value if type(value) is str else ""


def _seen_of(slot: str, text: Any, cpu: Figures) -> Seen | None:
    """The Seen fields of one stored record (None when it is not a JSON object)."""
    try:
        rec = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if type(rec) is not dict:
        return None
    get = rec.get
    vmid = _num(get("vmid", ""))
    figure = cpu_of(cpu, slot, vmid) if cpu else None
    if figure is not None:
        rec["cpu"] = figure
    return Seen(slot, vmid, _str(get("state")), _num(get("created", "")), _str(get("checked")),
                _str(get("one_state")), _num(get("cpu", "")), _num(get("vm_state", "")),
                _num(get("lcm_state", "")), _str(get("one_ip")), _str(get("role")), _str(get("init")),
                _str(get("origin")), rec)


def records(r: redis.Redis, envids: Sequence[str]) -> dict[str, list[Seen] | str]:
    """envid -> its records' Seen fields (the CPU from env_cpu), or HELD for an env a step holds; an
    unreadable record is skipped, a deleted env has none. One pipelined round trip. Read-only."""
    with r.pipeline(transaction=False) as p:
        for envid in envids:
            p.exists(keys.env_lock(envid))
            p.hgetall(keys.env_vms(envid))
            p.get(keys.env_cpu(envid))
        replies = p.execute()
    stored: dict[str, list[Seen] | str] = {}
    for i, envid in enumerate(envids):
        if replies[3 * i]:
            stored[envid] = HELD
            continue
        cpu = cpu_figures(replies[3 * i + 2])
        found = [_seen_of(_s(slot), text, cpu) for slot, text in replies[3 * i + 1].items()]
        stored[envid] = [x for x in found if x is not None]
    return stored


def marks(r: redis.Redis) -> tuple[str, int]:
    """("<run_id> <epoch>" of the Redis server, vms_gen now): every record write counted up to that value has
    landed (the writers bump vms_gen in the same atomic step as the write); a restarted server has another
    run_id, an emptied one another epoch (a random token set once when absent)."""
    with r.pipeline(transaction=False) as p:
        p.info("server")
        p.set(keys.vms_epoch(), secrets.token_hex(8), nx=True)
        p.get(keys.vms_epoch())
        p.get(keys.vms_gen())
        info, _, epoch, gen = p.execute()
    return f"{info.get('run_id', '')} {_s(epoch)}", int(gen or 0)


def changed_since(r: redis.Redis, after: int, upto: int) -> set[str]:
    """The envids whose VM records were written with a vms_gen in (after, upto] (marks). Read-only."""
    return {_s(e) for e in r.zrangebyscore(keys.vms_dirty(), f"({after}", upto)}


def where(r: redis.Redis, envids: Sequence[str]) -> list[EnvWhere]:
    """Where each env's VMs live (service, endpoint, proxy), in one pipelined round trip (a second one for the
    spec of an env without a proxy field). Read-only. A deleted env comes back with an empty service."""
    with r.pipeline(transaction=False) as p:
        for envid in envids:
            p.hmget(keys.env(envid), "service", "endpoint", "proxy")
        heads = p.execute()
    no_proxy = [envid for envid, head in zip(envids, heads, strict=True) if head[2] is None]
    specs = dict(zip(no_proxy, _specs(r, no_proxy), strict=True))
    cache: dict[str, str] = {}
    out = []
    for envid, head in zip(envids, heads, strict=True):
        service, endpoint, proxy = (_s(x) if x is not None else "" for x in head)
        out.append(EnvWhere(envid, service, endpoint, _proxy_of(proxy or specs.get(envid, ""), cache)))
    return out


def _specs(r: redis.Redis, envids: Sequence[str]) -> list[str]:
    if not envids:
        return []
    with r.pipeline(transaction=False) as p:
        for envid in envids:
            p.hget(keys.env(envid), "spec")
        return [_s(x) if x is not None else "" for x in p.execute()]


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
            scripts.run(p, "observe_write", [*names, keys.vms_gen(), keys.vms_dirty()],
                        [json.dumps(payload), *chunk])
        for chunk, done in zip(_chunks(envids, PER_CALL), p.execute(), strict=True):
            out.update(zip(chunk, (int(n) for n in done), strict=True))
    return out


def write_cpu(r: redis.Redis, figures: dict[str, Figures]) -> int:
    """Store each env's CPU figures whole (envid -> {slot: [vmid, cpu]}) for CPU_TTL seconds; an env whose records
    are gone gets none. One pipelined round trip of script calls (PER_CALL envs each). Returns the envs written.
    Safe to run twice."""
    envids = [envid for envid, got in figures.items() if got]
    with r.pipeline(transaction=False) as p:
        for chunk in _chunks(envids, PER_CALL):
            scripts.run(p, "cpu_write", [k for envid in chunk for k in (keys.env_vms(envid), keys.env_cpu(envid))],
                        [CPU_TTL, *(orjson.dumps(figures[envid]) for envid in chunk)])
        return sum(int(n) for n in p.execute())
