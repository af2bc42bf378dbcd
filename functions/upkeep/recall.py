"""The minute refresh's memory from one minute to the next, in the process that runs the tick.

Reading every VM record every minute was most of the refresh's cost at scale (100k records: ~1.5 s of this
process), yet records rarely change between two minutes. Every writer of a record bumps vms_gen and marks its
environment in vms_dirty in the same atomic step (functions.store.envstore put_vm / put_vms / del_vm, the
callback drain's `callback_step`, the refresh's own `observe_write`), so the refresh keeps what it read and each
minute reads again only the environments marked since, those it does not hold (new, held by a step last time,
writes that did not all land); and it judges again only the records it read again or whose VM's STATE,
LCM_STATE or STIME changed since it last judged them (`judged`): the others only get their new CPU figure.

The memory is forgotten (a full read, as on the first minute) when the Redis server is another one or was
emptied (its run_id and the epoch key: a restart may have lost the last second of writes), when vms_gen went
back, and every FULL_EVERY minutes whatever happened (a bound on anything changed outside the store's writers).
One memory per Redis address in the process; another worker process running the tick keeps its own.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import redis

from functions.policy import VmObs
from functions.store import observed

FULL_EVERY = 10                  # minutes: every record is read again at least this often
Mark = tuple[int, ...] | tuple[int, None]   # a record's (vmid, STATE, LCM_STATE, STIME) when judged; (vmid, None): gone
Marks = tuple[Mark | None, ...]              # an env's marks, one per record as stored (None: not judged)


@dataclass
class Memory:
    """What the last refreshes of this process left for one Redis server."""

    server: str                                   # run_id and epoch of the server it was read from
    gen: int                                      # vms_gen up to which every record write has been read
    full_minute: int                              # minute of the last full read
    where: dict[str, observed.EnvWhere] = field(default_factory=dict)
    stored: dict[str, list[observed.Seen]] = field(default_factory=dict)   # envid -> records as the refresh left them
    vmids: dict[str, tuple[int, ...]] = field(default_factory=dict)        # envid -> its records' VM ids, as read
    judged: dict[str, Marks] = field(default_factory=dict)   # envid -> its records' VMs when last judged
    obs: dict[str, tuple[VmObs | None, ...]] = field(default_factory=dict)  # envid -> policyread.vm_obs of each record


_MEMORIES: dict[str, Memory] = {}
_GUARD = threading.Lock()


def _address(r: redis.Redis) -> str:
    kw = r.connection_pool.connection_kwargs
    return f"{kw.get('path') or kw.get('host')}:{kw.get('port')}/{kw.get('db', 0)}"


def recall(r: redis.Redis, minute: int) -> tuple[Memory, set[str] | None, int]:
    """(the memory of r's server, the envids whose records changed since it was read (None: read everything),
    vms_gen now: once the refresh has read what changed, `settle` it). Forgets the memory when it may be wrong
    (module docstring). Reads two keys (and sets the epoch once)."""
    server, gen = observed.marks(r)
    key = _address(r)
    with _GUARD:
        mem = _MEMORIES.get(key)
        if mem is None or mem.server != server or gen < mem.gen or not 0 <= minute - mem.full_minute < FULL_EVERY:
            mem = _MEMORIES[key] = Memory(server, gen, minute)
            return mem, None, gen
    return mem, observed.changed_since(r, mem.gen, gen), gen


def settle(mem: Memory, gen: int, envids: set[str], unsure: set[str]) -> None:
    """After a refresh: the memory has read every write up to `gen`; it keeps the records of `envids` (the envs
    observed this minute) except those in `unsure` (read again next minute)."""
    mem.gen = gen
    for envid in [e for e in mem.stored if e not in envids or e in unsure]:
        del mem.stored[envid]
    for envid in [e for e in mem.vmids if e not in mem.stored]:
        del mem.vmids[envid]
    for envid in [e for e in mem.where if e not in envids]:
        del mem.where[envid]


def forget(r: redis.Redis) -> None:
    """Drop the memory of r's server (the next refresh reads everything). Safe to run twice."""
    with _GUARD:
        _MEMORIES.pop(_address(r), None)
