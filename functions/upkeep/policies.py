"""The minute's policy pass: observe every created environment and run its policies (functions.policy.decide).

Called by functions.upkeep.ticks.tick after the VM refresh (which asked OpenNebula once per endpoint and stored
each record's state and CPU, and hands over the records as it left them), so this pass reads Redis only: per
service, the environments in batches of `batch`, each batch one pipelined round trip (env fields, op guard, and
the VM records the refresh did not hand over), a second one for the state
of the jobs that matter (a held guard, a cooldown), a third for the spec snapshots it needs (a configuration
removed, a passive env's base size). Decisions are pure; the states are written back per batch by one
compare-and-set Lua call. An action starts its job through functions.ops.operations.request_policy (op guard
first; busy: nothing happens this minute).

Policies come from the service's CURRENT configuration by the environment's configuration name (a new upload
applies from the next minute), or from the env's spec snapshot when that configuration was removed;
`policy_source` says which (the upload's time, or "snapshot"). Within a failover group the active members are
decided before the passive ones, so a passive env follows its partner in the same minute. Environments whose
create has not finished (INIT) are skipped. Once per minute however often it runs: decide does nothing for a
minute already evaluated, and every write checks pol_minute.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import lru_cache
from operator import itemgetter
from typing import Any, NamedTuple

import redis
from rq import Queue

from functions.model.clock import Clock, system_clock
from functions.ops import operations
from functions.policy import DEFAULT_GRACE, Decision, EnvInputs, PolicyState, VmObs, decide
from functions.policy.failover import PASSIVE_ROLE, Member, pair_up, role_of
from functions.policy.state import FIELD_NAMES
from functions.policy.vmclass import record_class
from functions.store import policystore, tenants
from functions.store.policystore import EnvRead, StateWrite
from functions.views.shapes import iso_time

log = logging.getLogger("carina.policies")

BATCH = 500
STARTERS = 4                    # policy actions started at once (threads: each waits on Redis round trips)
SNAPSHOT = "snapshot"
READ_FIELDS = ("service", "name", "job", "policy_source", *FIELD_NAMES.values())
POLICY_MESSAGES = ("POLICY_STATUS:", "AVAIL_POLICY_STATUS:")
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
class _Env:
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


def _number(value: Any, default: float) -> float:
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
        cpu = _number(cpu, -1.0)
    if type(created) is not float and type(created) is not int:
        created = _number(created, 0.0)
    slot, role = slot or "", role or ""
    return VmObs(slot if type(slot) is str else str(slot), role if type(role) is str else str(role), cls,
                 cpu if cpu >= 0 else None, created, origin == "policy")


def _policy(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


@lru_cache(maxsize=64)
def _source(uploaded: str) -> str:
    """`policy_source` of policies from the configuration uploaded at `uploaded` (one per service)."""
    return iso_time(uploaded) or "current"


def _prepare(read: EnvRead, cfg: Mapping[str, Any] | None, uploaded: str) -> _Env | None:
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
        env = _Env(read, state, _policy(entry.get("elasticity_policy")), _policy(entry.get("availability_policy")),
                   _source(uploaded))
        env.base_size = 1 + max(0, int(_number(entry.get("num_slaves"), 0)))
    else:
        env = _Env(read, state, None, None, SNAPSHOT,
                   f"policies from the create-time snapshot: configuration {name!r} is no longer uploaded")
    return env


def _attach(r: redis.Redis, envs: Sequence[_Env], known: Mapping[str, Handed], batch: int) -> None:
    """Give each env its VM records and their observations (those the refresh handed over in `known`, the
    others read and made)."""
    missing = [env.envid for env in envs if env.envid not in known]
    found: dict[str, list[dict[str, Any]]] = {}
    for chunk in _chunks(missing, batch):
        found.update(policystore.read_records(r, chunk))
    for env in envs:
        records, vms = known.get(env.envid) or (found.get(env.envid, []), None)
        env.records = records
        env.vms = tuple(filter(None, map(vm_obs, records))) if vms is None else vms   # a leaving record: None


def _needs_job(env: _Env) -> list[str]:
    """The jobs whose state this env's decision depends on: the guard's holder; the last job under a cooldown."""
    out = [env.read.holder] if env.read.holder else []
    cooldown = (env.elasticity or {}).get("cooldown")
    if isinstance(cooldown, int) and cooldown > 0 and env.read.fields.get("job"):
        out.append(str(env.read.fields["job"]))
    return out


def _complete(r: redis.Redis, envs: list[_Env]) -> None:
    """Fill in busy / op_ended_at (job states) and what only the spec snapshot knows (2 pipelined reads)."""
    jobs = policystore.job_states(r, [j for env in envs for j in _needs_job(env)])
    for env in envs:
        holder = env.read.holder
        if holder:
            status = jobs.get(holder, (None, None))[0]
            env.busy = status not in ("DONE", "FAIL", "ABORT")   # a job not written yet holds it too
        last = jobs.get(str(env.read.fields.get("job") or ""))
        if last and last[0] in ("DONE", "FAIL", "ABORT"):
            env.op_ended_at = _number(last[1], 0.0)
    wanted = [env for env in envs if env.source == SNAPSHOT or (env.role and env.role[0] == PASSIVE_ROLE)]
    spec_of = policystore.specs(r, [env.envid for env in wanted]) if wanted else {}
    for env in wanted:
        spec = spec_of.get(env.envid) or {}
        if env.source == SNAPSHOT:
            env.elasticity = _policy(spec.get("elasticity_policy"))
            env.availability = _policy(spec.get("availability_policy"))
        env.base_size = 1 + max(0, int(_number(spec.get("num_slaves"), env.base_size - 1)))


def _decide_all(envs: list[_Env], now: float, minute: int, grace: float) -> dict[str, Decision]:
    """Decide every env: the non-passive ones first, then each passive one with its partner as just decided.

    Partners are paired once per failover group (failover.pair_up: by role and envid, whatever the statuses),
    so a large group costs n log n; a partner's status is the one decided this minute when it is known.
    """
    groups: dict[str, list[Member]] = {}
    for env in envs:
        if env.role:
            groups.setdefault(env.role[1], []).append(Member(env.envid, env.role[0], env.state.status))
    partner_id = {envid: other for members in groups.values() for envid, other in pair_up(members).items()}
    member = {m.envid: m for members in groups.values() for m in members}
    out: dict[str, Decision] = {}
    for passive in (False, True):
        for env in envs:
            if (env.role is not None and env.role[0] == PASSIVE_ROLE) != passive:
                continue
            other = member.get(partner_id.get(env.envid) or "")
            inputs = EnvInputs(env.envid, env.elasticity, env.availability, env.base_size, env.vms, env.busy,
                               env.op_ended_at, grace, other)
            out[env.envid] = decision = decide(inputs, env.state, now, minute)
            if env.envid in member and decision.state.status != member[env.envid].status:
                member[env.envid] = replace(member[env.envid], status=decision.state.status)
    return out


def _fields(env: _Env, decision: Decision) -> dict[str, str]:
    """The hash fields that change: the new policy state, its source, and `info` unless it would only erase
    a message that is not a policy's (the engine's last job info stays until a policy has something to say)."""
    state = decision.state
    if env.note:
        state = state.with_info(f"{state.info} [{env.note}]" if state.info else env.note)
    fields = state.to_fields()
    fields["policy_source"] = env.source
    old = env.read.fields.get("info") or ""
    if not fields["info"] and old and not old.startswith(POLICY_MESSAGES):
        del fields["info"]
    return {k: v for k, v in fields.items() if env.read.fields.get(k) != v}


def _events(env: _Env, decision: Decision, fields: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """This minute's events of the env: its messages when something changed, and the status transition."""
    service = str(env.read.fields.get("service"))
    changed = decision.action is not None or decision.transition is not None
    if not changed and fields.get("info", env.read.fields.get("info")) == env.read.fields.get("info"):
        return []
    out = [(env.envid, service, "policy", msg) for msg in decision.messages]
    if env.note and env.read.fields.get("policy_source") != SNAPSHOT:
        out.append((env.envid, service, "policy", env.note))
    if decision.transition:
        old, new = decision.transition
        out.append((env.envid, service, "policy", f"policy_status {old} -> {new}"))
    return out


def _start(r: redis.Redis, queue: Queue, env: _Env, decision: Decision, fields: dict[str, str],
           clock: Clock) -> str | None:
    """Start the decided action with the new state (ops.operations.request_policy). None when busy."""
    action = decision.action
    assert action is not None
    found = {str(rec.get("slot")): rec for rec in env.records}
    why = "; ".join(f"{s} VM {found[s].get('vmid')} {found[s].get('one_state') or '?'}" for s in action.slots
                    if s in found) if action.kind == "RECREATE" else ""
    data = {"envid": env.envid, "service": str(env.read.fields.get("service")),
            "name": str(env.read.fields.get("name") or "")}
    return operations.request_policy(r, queue, data, action.kind, action.slots, action.source, env.expect, fields,
                                     clock, why or decision.info)


def _apply(r: redis.Redis, queue: Queue, envs: list[_Env], decisions: Mapping[str, Decision], clock: Clock,
           stats: Counter[str]) -> None:
    """Write the states (one compare-and-set per batch), start the actions (STARTERS at once: each is a few
    round trips to Redis, and envs are independent), record the events."""
    writes: list[StateWrite] = []
    pending: list[list[tuple[str, str, str, str]]] = []
    events: list[tuple[str, str, str, str]] = []
    starts: list[tuple[_Env, Decision, dict[str, str], list[tuple[str, str, str, str]]]] = []
    for env in envs:
        decision = decisions[env.envid]
        if not decision.evaluated:
            continue
        stats["transitions"] += decision.transition is not None
        fields = _fields(env, decision)
        lines = _events(env, decision, fields)
        if decision.action is not None:
            starts.append((env, decision, fields, lines))
            continue
        writes.append(StateWrite(env.envid, env.expect, fields))
        pending.append(lines)
    for (_, decision, _, lines), jobid in zip(starts, _start_all(r, queue, starts, clock), strict=True):
        if jobid is None:
            stats["busy"] += 1
            continue
        stats[f"action_{decision.action.kind}"] += 1  # type: ignore[union-attr]
        events.extend(lines)
    for done, lines in zip(policystore.write_states(r, writes), pending, strict=True):
        stats["written" if done else "changed_meanwhile"] += 1
        if done:
            events.extend(lines)
    stats["events"] += len(events)
    policystore.add_events(r, events, clock)


def _start_all(r: redis.Redis, queue: Queue, starts: Sequence[tuple[_Env, Decision, dict[str, str], Any]],
               clock: Clock) -> list[str | None]:
    """`_start` of each (env, decision, fields, _), STARTERS at once; the jobids in order (None: busy)."""
    if len(starts) < 2:
        return [_start(r, queue, env, decision, fields, clock) for env, decision, fields, _ in starts]
    with ThreadPoolExecutor(max_workers=STARTERS, thread_name_prefix="policy-start") as pool:
        return list(pool.map(lambda s: _start(r, queue, s[0], s[1], s[2], clock), starts))


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def read_service(r: redis.Redis, service: str, batch: int = BATCH) -> tuple[list[_Env], int]:
    """What the policy pass reads of a service that the VM refresh does not change: its configuration, each
    env's fields, op guard and the jobs its decision depends on (batches of `batch`, a few round trips each).
    Returns (the envs to evaluate, without their VMs; how many envs the service has). Read-only."""
    cfg, uploaded = tenants.config_with_time(r, service)
    envids = policystore.service_envids(r, service)
    envs: list[_Env] = []
    for chunk in _chunks(envids, batch):
        found = [env for env in (_prepare(read, cfg, uploaded) for read in
                                 policystore.read_heads(r, chunk, READ_FIELDS)) if env is not None]
        _complete(r, found)
        envs.extend(found)
    return envs, len(envids)


class Ahead:
    """read_service of every service, made before the pass (e.g. while the VM refresh waits on OpenNebula: the
    minute's tick gives it to refresh.refresh as `meanwhile`). A service whose read failed is read again by the
    pass (which then logs why). Safe to call twice (the second call reads again)."""

    def __init__(self, r: redis.Redis, batch: int = BATCH) -> None:
        self.r, self.batch = r, batch
        self.services: dict[str, tuple[list[_Env], int]] = {}

    def __call__(self) -> None:
        self.services = {}
        for service in tenants.service_names(self.r):
            try:
                self.services[service] = read_service(self.r, service, self.batch)
            except Exception:  # noqa: BLE001 - the pass reads this service again and logs what went wrong
                log.debug("policy pass: reading service %s ahead", service, exc_info=True)


def run_service(r: redis.Redis, queue: Queue, service: str, clock: Clock = system_clock,
                grace: float = DEFAULT_GRACE, batch: int = BATCH,
                known: Mapping[str, Handed] | None = None,
                read: tuple[list[_Env], int] | None = None) -> Counter[str]:
    """Evaluate the policies of every environment of `service` for the current minute (`known`: envid -> its
    records as the minute refresh just left them, the others are read; `read`: the service's read_service made
    moments before, else read now). Safe to run twice."""
    now = clock()
    minute = int(now // 60)
    stats: Counter[str] = Counter()
    envs, count = read if read is not None else read_service(r, service, batch)
    stats["envs"] += count
    _attach(r, envs, known or {}, batch)
    decisions = _decide_all(envs, now, minute, grace)
    stats["evaluated"] += sum(1 for d in decisions.values() if d.evaluated)
    for start in range(0, len(envs), batch):
        _apply(r, queue, envs[start:start + batch], decisions, clock, stats)
    return stats


def run(r: redis.Redis, queue: Queue, clock: Clock = system_clock, grace: float = DEFAULT_GRACE,
        batch: int = BATCH, known: Mapping[str, Handed] | None = None,
        ahead: Ahead | None = None) -> dict[str, Any]:
    """The policy pass over every service (one service's failure is logged and does not stop the others;
    `known`: see run_service; `ahead`: the services' reads made moments before, used once). Returns counts for
    logs and tests. Safe to run twice in a minute: the second acts on nothing."""
    started = time.perf_counter()
    stats: Counter[str] = Counter()
    done = ahead.services if ahead is not None else {}
    for service in tenants.service_names(r):
        try:
            stats.update(run_service(r, queue, service, clock, grace, batch, known, done.pop(service, None)))
        except Exception:  # noqa: BLE001 - one service's bad data must not stop every other service's policies
            log.exception("policy pass: service %s", service)
            stats["errors"] += 1
    out: dict[str, Any] = dict(stats)
    out["seconds"] = round(time.perf_counter() - started, 3)
    return out
