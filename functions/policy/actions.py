"""What a policy asks the engine to do, and which VMs it applies to. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from functions.policy.vmclass import BROKEN, RUNNING, VmObs

SCALEUP, SCALEDOWN, RECREATE = "SCALEUP", "SCALEDOWN", "RECREATE"
KINDS = (SCALEUP, SCALEDOWN, RECREATE)
ELASTICITY, AVAILABILITY, FAILBACK = "elasticity", "availability", "failback"


@dataclass(frozen=True)
class Action:
    """One operation for the engine. kind: SCALEUP (slots empty: the engine picks the lowest free slot),
    SCALEDOWN (exactly one slave slot), RECREATE (the master alone, or one or more slave slots, each
    replaced in place). source: elasticity, availability or failback (the passive shrink). by_policy:
    the VM a SCALEUP adds must be recorded as added by policy."""

    kind: str
    slots: tuple[str, ...] = ()
    source: str = ELASTICITY
    priority: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (for an RQ job argument or an event)."""
        return {"kind": self.kind, "slots": list(self.slots), "source": self.source, "priority": self.priority}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Action:
        """The inverse of to_dict. Raises ValueError for a dict that is not an action."""
        kind = data.get("kind")
        slots = data.get("slots", [])
        if kind not in KINDS or not isinstance(slots, list) or not all(isinstance(s, str) for s in slots):
            raise ValueError(f"not a policy action: {data!r}")
        priority = data.get("priority", 0)
        return cls(str(kind), tuple(slots), str(data.get("source", ELASTICITY)),
                   priority if isinstance(priority, int) and not isinstance(priority, bool) else 0)

    @property
    def by_policy(self) -> bool:
        return self.kind == SCALEUP


def scaledown_slot(vms: Iterable[VmObs], only_policy: bool = False) -> str | None:
    """The slave to remove: one added by policy first, then the highest slot index; never the master.

    With `only_policy`, only slaves added by policy qualify. None when there is none. Pure.
    """
    slaves = [vm for vm in vms if not vm.is_master and vm.index >= 0 and (vm.by_policy or not only_policy)]
    if not slaves:
        return None
    return max(slaves, key=lambda vm: (vm.by_policy, vm.index)).slot


def recreate_targets(vms: Iterable[VmObs]) -> tuple[tuple[str, ...], str | None, bool]:
    """(slots to recreate, why none, whether to keep waiting) among `judged` VMs. Pure.

    A broken master is recreated alone first; broken slaves wait (third item True) until the master runs.
    """
    listed = list(vms)
    master = next((vm for vm in listed if vm.is_master), None)
    if master is None:
        return (), "the environment has no master record", False
    if master.cls in BROKEN:
        return (master.slot,), None, False
    broken = sorted((vm for vm in listed if not vm.is_master and vm.cls in BROKEN), key=lambda vm: vm.index)
    if not broken:
        return (), "Policy condition triggered but could not identify target VM to recreate", False
    if master.cls != RUNNING:
        return (), f"waiting for the master to run before recreating {', '.join(vm.slot for vm in broken)}", True
    return tuple(vm.slot for vm in broken), None, False
