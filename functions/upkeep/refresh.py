"""The minute's VM refresh: what OpenNebula says about every VM Carina created, written into its record.

Per (proxy, credentials) — however many services and environments share them — a fixed few calls
(functions.cloud.one.OneClient.observe): `one.vmpool.infoset` of exactly Carina's VM ids there (short bodies:
STATE, LCM_STATE, STIME and the CPU of the VM's last monitoring record; one call per 10,000 ids, to bound the
memory an answer takes). Each record gets `one_state`
(runn, unkn, fail, ..., or "missing" for a VM OpenNebula no longer has or has DONE), `vm_state` /
`lcm_state` and `cpu`. Records never cross the wire: Redis hands over the few fields compared and edits
only the fields that changed, in place, by compare-and-set on them (functions.store.observed: a field another
writer changed since the read, or an environment a step holds, is left for the next minute).

Ownership: a VM id may be reused (a reset cloud, another installation). A record's VM is checked against its
USER_TEMPLATE tags (functions.model.ownership) the first time it is seen and whenever the VM at that id is
another one (its STIME changed): one `infoset` with full bodies of just those ids (`OneClient.owners`, in
slices of OWNER_SLICE). A VM whose tags name another owner counts as missing; a match is remembered in the
record's `checked` ("<vmid>@<STIME>"), so a steady minute asks for no full body at all. The same full body gives
the record's `one_ip` (the first NIC's IP as OpenNebula reports it: the only address a legacy callback is accepted
from); a record still without one is checked again (within the same budget) until it has one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis

from functions.cloud.one import INFOSET_SLICE, OneClient, OneError, OneUnavailable, VmView
from functions.model import ownership
from functions.model.clock import Clock, system_clock
from functions.store import envstore, observed, policystore, tenants

log = logging.getLogger("carina.refresh")

CHUNK = 500                      # environments read, judged and written per round trip
OBSERVERS = 2                    # endpoints observed at once (threads: one answer read while another arrives)
OWNER_SLICE = 2000               # VM ids per full-body infoset (bounds the answer: ~6 KB a VM)
OWNER_SLICES = 10                # full-body calls per endpoint and minute at most (the rest: next minute)
Changes = dict[str, list[observed.Write]]            # envid -> [(slot, FIELDS as read, FIELDS as they become)]
Stored = dict[str, list[observed.Seen] | str]        # envid -> its records' fields as read, or observed.HELD


@dataclass
class _Group:
    """The environments observed through one (proxy, credentials)."""

    envs: list[observed.EnvWhere] = field(default_factory=list)

    def vmids(self) -> list[int]:
        return sorted({v for env in self.envs for v in env.vmids})


@dataclass
class _Pending:
    """A record whose VM's tags must be checked before it is written."""

    envid: str
    service: str
    seen: observed.Seen
    view: VmView


def observation(seen: observed.Seen, view: VmView | None, cpu: float | None,
                checked: str | None = None) -> tuple[str, ...] | None:
    """The record's FIELDS (observed.FIELDS, JSON value text) with what OpenNebula says (`view` None: the VM
    is missing; `cpu` None: no new figure; `checked`: a new ownership mark; the view's IP, when it carries one,
    becomes `one_ip`: full bodies do, short ones not), or None when nothing changed. A DONE VM is missing; a
    missing VM keeps its last numbers, CPU and address. Pure."""
    old = seen.written()
    mark = old[5] if checked is None else checked
    if view is None or view.state == 6:
        new = (old[0], "missing", *old[2:5], mark, old[6])
    else:
        cpu_text = old[2]
        if cpu is not None and _float(cpu_text) != cpu:
            cpu_text = repr(float(cpu))
        new = (old[0], view.short_status(), cpu_text, str(view.state), str(view.lcm_state), mark,
               view.ip or old[6])
    return None if new == old else new


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def judgeable(seen: observed.Seen, taken: float) -> bool:
    """A record the snapshot can judge: it has a VM id, is not mid-allocate, was allocated before `taken`."""
    if not seen.vmid.isdigit() or seen.state == "allocating":
        return False
    created = _float(seen.created or "0")
    return created is not None and created <= taken


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _groups(r: redis.Redis) -> tuple[dict[tuple[str, str], _Group], Stored]:
    """(proxy, credentials) -> the environments with VMs observed through them (credentials from each
    service's current configuration of the env's endpoint; the proxy from the env's create-time spec), and
    every env's records as read (observed.Seen lists, or HELD), all read before OpenNebula is asked."""
    groups: dict[tuple[str, str], _Group] = {}
    stored: Stored = {}
    for service in tenants.service_names(r):
        envids = policystore.service_envids(r, service)
        if not envids:
            continue
        conf = tenants.get_config(r, service) or {}
        for start in range(0, len(envids), CHUNK * 4):
            where, seen = observed.where_and_records(r, envids[start:start + CHUNK * 4])
            stored.update(seen)
            for env in where:
                auth = ((conf.get("ENDPOINT") or {}).get(env.endpoint) or {}).get("oneauth")
                if env.vmids and env.proxy and auth and env.service == service:
                    groups.setdefault((env.proxy, str(auth)), _Group()).envs.append(env)
    return groups, stored


def _judge_chunk(envs: Sequence[observed.EnvWhere], stored: Stored,
                 views: dict[int, VmView], cpu: dict[int, float], taken: float,
                 pending: list[_Pending]) -> Changes:
    """The writes of a chunk's records; records whose VM must first prove its tags go to `pending`."""
    changes: Changes = {}
    for env in envs:
        found = stored.get(env.envid)
        for seen in (found if isinstance(found, list) else ()):
            if not judgeable(seen, taken):
                continue
            vmid = int(seen.vmid)
            view = views.get(vmid)
            unchecked = seen.checked != f"{vmid}@{view.stime}" if view is not None else False
            if view is not None and view.state != 6 and (unchecked or not seen.one_ip):
                pending.append(_Pending(env.envid, env.service, seen, view))
                continue
            new = observation(seen, view, cpu.get(vmid))
            if new is not None:
                changes.setdefault(env.envid, []).append((seen.slot, seen.written(), new))
    return changes


def _settle(r: redis.Redis, one: OneClient, pending: list[_Pending], cpu: dict[int, float]) -> Changes:
    """Check the tags of the pending records' VMs (full bodies, OWNER_SLICE ids a call, at most OWNER_SLICES
    calls) and make their writes: a VM of another owner (or gone meanwhile) is missing; a match is remembered
    in `checked`. Records past the budget, or of a slice OpenNebula did not answer, are left unwritten for the
    next minute (after an upgrade every record is checked once: the budget spreads that over minutes)."""
    install = envstore.known_installation_id(r)
    changes: Changes = {}
    for part in _chunks(pending[:OWNER_SLICE * OWNER_SLICES], OWNER_SLICE):
        try:
            owners = one.owners([p.view.vmid for p in part])
        except (OneUnavailable, OneError) as exc:
            log.warning("refresh: tags of %d VMs at %s: %s", len(part), one.proxy, exc)
            continue
        recs = observed.full_records(r, [(p.envid, p.seen.slot) for p in part])
        for p in part:
            rec, found = recs.get((p.envid, p.seen.slot)), owners.get(p.view.vmid)
            if rec is None:
                continue
            tags = ownership.vm_tags(p.service, install, p.envid, p.seen.slot, str(rec.get("nonce") or ""),
                                     str(rec.get("role") or ""))
            if found is not None and found.stime == p.view.stime and not ownership.mismatch(found.user_template, tags):
                new = observation(p.seen, found, cpu.get(p.view.vmid), f"{p.view.vmid}@{p.view.stime}")
            else:
                new = observation(p.seen, None, None)
            if new is not None:
                changes.setdefault(p.envid, []).append((p.seen.slot, p.seen.written(), new))
    return changes


def _count(done: dict[str, int], stats: dict[str, int]) -> None:
    stats["changed"] += sum(n for n in done.values() if n > 0)
    stats["busy"] += sum(1 for n in done.values() if n < 0)


def _observe_all(groups: dict[tuple[str, str], _Group], one_factory: Callable[[str, str], OneClient],
                 clock: Clock) -> dict[tuple[str, str], tuple[OneClient, float, Any]]:
    """Each group's observation (OneClient.observe), OBSERVERS endpoints asked at once (threads: OpenNebula
    renders one answer while another is read; lxml parses outside the GIL). Value: (client, time taken, the
    (views, cpu) pair or the exception it raised)."""
    def one_group(key: tuple[str, str], group: _Group) -> tuple[OneClient, float, Any]:
        one = one_factory(*key)
        taken = clock()
        try:
            return one, taken, one.observe(group.vmids())
        except (OneUnavailable, OneError) as exc:
            return one, taken, exc
    if len(groups) <= 1:
        return {key: one_group(key, group) for key, group in groups.items()}
    with ThreadPoolExecutor(max_workers=min(OBSERVERS, len(groups)), thread_name_prefix="observe") as pool:
        futures = {key: pool.submit(one_group, key, group) for key, group in groups.items()}
        return {key: future.result() for key, future in futures.items()}


def refresh_vms(r: redis.Redis, clock: Clock = system_clock,
                one_factory: Callable[[str, str], OneClient] = OneClient) -> dict[str, Any]:
    """Refresh every judgeable VM record (see the module). Returns counts: endpoints observed, records
    changed, environments busy (a step held them), errors (endpoints that did not answer), XML-RPC calls,
    records left unchecked for the next minute (past the full-body budget).
    Safe to run twice."""
    stats = {"endpoints": 0, "changed": 0, "busy": 0, "errors": 0, "calls": 0, "unchecked": 0}
    groups, stored = _groups(r)
    stats["busy"] = sum(1 for v in stored.values() if v == observed.HELD)
    for key, (one, taken, seen) in _observe_all(groups, one_factory, clock).items():
        if isinstance(seen, Exception):
            log.warning("refresh: endpoint %s: %s", key[0], seen)
            stats["errors"] += 1
            continue
        views, cpu = seen
        stats["endpoints"] += 1
        stats["calls"] += (len(groups[key].vmids()) + INFOSET_SLICE - 1) // INFOSET_SLICE
        pending: list[_Pending] = []
        for chunk in _chunks(groups[key].envs, CHUNK):
            _count(observed.write(r, _judge_chunk(chunk, stored, views, cpu, taken, pending)), stats)
        if pending:
            stats["calls"] += min(OWNER_SLICES, (len(pending) + OWNER_SLICE - 1) // OWNER_SLICE)
            stats["unchecked"] += max(0, len(pending) - OWNER_SLICE * OWNER_SLICES)
            _count(observed.write(r, _settle(r, one, pending, cpu)), stats)
    return stats
