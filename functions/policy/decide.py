"""One policy tick for one environment: a pure function of observations, the clock and the stored state.

`decide(inputs, state, now)` returns a Decision: at most one Action for the engine, the new PolicyState
(to HSET, see state.py), and the messages of this tick (`info` = the headline). The rules:

1. Once per minute. `minute` (default `now // 60`) not after `state.minute` -> nothing changes, no action
   (two schedulers, or a retried job, act once).
2. Observations. Each VM is `judged`: a failed/unknown/missing VM younger than `grace` seconds (since its
   record's current incarnation) counts as starting. Variables numvms (every VM held, master and broken
   ones included), nummissing, numunknown, numfailed (alias numfail), avgcpu (mean CPU % of the running
   VMs that report one, master included; absent when none does); `metrics` = `avgcpu[37.5]` / `avgcpu[-]`.
3. Status. INIT: nothing else (the create is not finished). READY -> ACTIVE, or for a passive env its
   partner rule. No failover role -> ACTIVE. A passive env follows its active partner (failover.py):
   partner FAILED -> ACTIVE, partner ACTIVE -> PASSIVE, otherwise unchanged.
4. Availability (every non-INIT env). `recreate_expr` true `period` consecutive ticks -> RECREATE of the
   broken slots, each in place: a broken master alone first, broken slaves only once the master runs.
   Active role: `failover_expr` true `period` ticks while ACTIVE -> FAILED; `failback_expr` true `period`
   ticks while FAILED -> ACTIVE. A missing partner is a message.
5. Elasticity, only when the resulting status is ACTIVE. time-based: the first window (policy order)
   matching now in the policy's `timezone` gives the minimum VM count (master included); below -> SCALEUP,
   above -> SCALEDOWN. No window matches: the policy's own `min` if set, else the size is kept. auto:
   below `min` -> SCALEUP, above `max` -> SCALEDOWN at once; otherwise scaleup_expr / scaledown_expr must
   be true `period` consecutive ticks, one counter per direction; both true -> nothing and a message.
   A PASSIVE env of a failover group instead sheds the slaves its elasticity added (by_policy), one per
   tick, never below its base size (1 + num_slaves).
6. One action per tick (availability first). No action while an operation is in progress (`busy`) or
   within `cooldown` seconds (elasticity policy; default 0) of the last policy action or the end of the
   last operation (manual ones included, so policy and operator do not fight). Counters still advance
   while blocked and stay at `period`, so the action happens on the first tick it is allowed; status
   transitions are not operations and happen even while busy. Every counter resets when false.
7. Expressions never raise: a bad expression, division by zero, a missing or non-finite metric makes it
   false and the reason is in the messages.

Differences from the original (its bugs not copied): `period` means N consecutive true ticks and acts on
the N-th (the original acted on the N+1-th and its availability counters never reset on false);
separate up/down counters; a cooldown; min/max bounds act at once; a missing `max` is no limit (not 0);
time-based scale-down waits for running operations; no integer division; `numfail` works; the master is
really recreated first and slaves wait for it; VMs inside the boot grace are not judged; failback without
a partner is a message; the passive shrink works without the global scheduler; the failover pair is
level-triggered, so no env writes another env's status.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from functions.policy import elasticity, failover
from functions.policy.actions import FAILBACK, RECREATE, SCALEDOWN, Action, recreate_targets, scaledown_slot
from functions.policy.conditions import check, cleaned
from functions.policy.state import PolicyState, clip
from functions.policy.vmclass import BROKEN, VmObs, judged, metrics, variables

DEFAULT_GRACE = 300.0
AVAIL = failover.AVAIL


@dataclass(frozen=True)
class EnvInputs:
    """Everything decide needs to know about one env besides its PolicyState.

    elasticity / availability: the normalized policy dicts (confschema) or None; base_size: 1 + num_slaves;
    vms: every VM record held; busy: an operation (manual or policy) is in progress; op_ended_at: epoch
    seconds the last operation ended (0 = unknown); grace: boot grace in seconds; partner: the failover
    partner (failover.partner_of), None when there is none.
    """

    envid: str
    elasticity: Mapping[str, Any] | None
    availability: Mapping[str, Any] | None
    base_size: int
    vms: tuple[VmObs, ...]
    busy: bool = False
    op_ended_at: float = 0.0
    grace: float = DEFAULT_GRACE
    partner: failover.Member | None = None

    @classmethod
    def from_spec(cls, envid: str, spec: Mapping[str, Any], vms: Sequence[VmObs], **extra: Any) -> EnvInputs:
        """Inputs from an environment's spec snapshot (the normalized ENVIRONMENT entry). Pure."""
        def policy(key: str) -> Mapping[str, Any] | None:
            value = spec.get(key)
            return value if isinstance(value, Mapping) else None
        slaves = elasticity.int_or(spec.get("num_slaves"), 0) or 0
        return cls(str(envid), policy("elasticity_policy"), policy("availability_policy"), 1 + max(0, slaves),
                   tuple(vms), **extra)


@dataclass(frozen=True)
class Decision:
    """action: what the engine should do (None = nothing); state: the new PolicyState to store;
    messages: this tick's messages in order (events); evaluated: False when the minute was already done;
    transition: (old, new) policy_status when it changed."""

    action: Action | None
    state: PolicyState
    messages: tuple[str, ...] = ()
    evaluated: bool = True
    transition: tuple[str, str] | None = None

    @property
    def info(self) -> str:
        return self.state.info

    @property
    def metrics(self) -> str:
        return self.state.metrics


@dataclass
class _Tick:
    """The state being built during one decide call."""

    status: str
    up: int
    down: int
    recreate: int
    failover: int
    failback: int
    messages: list[str] = field(default_factory=list)
    headline: str | None = None
    action: Action | None = None

    def say(self, text: str | None, headline: bool = False) -> None:
        if text:
            self.messages.append(text)
            if headline:
                self.headline = text


def _period(policy: Mapping[str, Any] | None) -> int:
    return max(1, elasticity.int_or((policy or {}).get("period"), 1) or 1)


def _resolve_status(tick: _Tick, role: str | None, partner: failover.Member | None) -> None:
    """READY and role changes: where this env's status belongs before the availability rules run."""
    if role == failover.PASSIVE_ROLE:
        status, message = failover.passive_status(tick.status, partner)
        tick.say(message, headline=status != tick.status)
        tick.status = status
    elif role == failover.ACTIVE_ROLE:
        if tick.status not in ("ACTIVE", "FAILED"):
            tick.status = "ACTIVE"
    elif tick.status != "ACTIVE":
        if tick.status in ("PASSIVE", "FAILED"):
            tick.say(f"{AVAIL}No failover role (any more): environment ACTIVE", headline=True)
        tick.status = "ACTIVE"


def _recreate(tick: _Tick, policy: Mapping[str, Any], vms: list[VmObs], values: Mapping[str, float],
              busy: bool) -> None:
    """The recreate rule: count recreate_expr, and at `period` pick the slots (master alone first)."""
    if not policy.get("recreate_expr"):
        tick.recreate = 0
        return
    period = _period(policy)
    outcome = check(policy.get("recreate_expr"), values)
    tick.say(f"{AVAIL}recreate_expr: {outcome.error}" if outcome.error else None)
    tick.recreate = min(tick.recreate + 1, period) if outcome.value else 0
    if tick.recreate < period:
        if tick.recreate:
            tick.say(f"{AVAIL}Detected missing or unhealthy VM counter={tick.recreate} period={period}")
        return
    slots, why, wait = recreate_targets(vms)
    if slots and busy:
        tick.say(f"{AVAIL}Recreating {', '.join(slots)} when the operation in progress ends")
    elif slots:
        tick.action = Action(RECREATE, slots, "availability")
        tick.recreate = 0
        tick.say(f"{AVAIL}Recreating VM {', '.join(slots)}", headline=True)
    else:
        tick.say(f"{AVAIL}{why}")
        if not wait:
            tick.recreate = 0


def _failover(tick: _Tick, policy: Mapping[str, Any], values: Mapping[str, float],
              partner: failover.Member | None) -> None:
    """The active side of a failover group: ACTIVE -> FAILED and back, by consecutive counters."""
    def outcome(key: str, when: str) -> bool | None:
        if tick.status != when or not policy.get(key):
            return None
        result = check(policy.get(key), values)
        tick.say(f"{AVAIL}{key}: {result.error}" if result.error else None)
        return result.value
    step = failover.active_step(tick.status, tick.failover, tick.failback, outcome("failover_expr", "ACTIVE"),
                                outcome("failback_expr", "FAILED"), _period(policy), partner)
    tick.status, tick.failover, tick.failback = step.status, step.failover, step.failback
    tick.say(step.message, headline=step.changed)


def _gate(tick: _Tick, inputs: EnvInputs, state: PolicyState, now: float, cooldown: float) -> str | None:
    """Why no action may be emitted now, or None."""
    if inputs.busy:
        return "an operation is in progress"
    if tick.action is not None:
        return "another policy acted this tick"
    left = max(state.last_action_at, inputs.op_ended_at) + cooldown - now
    return f"cooldown, {math.ceil(left)}s left" if left > 0 else None


def _elastic(tick: _Tick, inputs: EnvInputs, state: PolicyState, vms: list[VmObs], values: Mapping[str, float],
             now: float, role: str | None) -> None:
    """Elasticity of an ACTIVE env, or the shrink of a PASSIVE one back to its base size."""
    policy = inputs.elasticity or {}
    mode = policy.get("mode")
    if tick.status == "ACTIVE" and mode in ("time-based", "auto"):
        cooldown = max(0, elasticity.int_or(policy.get("cooldown"), 0) or 0)
        gate = _gate(tick, inputs, state, now, cooldown)
        if mode == "time-based":
            out = elasticity.time_based(policy, vms, now, gate)
        else:
            out = elasticity.auto(policy, vms, values, tick.up, tick.down, gate)
        tick.up, tick.down = out.up, out.down
        if out.action is not None:
            tick.action = out.action
        tick.say(out.message, headline=out.action is not None)
        return
    tick.up = tick.down = 0
    if tick.status == "PASSIVE" and role == failover.PASSIVE_ROLE and len(vms) > inputs.base_size:
        slot = scaledown_slot(vms, only_policy=True)
        if slot is None:
            return
        gate = _gate(tick, inputs, state, now, 0)
        if gate is not None:
            tick.say(f"{AVAIL}Removing {slot}, added by elasticity, after failback (waiting: {gate})")
            return
        tick.action = Action(SCALEDOWN, (slot,), FAILBACK)
        tick.say(f"{AVAIL}Removing {slot}, added by elasticity, after failback", headline=True)


def decide(inputs: EnvInputs, state: PolicyState, now: float, minute: int | None = None) -> Decision:
    """Run every policy of one environment for the minute of `now`. Pure; deciding the same minute again
    returns no action and the unchanged state, so it is safe to run twice."""
    minute = int(now // 60) if minute is None else minute
    if minute <= state.minute:
        return Decision(None, state, (), evaluated=False)
    vms = [judged(vm, now, inputs.grace) if vm.cls in BROKEN else vm for vm in inputs.vms]
    raw_values = variables(vms)
    shown = metrics(raw_values)
    if state.status == "INIT":
        return Decision(None, replace(state, minute=minute, metrics=shown))
    values = cleaned(raw_values)
    tick = _Tick(state.status, state.up, state.down, state.recreate, state.failover, state.failback)
    found = failover.role_of(inputs.availability)
    role = found[0] if found else None
    _resolve_status(tick, role, inputs.partner)
    if inputs.availability is not None:
        _recreate(tick, inputs.availability, vms, values, inputs.busy)
        if role == failover.ACTIVE_ROLE:
            _failover(tick, inputs.availability, values, inputs.partner)
    else:
        tick.recreate = 0
    if role != failover.ACTIVE_ROLE:
        tick.failover = tick.failback = 0
    _elastic(tick, inputs, state, vms, values, now, role)
    info = tick.headline or (tick.messages[-1] if tick.messages else "")
    new = PolicyState(tick.status, clip(info), shown, minute, tick.up, tick.down, tick.recreate, tick.failover,
                      tick.failback, float(now) if tick.action is not None else state.last_action_at)
    transition = (state.status, tick.status) if tick.status != state.status else None
    return Decision(tick.action, new, tuple(tick.messages), True, transition)
