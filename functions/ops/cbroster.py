"""What a gateway process remembers of environments' VMs to authorize their callbacks in one round trip.

`lookup` reads (one script call) an environment's service and the records that may be the caller; the first time
a process sees an environment it reads every record and keeps each VM's slot, role and nonce (its roster). A later
callback of a VM in the roster is checked against the remembered nonce (the token's HMAC, no I/O) and goes
straight to callbacks.ingest with its record re-checked inside that script (slot, nonce, vmid, env still there):
a stale roster never admits a callback, it only costs the full path. Envids are never reused and a record's slot,
role and nonce never change for one incarnation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

from functions.store import keys, scripts
from functions.store.envstore import VmRecord

MEMBERS_KEPT = 200_000      # VMs remembered per process (a roster is a few hundred bytes a VM); then forgotten


@dataclass(frozen=True)
class Member:
    slot: str
    role: str
    nonce: str


@dataclass
class Roster:
    """An environment's service, endpoint and VMs (by vmid) as this process last read them."""

    service: str
    endpoint: str
    members: dict[int, Member] = field(default_factory=dict)


@dataclass
class Lookup:
    """What `lookup` read: the environment's service (None: no such environment) and the VM records that may be
    the caller: those with its vmid first, then those without a vmid yet."""

    service: str | None
    records: list[VmRecord]


_ROSTERS: dict[str, Roster] = {}
_count = [0]


def _learn(envid: str, service: str, endpoint: str, recs: list[VmRecord]) -> None:
    roster = _ROSTERS.get(envid)
    if roster is None:
        if _count[0] >= MEMBERS_KEPT:
            _ROSTERS.clear()
            _count[0] = 0
        roster = _ROSTERS[envid] = Roster(service, endpoint)
    for rec in recs:
        if rec.vmid is not None:
            _count[0] += rec.vmid not in roster.members
            roster.members[rec.vmid] = Member(rec.slot, rec.role, rec.nonce)


def lookup(r: redis.Redis, envid: str, vmid: int) -> Lookup:
    """The environment's service and the candidate VM records of a callback from VM `vmid`, in one round trip
    (every record the first time this process sees the environment, else the one the VM index names, else a scan
    of the matching ones); what it read updates the roster. Read-only on Redis."""
    roster = _ROSTERS.get(envid)
    index = keys.vm_index(roster.endpoint, vmid) if roster and roster.endpoint else keys.vm_index("", "")
    service, endpoint, texts = scripts.run(r, "callback_lookup", [keys.env(envid), keys.env_vms(envid), index],
                                           [str(vmid), envid, "0" if roster else "1"])
    if not service:
        gone = _ROSTERS.pop(envid, None)
        _count[0] -= len(gone.members) if gone is not None else 0
        return Lookup(None, [])
    recs = [VmRecord.from_json(t) for t in texts or ()]
    _learn(envid, service, endpoint or "", recs)
    hits = [v for v in recs if v.vmid == vmid]
    return Lookup(service, hits + [v for v in recs if v.vmid is None])


def known(envid: str, vmid: int) -> tuple[str, Member] | None:
    """(service, member) this process remembers for VM `vmid` of `envid`, or None. No I/O."""
    roster = _ROSTERS.get(envid)
    member = roster.members.get(vmid) if roster else None
    return None if member is None or roster is None else (roster.service, member)


def forget(envid: str, vmid: int) -> None:
    """Forget a remembered VM (its record changed: the next callback takes the full path). Safe to run twice."""
    roster = _ROSTERS.get(envid)
    if roster is not None and roster.members.pop(vmid, None) is not None:
        _count[0] -= 1
