"""Builders shared by the policy tests: VMs, policies and a driver that runs decide minute after minute."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from functions.policy import Action, Decision, EnvInputs, PolicyState, VmObs, decide
from functions.policy.vmclass import RUNNING

T0 = 1_704_794_400.0          # Tue 2024-01-09 10:00 UTC (a weekday, inside the guide's windows)
MINUTE = 60.0


def vm(slot: str, cls: str = RUNNING, cpu: float | None = 50.0, created: float = 0.0,
       by_policy: bool = False) -> VmObs:
    return VmObs(slot, "master" if slot == "m" else "slave", cls, cpu, created, by_policy)


def env_vms(n: int, cls: str = RUNNING, cpu: float | None = 50.0) -> list[VmObs]:
    """A master and n-1 slaves, all of class `cls` and CPU `cpu`."""
    return [vm("m", cls, cpu)] + [vm(f"s{i}", cls, cpu) for i in range(n - 1)]


def auto_policy(**over: Any) -> dict[str, Any]:
    """An auto elasticity policy as confschema normalizes it."""
    policy: dict[str, Any] = {"mode": "auto", "windows": {}, "min": 1, "max": 10, "priority": 0, "period": 3,
                              "cooldown": None, "scaleup_expr": "avgcpu > 50", "scaledown_expr": "avgcpu < 20",
                              "timezone": "UTC"}
    policy.update(over)
    return policy


def time_policy(windows: dict[str, Any], **over: Any) -> dict[str, Any]:
    policy: dict[str, Any] = {"mode": "time-based", "windows": windows, "min": None, "max": None, "priority": 0,
                              "period": 1, "cooldown": None, "scaleup_expr": None, "scaledown_expr": None,
                              "timezone": "UTC"}
    policy.update(over)
    return policy


def avail_policy(**over: Any) -> dict[str, Any]:
    policy: dict[str, Any] = {"period": 3, "recreate_expr": None, "failover_role": None, "failover_group": None,
                              "failover_expr": None, "failback_expr": None}
    policy.update(over)
    return policy


@dataclass
class Runner:
    """Runs decide once per minute from T0, keeping the state as Redis would (through to_fields)."""

    elasticity: dict[str, Any] | None = None
    availability: dict[str, Any] | None = None
    base_size: int = 1
    state: PolicyState = field(default_factory=lambda: PolicyState(status="ACTIVE"))
    now: float = T0
    actions: list[Action | None] = field(default_factory=list)

    def tick(self, vms: list[VmObs], busy: bool = False, **extra: Any) -> Decision:
        inputs = EnvInputs("7", self.elasticity, self.availability, self.base_size, tuple(vms), busy, **extra)
        decision = decide(inputs, self.state, self.now)
        self.state = PolicyState.from_fields(decision.state.to_fields())
        assert self.state == decision.state
        self.actions.append(decision.action)
        self.now += MINUTE
        return decision
