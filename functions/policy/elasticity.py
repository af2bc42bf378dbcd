"""Elasticity rules (time-based windows and load-based `auto`) for one tick of an ACTIVE env. Pure.

Both return an `Elastic` result: at most one action (one VM per tick), the new up/down counters and a
message for `info`. `gate` says whether an action may be emitted now (None) or why not (an operation
is in progress, another policy acted this tick, the cooldown runs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from functions.policy.actions import ELASTICITY, SCALEDOWN, SCALEUP, Action, scaledown_slot
from functions.policy.conditions import check, first_window
from functions.policy.vmclass import VmObs

P = "POLICY_STATUS: "


@dataclass(frozen=True)
class Elastic:
    """The outcome of one elasticity tick."""

    action: Action | None
    up: int
    down: int
    message: str


def int_or(value: Any, default: int | None) -> int | None:
    """`value` if it is a real int, else `default`."""
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _act(kind: str, text: str, vms: list[VmObs], gate: str | None, priority: int) -> tuple[Action | None, str]:
    """The action (or None with the reason) for a wanted scale in `kind`'s direction."""
    if gate is not None:
        return None, f"{P}{text} (waiting: {gate})"
    if kind == SCALEUP:
        return Action(SCALEUP, (), ELASTICITY, priority), P + text
    slot = scaledown_slot(vms)
    if slot is None:
        return None, f"{P}{text} (no slave to remove)"
    return Action(SCALEDOWN, (slot,), ELASTICITY, priority), f"{P}{text} (removing {slot})"


def time_based(policy: Mapping[str, Any], vms: list[VmObs], now: float, gate: str | None) -> Elastic:
    """Move the VM count (master included) one VM towards the first matching window's `min`.

    No window matching now: the policy's top-level `min` if it has one, else the size is kept.
    """
    size = len(vms)
    priority = int_or(policy.get("priority"), 0) or 0
    pick, problems = first_window(policy.get("windows"), now, policy.get("timezone"))
    note = f" [{'; '.join(problems)}]" if problems else ""
    if pick is None:
        fallback = int_or(policy.get("min"), None)
        if fallback is None or fallback < 1:
            return Elastic(None, 0, 0, f"{P}No time window matches now; keeping {size} VMs{note}")
        name, target = "(none: policy min)", fallback
    else:
        name, target = pick
    if size < target:
        action, text = _act(SCALEUP, f"Scaling up to meet minimum {target} for time window {name}", vms, gate,
                            priority)
    elif size > target:
        action, text = _act(SCALEDOWN, f"Scaling down to meet minimum {target} for time window {name}", vms,
                            gate, priority)
    else:
        action, text = None, f"{P}{size} VMs meet minimum {target} for time window {name}"
    return Elastic(action, 0, 0, text + note)


def _count(counter: int, true: bool, period: int) -> int:
    return min(counter + 1, period) if true else 0


def auto(policy: Mapping[str, Any], vms: list[VmObs], values: Mapping[str, float], up: int, down: int,
         gate: str | None) -> Elastic:
    """Load-based scaling: bounds first (below min -> up, above max -> down, at once), then each
    expression must be true `period` consecutive ticks (one counter per direction, reset when false);
    both true -> nothing. A counter that reached `period` but cannot act yet stays at `period`."""
    size = len(vms)
    low = max(1, int_or(policy.get("min"), 1) or 1)
    high = int_or(policy.get("max"), None)
    period = max(1, int_or(policy.get("period"), 1) or 1)
    priority = int_or(policy.get("priority"), 0) or 0
    up_o, down_o = check(policy.get("scaleup_expr"), values), check(policy.get("scaledown_expr"), values)
    errors = [o.error for o in (up_o, down_o) if o.error]
    note = f" [{'; '.join(errors)}]" if errors else ""
    if size < low:
        action, text = _act(SCALEUP, f"Scaling up to meet minimum {low}", vms, gate, priority)
        return Elastic(action, 0, 0, text + note)
    if high is not None and size > high:
        action, text = _act(SCALEDOWN, f"Scaling down to meet maximum {high}", vms, gate, priority)
        return Elastic(action, 0, 0, text + note)
    if up_o.value and down_o.value:
        return Elastic(None, 0, 0, f"{P}Scale up and down expressions both true. Check policy definition.{note}")
    up, down = _count(up, up_o.value, period), _count(down, down_o.value, period)
    if up >= period:
        if high is not None and size >= high:
            return Elastic(None, up, 0, f"{P}Scale up condition true but already at maximum {high}{note}")
        action, text = _act(SCALEUP, f"Scaling up: scaleup_expr true for {period} consecutive ticks", vms, gate,
                            priority)
        return Elastic(action, 0 if action else up, 0, text + note)
    if down >= period:
        if size <= low:
            return Elastic(None, 0, down, f"{P}Scale down condition true but already at minimum {low}{note}")
        action, text = _act(SCALEDOWN, f"Scaling down: scaledown_expr true for {period} consecutive ticks", vms,
                            gate, priority)
        return Elastic(action, 0, 0 if action else down, text + note)
    if up:
        return Elastic(None, up, down, f"{P}Scale up counter incremented to {up} (period {period}){note}")
    if down:
        return Elastic(None, up, down, f"{P}Scale down counter incremented to {down} (period {period}){note}")
    return Elastic(None, 0, 0, f"{P}{size} VMs within min {low} max {high if high is not None else '-'}{note}")
