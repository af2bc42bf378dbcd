"""Carina's policies as pure decisions (no Redis, RQ or OpenNebula here).

vmclass: what a VM is (running, starting, failed, unknown, missing, other) and the expression variables;
state: the stored PolicyState as Redis hash fields; conditions: expressions and windows that never raise;
actions: Action and which slots it applies to; elasticity: time-based and auto rules; failover: the
active/passive group rules; decide: one tick for one environment (start there).
"""

from __future__ import annotations

from functions.policy.actions import Action
from functions.policy.decide import DEFAULT_GRACE, Decision, EnvInputs, decide
from functions.policy.failover import Member, group_members, partner_of
from functions.policy.state import PolicyState
from functions.policy.vmclass import VmObs, classify, classify_short, variables

__all__ = ["DEFAULT_GRACE", "Action", "Decision", "EnvInputs", "Member", "PolicyState", "VmObs", "classify",
           "classify_short", "decide", "group_members", "partner_of", "variables"]
