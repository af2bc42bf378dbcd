"""Active/passive failover groups. Pure.

Every environment only ever writes its own policy_status; the pair stays consistent because the passive
side is level-triggered on its partner's status:

- active env, ACTIVE: `failover_expr` true `period` consecutive ticks -> FAILED (whether or not a passive
  partner exists; without one the message says so).
- active env, FAILED: `failback_expr` true `period` consecutive ticks -> ACTIVE.
- passive env: partner FAILED -> ACTIVE (takes over); partner ACTIVE -> PASSIVE (after a failback the
  elasticity-added VMs are then removed, see decide.py); partner INIT/READY/absent -> keeps its status
  (a passive that took over keeps serving while its primary is being rebuilt or after it was removed).

Pairing (`pair_up`): in a failover group, the i-th active env (by envid) is paired with the i-th passive
one; extra members have no partner. The documented case is one pair per group.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ACTIVE_ROLE, PASSIVE_ROLE = "active", "passive"
AVAIL = "AVAIL_POLICY_STATUS: "


@dataclass(frozen=True)
class Member:
    """One environment of a failover group: its envid, role (active/passive) and current policy_status."""

    envid: str
    role: str
    status: str


def role_of(availability: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(role, group) of an availability policy, or None when it takes part in no failover group. Pure."""
    if not isinstance(availability, Mapping):
        return None
    role = str(availability.get("failover_role") or "").strip().lower()
    group = str(availability.get("failover_group") or "").strip()
    if role not in (ACTIVE_ROLE, PASSIVE_ROLE) or not group:
        return None
    return role, group


def group_members(envs: Iterable[tuple[str, Mapping[str, Any] | None, str]]) -> dict[str, list[Member]]:
    """Failover groups of one service from (envid, availability policy, policy_status) triples. Pure.

    Environments without a failover role are left out; the result maps group name -> its members.
    """
    groups: dict[str, list[Member]] = {}
    for envid, availability, status in envs:
        found = role_of(availability)
        if found is not None:
            groups.setdefault(found[1], []).append(Member(str(envid), found[0], str(status)))
    return groups


def _order(envid: str) -> tuple[int, str]:
    return (int(envid), envid) if envid.isdigit() else (2**63, envid)


def pair_up(members: Iterable[Member]) -> dict[str, str | None]:
    """envid -> partner envid (None when unpaired) for the members of ONE group. Pure, order-independent."""
    listed = list(members)
    actives = sorted((m.envid for m in listed if m.role == ACTIVE_ROLE), key=_order)
    passives = sorted((m.envid for m in listed if m.role == PASSIVE_ROLE), key=_order)
    out: dict[str, str | None] = {m.envid: None for m in listed}
    for active, passive in zip(actives, passives, strict=False):
        out[active], out[passive] = passive, active
    return out


def partner_of(envid: str, members: Iterable[Member]) -> Member | None:
    """The partner Member of `envid` in its group's `members` (envid itself may be among them). Pure."""
    listed = list(members)
    partner = pair_up(listed).get(envid)
    return next((m for m in listed if m.envid == partner), None) if partner is not None else None


def passive_status(status: str, partner: Member | None) -> tuple[str, str | None]:
    """(new status, message or None) of a passive env given its active partner. Pure, safe to run twice."""
    if partner is None:
        keep = status if status in ("ACTIVE", "PASSIVE") else "PASSIVE"
        return keep, f"{AVAIL}No active environment paired in the failover group; staying {keep}"
    if partner.status == "FAILED":
        if status == "ACTIVE":
            return "ACTIVE", None
        return "ACTIVE", f"{AVAIL}Making environment ACTIVE due to failover of primary environment {partner.envid}"
    if partner.status == "ACTIVE":
        if status == "PASSIVE":
            return "PASSIVE", None
        return "PASSIVE", (f"{AVAIL}Making environment PASSIVE after failing back to primary environment "
                           f"{partner.envid}")
    keep = status if status in ("ACTIVE", "PASSIVE") else "PASSIVE"
    return keep, None


@dataclass(frozen=True)
class ActiveStep:
    """The outcome of one tick for an active env: its status, counters and message (None = nothing new)."""

    status: str
    failover: int
    failback: int
    message: str | None
    changed: bool


def _count(counter: int, true: bool, period: int) -> int:
    return min(counter + 1, period) if true else 0


def active_step(status: str, failover: int, failback: int, failover_true: bool | None,
                failback_true: bool | None, period: int, partner: Member | None) -> ActiveStep:
    """One tick of the active side. `*_true` is None when that expression is not configured.

    Counters count consecutive true ticks (saturating at `period`) and reset on false; the transition
    happens on the `period`-th one and resets both counters. Pure, safe to run twice.
    """
    period = max(1, period)
    if status == "FAILED":
        if failback_true is None:
            return ActiveStep("FAILED", 0, 0, f"{AVAIL}FAILED; no failback_expr, waiting for the operator", False)
        count = _count(failback, failback_true, period)
        if count >= period:
            other = f"; environment {partner.envid} returns to PASSIVE" if partner else "; no passive environment"
            return ActiveStep("ACTIVE", 0, 0, f"{AVAIL}Failing back environment to ACTIVE status{other}", True)
        message = f"{AVAIL}Failback condition is true counter={count} period={period}" if count else None
        return ActiveStep("FAILED", 0, count, message, False)
    if failover_true is None:
        return ActiveStep("ACTIVE", 0, 0, None, False)
    count = _count(failover, failover_true, period)
    if count >= period:
        if partner is None:
            text = "Environment declared in FAILED state but no environment to failover to"
        else:
            text = f"Declaring environment as FAILED and triggering failover to environment {partner.envid}"
        return ActiveStep("FAILED", 0, 0, AVAIL + text, True)
    message = f"{AVAIL}Failover condition is true counter={count} period={period}" if count else None
    return ActiveStep("ACTIVE", count, 0, message, False)
