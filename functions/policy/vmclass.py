"""What a VM is, as far as policies care, and the policy variables of an environment. Pure.

Classes (`classify` from OpenNebula's STATE / LCM_STATE, `classify_short` from the `onevm list` short code
that functions/ticks.py stores in a VmRecord's `one_state`):

    running   STATE ACTIVE with the guest up (RUNNING, or HOTPLUG / SNAPSHOT / MIGRATE / RESIZE / BACKUP)
    starting  INIT PENDING HOLD CLONING, ACTIVE in LCM_INIT PROLOG BOOT ..., or nothing known yet
    failed    any *_FAILURE LCM state, STATE FAILED (7, legacy) or CLONING_FAILURE (11)
    unknown   LCM UNKNOWN (16, host down) or BOOT_UNKNOWN (19)
    missing   a VM Carina holds that is absent from the pool or DONE
    other     stopped, suspended, powered off, undeployed, shutting down, saving, ...

Only failed / unknown / missing VMs are "broken" (counted by nummissing/numunknown/numfailed and replaced
by the recreate policy), and only once they are older than the boot grace period (`judged`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache
from typing import NamedTuple

RUNNING, STARTING, FAILED, UNKNOWN, MISSING, OTHER = "running", "starting", "failed", "unknown", "missing", "other"
CLASSES = (RUNNING, STARTING, FAILED, UNKNOWN, MISSING, OTHER)
BROKEN = frozenset({FAILED, UNKNOWN, MISSING})

# OpenNebula 6/7 include/VirtualMachine.h (see shared/opennebula-xmlrpc.md C.4).
ACTIVE, DONE = 3, 6
STARTING_STATES = frozenset({0, 1, 2, 10})
FAILED_STATES = frozenset({7, 11})
RUNNING_LCM = frozenset({3, 4, 17, 24, 25, 26, 57, 59, 62, 66, 69})
STARTING_LCM = frozenset({0, 1, 2, 9, 20, 21, 22, 31, 32, 35})
FAILURE_LCM = frozenset({14, 36, 37, 38, 39, 40, 41, 42, 44, 46, 47, 48, 49, 50, 61})
UNKNOWN_LCM = frozenset({16, 19})
_SHORT = {"runn": RUNNING, "hotp": RUNNING, "snap": RUNNING, "migr": RUNNING, "drsz": RUNNING, "back": RUNNING,
          "init": STARTING, "pend": STARTING, "hold": STARTING, "prol": STARTING, "boot": STARTING,
          "clon": STARTING, "": STARTING, "fail": FAILED, "unkn": UNKNOWN, "missing": MISSING, "done": MISSING}


def classify(state: int | None, lcm_state: int | None, present: bool) -> str:
    """The class of a VM from OpenNebula's numbers; `present` False = not in the pool. Pure."""
    if not present or state == DONE:
        return MISSING
    if state is None:
        return STARTING
    if state in FAILED_STATES:
        return FAILED
    if state in STARTING_STATES:
        return STARTING
    if state != ACTIVE:
        return OTHER
    lcm = lcm_state if lcm_state is not None else 0
    if lcm in FAILURE_LCM:
        return FAILED
    if lcm in UNKNOWN_LCM:
        return UNKNOWN
    if lcm in RUNNING_LCM:
        return RUNNING
    if lcm in STARTING_LCM:
        return STARTING
    return OTHER


def classify_short(one_state: str | None) -> str:
    """The class of a VM from a stored short code (`runn`, `unkn`, `fail`, `missing`, ...; "" = not seen yet).

    Coarser than `classify`: BOOT_UNKNOWN prints `boot`, so it reads as starting here. Pure.
    """
    return _SHORT.get((one_state or "").strip().lower(), OTHER)


@lru_cache(maxsize=4096)
def record_class(allocated: bool, one_state: str, vm_state: int, lcm_state: int, init_failed: bool) -> str:
    """The class of a stored VM record: not allocated yet -> starting; `one_state` missing/done -> missing;
    else from OpenNebula's numbers when known (`vm_state` >= 0; `lcm_state` -1 = not known), else from the
    short code; a VM that reported its own init failure is failed unless missing. Pure; cached, as a
    minute's 100,000 records have a handful of distinct values."""
    if not allocated:
        cls = STARTING
    elif one_state in ("missing", "done"):
        cls = MISSING
    elif vm_state >= 0:
        cls = classify(vm_state, lcm_state if lcm_state >= 0 else None, True)
    else:
        cls = classify_short(one_state)
    return FAILED if init_failed and cls != MISSING else cls


class VmObs(NamedTuple):
    """One VM record as the policies see it (immutable; a NamedTuple, as the minute's policy pass makes one per
    VM held, 100,000 at 10,000 environments, and a frozen dataclass cost twice as much to build).

    slot: `m` or `s<N>`; role: master or slave; cls: one of CLASSES; cpu: monitored CPU % (None or a
    negative value = not monitored); created: epoch seconds of the record's current incarnation (its
    allocation intent); by_policy: the slave was added by an elasticity policy (not by create or a user).
    `index` is the slave index (it replaces tuple.index, which nothing here uses).
    """

    slot: str
    role: str
    cls: str
    cpu: float | None = None
    created: float = 0.0
    by_policy: bool = False

    @property
    def index(self) -> int:
        """The slave index of `s<N>` (-1 for the master or an odd slot name)."""
        tail = self.slot[1:]
        return int(tail) if self.slot.startswith("s") and tail.isdigit() else -1

    @property
    def is_master(self) -> bool:
        return self.role == "master" or self.slot == "m"

    def with_cpu(self, cpu: float) -> VmObs:
        """The same VM with another monitored CPU % (a negative or NaN one: not monitored). Pure."""
        return VmObs(self.slot, self.role, self.cls, cpu if cpu >= 0 else None, self.created, self.by_policy)


def judged(vm: VmObs, now: float, grace: float) -> VmObs:
    """The VM as it is judged at `now`: a broken VM younger than `grace` seconds counts as starting. Pure."""
    if vm.cls in BROKEN and now - vm.created < grace:
        return vm._replace(cls=STARTING)
    return vm


def _cpu(value: float | None) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        cpu = float(value)
    except (TypeError, ValueError):
        return None
    return cpu if math.isfinite(cpu) and cpu >= 0 else None


def _mean(values: list[float]) -> float:
    """The mean of finite, non-negative `values` (not empty): each divided first, so a sum of huge values cannot
    overflow, and kept within [min, max] (tiny subnormal values divided first underflow to 0). Pure."""
    count = len(values)
    return min(max(sum([c / count for c in values]), min(values)), max(values))


def avgcpu(vms: Iterable[VmObs]) -> float | None:
    """Mean CPU % of the running VMs that report one (master included); None when none does. Pure."""
    values = [c for c in (_cpu(vm.cpu) for vm in vms if vm.cls == RUNNING) if c is not None]
    return _mean(values) if values else None


def variables(vms: Iterable[VmObs]) -> dict[str, float]:
    """The expression variables: numvms (every VM held), nummissing, numunknown, numfailed, its alias
    numfail, and avgcpu (absent when no running VM reports a CPU: expressions using it are then false).

    Give it `judged` VMs so that the grace period applies. Pure; one pass over the VMs.
    """
    held = missing = unknown = failed = 0
    cpus: list[float] = []
    for vm in vms:
        held += 1
        cls = vm.cls
        if cls == RUNNING:
            cpu = vm.cpu
            if type(cpu) is float:                 # what vm_obs gives: the common case, checked inline
                if 0 <= cpu < math.inf:
                    cpus.append(cpu)
            elif (cpu := _cpu(cpu)) is not None:
                cpus.append(cpu)
        elif cls == MISSING:
            missing += 1
        elif cls == UNKNOWN:
            unknown += 1
        elif cls == FAILED:
            failed += 1
    out: dict[str, float] = {"numvms": held, "nummissing": missing, "numunknown": unknown, "numfailed": failed,
                             "numfail": failed}
    if cpus:
        out["avgcpu"] = _mean(cpus)                         # as avgcpu computes it, to the last bit
    return out


def metrics(values: dict[str, float]) -> str:
    """The env's `metrics` string: `avgcpu[37.5]` (one decimal, `.0` dropped), `avgcpu[-]` if unknown. Pure."""
    cpu = values.get("avgcpu")
    if cpu is None or not math.isfinite(cpu):
        return "avgcpu[-]"
    text = f"{cpu:.1f}"
    return f"avgcpu[{text[:-2] if text.endswith('.0') else text}]"
