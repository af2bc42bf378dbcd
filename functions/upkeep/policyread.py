"""What the minute's policy pass reads and how it sees it (functions.upkeep.policies decides and writes).

Per service, the environments in batches of `batch`, each batch one script call for the env fields and op guard
(`policystore.read_heads`), one for the state of the jobs that matter (a held guard, a cooldown), one for the spec
snapshots it needs (a configuration removed, a passive env's base size): none of it is written by the VM refresh,
so the tick reads it while OpenNebula answers. The VM records come later: those the refresh hands over as it left
them (`Handed`), the others read (`attach`).

Policies come from the service's CURRENT configuration by the environment's configuration name (a new upload
applies from the next minute), or from the env's spec snapshot when that configuration was removed;
`policy_source` says which (the upload's time, or "snapshot"). Environments whose create has not finished
(INIT) are not evaluated.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from operator import itemgetter
from typing import Any, NamedTuple

import redis

from functions.policy import PolicyState, VmObs
from functions.policy.failover import PASSIVE_ROLE, role_of
from functions.policy.state import FIELD_NAMES
from functions.policy.vmclass import record_class
from functions.store import policystore, tenants
from functions.store.policystore import EnvRead
from functions.views.shapes import iso_time

BATCH = 500
SNAPSHOT = "snapshot"
READ_FIELDS = ("service", "name", "job", "policy_source", *FIELD_NAMES.values())
LEAVING = ("removing", "gone")
RECORD_KEYS = ("state", "vmid", "one_state", "vm_state", "lcm_state", "init", "cpu", "created", "slot", "role",
               "origin")
_RECORD_VALUES = itemgetter(*RECORD_KEYS)


class Handed(NamedTuple):
    """An env's VM records as the minute refresh left them (decoded JSON), and what the policies see of them
    (vm_obs of each, leaving ones dropped) when the refresh made it, else None."""

    records: list[dict[str, Any]]
    vms: tuple[VmObs, ...] | None = None


@dataclass
class Env:
    """One environment being evaluated this minute."""

    read: EnvRead
    state: PolicyState
    elasticity: Mapping[str, Any] | None
    availability: Mapping[str, Any] | None
    source: str
    note: str = ""
    base_size: int = 1
    busy: bool = False
    op_ended_at: float = 0.0
    vms: tuple[VmObs, ...] = ()
    records: list[dict[str, Any]] = field(default_factory=list)
    _role: tuple[Mapping[str, Any] | None, tuple[str, str] | None] | None = None

    @property
    def envid(self) -> str:
        return self.read.envid

    @property
    def expect(self) -> tuple[str, str]:
        return self.read.fields.get("policy_status") or "", self.read.fields.get("pol_minute") or ""

    @property
    def role(self) -> tuple[str, str] | None:
        """(failover role, group) of the env's availability policy, or None (computed once it is known)."""
        if self._role is None or self._role[0] is not self.availability:
            self._role = (self.availability, role_of(self.availability))
        return self._role[1]


def number(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def vm_obs(rec: Mapping[str, Any]) -> VmObs | None:
    """A VM record (decoded JSON) as the policies see it; None for a record on its way out. Pure."""
    try:
        state, vmid, one_state, vm_state, lcm, init, cpu, created, slot, role, origin = _RECORD_VALUES(rec)
    except KeyError:                                            # an older record lacks a key: None for it
        state, vmid, one_state, vm_state, lcm, init, cpu, created, slot, role, origin = map(rec.get, RECORD_KEYS)
    if state in LEAVING:
        return None
    one_state = one_state or ""
    cls = record_class(vmid is not None, one_state if type(one_state) is str else str(one_state),
                       vm_state if type(vm_state) is int and vm_state >= 0 else -1,
                       lcm if type(lcm) is int and lcm >= 0 else -1,
                       type(init) is str and init.startswith("fail:"))   # its own SLAVE_<n>_INIT_FAIL
    if type(cpu) is not float and type(cpu) is not int:
        cpu = number(cpu, -1.0)
    if type(created) is not float and type(created) is not int:
        created = number(created, 0.0)
    slot, role = slot or "", role or ""
    return VmObs(slot if type(slot) is str else str(slot), role if type(role) is str else str(role), cls,
                 cpu if cpu >= 0 else None, created, origin == "policy")


def _policy(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


@lru_cache(maxsize=64)
def _source(uploaded: str) -> str:
    """`policy_source` of policies from the configuration uploaded at `uploaded` (one per service)."""
    return iso_time(uploaded) or "current"


def prepare(read: EnvRead, cfg: Mapping[str, Any] | None, uploaded: str) -> Env | None:
    """The env (without its VMs: _attach) with its policies from the current configuration; None when it is not
    evaluated (gone, INIT)."""
    fields = read.fields
    if fields.get("service") is None:
        return None
    state = PolicyState.from_fields(fields)
    if state.status == "INIT":
        return None
    name = fields.get("name") or ""
    entry = ((cfg or {}).get("ENVIRONMENT") or {}).get(name)
    if isinstance(entry, Mapping) and entry.get("type", "compute") != "group":
        env = Env(read, state, _policy(entry.get("elasticity_policy")), _policy(entry.get("availability_policy")),
                   _source(uploaded))
        env.base_size = 1 + max(0, int(number(entry.get("num_slaves"), 0)))
    else:
        env = Env(read, state, None, None, SNAPSHOT,
                   f"policies from the create-time snapshot: configuration {name!r} is no longer uploaded")
    return env


def attach(r: redis.Redis, envs: Sequence[Env], known: Mapping[str, Handed], batch: int) -> None:
    """Give each env its VM records and their observations (those the refresh handed over in `known`, the
    others read and made)."""
    missing = [env.envid for env in envs if env.envid not in known]
    found: dict[str, list[dict[str, Any]]] = {}
    for chunk in chunks(missing, batch):
        found.update(policystore.read_records(r, chunk))
    for env in envs:
        records, vms = known.get(env.envid) or (found.get(env.envid, []), None)
        env.records = records
        env.vms = tuple(filter(None, map(vm_obs, records))) if vms is None else vms   # a leaving record: None


def _needs_job(env: Env) -> list[str]:
    """The jobs whose state this env's decision depends on: the guard's holder; the last job under a cooldown."""
    out = [env.read.holder] if env.read.holder else []
    cooldown = (env.elasticity or {}).get("cooldown")
    if isinstance(cooldown, int) and cooldown > 0 and env.read.fields.get("job"):
        out.append(str(env.read.fields["job"]))
    return out


def complete(r: redis.Redis, envs: list[Env]) -> None:
    """Fill in busy / op_ended_at (job states) and what only the spec snapshot knows (2 pipelined reads)."""
    jobs = policystore.job_states(r, [j for env in envs for j in _needs_job(env)])
    for env in envs:
        holder = env.read.holder
        if holder:
            status = jobs.get(holder, (None, None))[0]
            env.busy = status not in ("DONE", "FAIL", "ABORT")   # a job not written yet holds it too
        last = jobs.get(str(env.read.fields.get("job") or ""))
        if last and last[0] in ("DONE", "FAIL", "ABORT"):
            env.op_ended_at = number(last[1], 0.0)
    wanted = [env for env in envs if env.source == SNAPSHOT or (env.role and env.role[0] == PASSIVE_ROLE)]
    spec_of = policystore.specs(r, [env.envid for env in wanted]) if wanted else {}
    for env in wanted:
        spec = spec_of.get(env.envid) or {}
        if env.source == SNAPSHOT:
            env.elasticity = _policy(spec.get("elasticity_policy"))
            env.availability = _policy(spec.get("availability_policy"))
        env.base_size = 1 + max(0, int(number(spec.get("num_slaves"), env.base_size - 1)))


def chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def read_service(r: redis.Redis, service: str, batch: int = BATCH) -> tuple[list[Env], int]:
    """What the policy pass reads of a service that the VM refresh does not change: its configuration, each
    env's fields, op guard and the jobs its decision depends on (batches of `batch`, a few round trips each).
    Returns (the envs to evaluate, without their VMs; how many envs the service has). Read-only."""
    cfg, uploaded = tenants.config_with_time(r, service)
    envids = policystore.service_envids(r, service)
    envs: list[Env] = []
    for chunk in chunks(envids, batch):
        found = [env for env in (prepare(read, cfg, uploaded) for read in
                                 policystore.read_heads(r, chunk, READ_FIELDS)) if env is not None]
        complete(r, found)
        envs.extend(found)
    return envs, len(envids)
