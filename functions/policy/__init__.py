"""Carina's policies as pure decisions (no Redis, RQ or OpenNebula here).

vmclass: what a VM is (running, starting, failed, unknown, missing, other) and the expression variables;
state: the stored PolicyState as Redis hash fields; conditions: expressions and windows that never raise;
actions: Action and which slots it applies to; elasticity: time-based and auto rules; failover: the
active/passive group rules; decide: one tick for one environment (start there).

Wiring (per minute, per service): read every env hash; `state = PolicyState.from_fields(env)`; build
`VmObs` from each VM record (cls from `classify`/`classify_short`, created = the record's `created`,
by_policy from the record); groups = `group_members((envid, spec["availability_policy"], policy_status))`;
decide the active members before the passive ones (else the passive follows a minute later), passing
`partner=partner_of(envid, groups[group])` with the statuses as just decided; then, under the env lock,
HSET `decision.state.to_fields()` and, if `decision.action`, start that operation (a SCALEUP records its
new VM as by_policy; a SCALEDOWN removes exactly `action.slots[0]`; a RECREATE replaces each slot in
place). `decision.messages` are this tick's event lines. `decide` is idempotent per minute.
"""

from __future__ import annotations

from functions.policy.actions import Action
from functions.policy.decide import DEFAULT_GRACE, Decision, EnvInputs, decide
from functions.policy.failover import Member, group_members, partner_of
from functions.policy.state import PolicyState
from functions.policy.vmclass import VmObs, classify, classify_short, variables

__all__ = ["DEFAULT_GRACE", "Action", "Decision", "EnvInputs", "Member", "PolicyState", "VmObs", "classify",
           "classify_short", "decide", "group_members", "partner_of", "variables"]
