"""The minute's policy pass: run the policies (functions.policy.decide) of every created environment.

Called by functions.upkeep.ticks after the tick's VM refresh has asked OpenNebula (once per endpoint) and stored
each record's state and CPU, so this pass reads Redis only (functions.upkeep.policyread: what it reads, and how
it sees the VM records the refresh hands over). In the tick the pass is a `Pass` in three steps: `read_ahead`
while OpenNebula answers, `feed` as each endpoint's records are written (their environments are decided and
written at once: the other endpoints are still being refreshed), `finish` for the rest (passive members of a
failover group, after their partners; envs whose records the refresh did not hand over). `run` is the pass in
one go. Decisions are pure; the states are written back per batch by one compare-and-set Lua call. A batch's
actions start their jobs together through functions.ops.operations.request_policies (each claims the op guard in
its own atomic step; busy: nothing happens for it this minute).

Within a failover group the active members are decided before the passive ones, so a passive env follows its
partner in the same minute. Once per minute however often it runs: decide does nothing for a minute already
evaluated, and every write checks pol_minute.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from rq import Queue

from functions.model.clock import Clock, system_clock
from functions.ops import operations
from functions.policy import DEFAULT_GRACE, Decision, EnvInputs, decide
from functions.policy.failover import PASSIVE_ROLE, Member, pair_up
from functions.store import policystore, tenants
from functions.store.policystore import StateWrite
from functions.upkeep.policyread import BATCH, SNAPSHOT, Env, Handed, attach, read_service

log = logging.getLogger("carina.policies")

POLICY_MESSAGES = ("POLICY_STATUS:", "AVAIL_POLICY_STATUS:")


class _Pairs:
    """The failover members among a service's envs, each one's partner (failover.pair_up once per group:
    n log n for a large group, by role and envid whatever the statuses), and each member's status as decided so
    far this minute."""

    def __init__(self, envs: Sequence[Env]) -> None:
        groups: dict[str, list[Member]] = {}
        for env in envs:
            if env.role:
                groups.setdefault(env.role[1], []).append(Member(env.envid, env.role[0], env.state.status))
        self.partner_id = {envid: other for members in groups.values() for envid, other in pair_up(members).items()}
        self.member = {m.envid: m for members in groups.values() for m in members}

    def partner(self, envid: str) -> Member | None:
        return self.member.get(self.partner_id.get(envid) or "")

    def decided(self, envid: str, status: str) -> None:
        found = self.member.get(envid)
        if found is not None and found.status != status:
            self.member[envid] = Member(found.envid, found.role, status)


def _decide(envs: Sequence[Env], pairs: _Pairs, now: float, minute: int, grace: float,
            passive: bool) -> dict[str, Decision]:
    """Decide the passive envs among `envs`, or the others: each with its partner as decided so far. Pure."""
    out: dict[str, Decision] = {}
    for env in envs:
        if (env.role is not None and env.role[0] == PASSIVE_ROLE) != passive:
            continue
        inputs = EnvInputs(env.envid, env.elasticity, env.availability, env.base_size, env.vms, env.busy,
                           env.op_ended_at, grace, pairs.partner(env.envid))
        out[env.envid] = decision = decide(inputs, env.state, now, minute)
        pairs.decided(env.envid, decision.state.status)
    return out


def _decide_all(envs: list[Env], now: float, minute: int, grace: float) -> dict[str, Decision]:
    """Decide every env: the non-passive ones first, then each passive one with its partner as just decided."""
    pairs = _Pairs(envs)
    out = _decide(envs, pairs, now, minute, grace, passive=False)
    out.update(_decide(envs, pairs, now, minute, grace, passive=True))
    return out


def _fields(env: Env, decision: Decision) -> dict[str, str]:
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


def _events(env: Env, decision: Decision, fields: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
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


def _request(env: Env, decision: Decision, fields: dict[str, str]) -> operations.PolicyRequest:
    """The decided action with the new state, as ops.operations.request_policies starts it."""
    action = decision.action
    assert action is not None
    found = {str(rec.get("slot")): rec for rec in env.records}
    why = "; ".join(f"{s} VM {found[s].get('vmid')} {found[s].get('one_state') or '?'}" for s in action.slots
                    if s in found) if action.kind == "RECREATE" else ""
    data = {"envid": env.envid, "service": str(env.read.fields.get("service")),
            "name": str(env.read.fields.get("name") or "")}
    return operations.PolicyRequest(data, action.kind, action.slots, action.source, env.expect, fields,
                                    why or decision.info)


def _apply(r: redis.Redis, queue: Queue, envs: list[Env], decisions: Mapping[str, Decision], clock: Clock,
           stats: Counter[str]) -> None:
    """Write the states (one compare-and-set per batch), start the actions (a few pipelined round trips for all:
    operations.request_policies), record the events."""
    writes: list[StateWrite] = []
    pending: list[list[tuple[str, str, str, str]]] = []
    events: list[tuple[str, str, str, str]] = []
    requests: list[operations.PolicyRequest] = []
    requested: list[list[tuple[str, str, str, str]]] = []
    for env in envs:
        decision = decisions[env.envid]
        if not decision.evaluated:
            continue
        stats["transitions"] += decision.transition is not None
        fields = _fields(env, decision)
        lines = _events(env, decision, fields)
        if decision.action is not None:
            requests.append(_request(env, decision, fields))
            requested.append(lines)
            continue
        writes.append(StateWrite(env.envid, env.expect, fields))
        pending.append(lines)
    jobids = operations.request_policies(r, queue, requests, clock)
    for request, lines, jobid in zip(requests, requested, jobids, strict=True):
        if jobid is None:
            stats["busy"] += 1
            continue
        stats[f"action_{request.kind}"] += 1
        events.extend(lines)
    for done, lines in zip(policystore.write_states(r, writes), pending, strict=True):
        stats["written" if done else "changed_meanwhile"] += 1
        if done:
            events.extend(lines)
    stats["events"] += len(events)
    policystore.add_events(r, events, clock)


@dataclass
class _Service:
    """One service in the pass: its envs as read (without VMs until attached), their failover pairs, the envids
    decided so far, and whether something failed (the rest of the service waits for the next minute)."""

    name: str
    envs: list[Env]
    count: int
    pairs: _Pairs
    done: set[str] = field(default_factory=set)
    failed: bool = False


class Pass:
    """The minute's policy pass in steps (the module says why). One `now` for the whole pass, taken when it is
    made. Every step is safe to run twice: a decided env is not decided again, and every write checks
    pol_minute."""

    def __init__(self, r: redis.Redis, queue: Queue, clock: Clock = system_clock, grace: float = DEFAULT_GRACE,
                 batch: int = BATCH) -> None:
        self.r, self.queue, self.clock, self.grace, self.batch = r, queue, clock, grace, batch
        self.now = clock()
        self.services: dict[str, _Service] = {}
        self.owner: dict[str, tuple[_Service, Env]] = {}
        self.stats: Counter[str] = Counter()
        self.fed = 0.0

    def _service(self, name: str, envs: list[Env], count: int) -> _Service:
        svc = _Service(name, envs, count, _Pairs(envs))
        self.owner.update((env.envid, (svc, env)) for env in envs)
        return svc

    def read_ahead(self) -> None:
        """policyread.read_service of every service (nothing the VM refresh writes: the tick runs it while
        OpenNebula answers). A service whose read failed is read again by `finish` (which logs why). Read-only."""
        for service in tenants.service_names(self.r):
            try:
                self.services[service] = self._service(service, *read_service(self.r, service, self.batch))
            except Exception:  # noqa: BLE001 - finish reads this service again and logs what went wrong
                log.debug("policy pass: reading service %s ahead", service, exc_info=True)

    def feed(self, handed: Mapping[str, Handed]) -> None:
        """Decide and write at once the envs among `handed` (records as the refresh just left them) of the
        services read ahead, but the passive ones (they follow their partner: `finish`)."""
        started = time.perf_counter()
        picked: dict[str, tuple[_Service, list[Env]]] = {}
        for envid in handed:
            svc, env = self.owner.get(envid) or (None, None)
            if svc is None or env is None or svc.failed or envid in svc.done or (
                    env.role is not None and env.role[0] == PASSIVE_ROLE):
                continue
            picked.setdefault(svc.name, (svc, []))[1].append(env)
        for svc, envs in picked.values():
            self._evaluate(svc, envs, handed, (False,))
        self.fed += time.perf_counter() - started

    def finish(self, known: Mapping[str, Handed] | None = None) -> dict[str, Any]:
        """Evaluate every env not decided yet (records from `known`, the others read): the rest of each service
        read ahead, the other services read now. One service's failure is logged and does not stop the others.
        Returns counts for logs and tests (`seconds`: this step, `fed_seconds`: the feeds)."""
        started = time.perf_counter()
        for service in tenants.service_names(self.r):
            svc = self.services.pop(service, None)       # each read used once
            if svc is None:
                try:
                    svc = self._service(service, *read_service(self.r, service, self.batch))
                except Exception:  # noqa: BLE001 - one service's bad data must not stop every other one's policies
                    log.exception("policy pass: service %s", service)
                    self.stats["errors"] += 1
                    continue
            if not svc.failed:
                self.stats["envs"] += svc.count
                self._evaluate(svc, [env for env in svc.envs if env.envid not in svc.done], known or {}, (False, True))
        out: dict[str, Any] = dict(self.stats)
        out["seconds"] = round(time.perf_counter() - started, 3)
        out["fed_seconds"] = round(self.fed, 3)
        return out

    def _evaluate(self, svc: _Service, envs: list[Env], known: Mapping[str, Handed],
                  passives: tuple[bool, ...]) -> None:
        """Attach the envs' VMs, decide them (non-passive, then passive, as `passives` says) and write them in
        batches. A failure is logged and marks the service failed for the minute."""
        try:
            attach(self.r, envs, known, self.batch)
            decisions: dict[str, Decision] = {}
            for passive in passives:
                decisions.update(_decide(envs, svc.pairs, self.now, int(self.now // 60), self.grace, passive))
            svc.done.update(decisions)
            self.stats["evaluated"] += sum(1 for d in decisions.values() if d.evaluated)
            for start in range(0, len(envs), self.batch):
                _apply(self.r, self.queue, envs[start:start + self.batch], decisions, self.clock, self.stats)
        except Exception:  # noqa: BLE001 - one service's bad data must not stop every other one's policies
            log.exception("policy pass: service %s", svc.name)
            self.stats["errors"] += 1
            svc.failed = True


def run(r: redis.Redis, queue: Queue, clock: Clock = system_clock, grace: float = DEFAULT_GRACE,
        batch: int = BATCH, known: Mapping[str, Handed] | None = None) -> dict[str, Any]:
    """The policy pass over every service in one go (`known`: envid -> its records as the minute refresh just
    left them; the others are read). Returns counts. Safe to run twice in a minute: the second acts on nothing."""
    return Pass(r, queue, clock, grace, batch).finish(known)
