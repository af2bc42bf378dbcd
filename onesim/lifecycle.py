"""The VM state machine: actions, recover, injected failures, and the tick that advances time.

Every function here expects the caller to hold `model.lock`. A VM in a transient state carries a plan:
a list of steps `(delay name, STATE, LCM_STATE)` taken one after the other as the delays elapse.
"""

from __future__ import annotations

import heapq

from onesim import states as S
from onesim.inventory import UserSpec
from onesim.model import SCHED_RETRY_SECONDS, Model, Vm
from onesim.template import Template, first_str
from onesim.vmbuild import build_vm

RUNNING = (S.ACTIVE, S.RUNNING)
MAX_DISPATCH = 1000  # PENDING VMs considered per tick (bounds the time the model lock is held)
MAX_SAMPLES = 5000  # monitoring samples taken per tick (same reason)
_TO_RUNNING = ("boot", S.ACTIVE, S.RUNNING)

# failure LCM state -> (LCM state a retry restarts, the plan from there)
RETRY: dict[int, tuple[int, list[tuple[str, int, int]]]] = {
    S.BOOT_FAILURE: (S.BOOT, [_TO_RUNNING]),
    S.PROLOG_FAILURE: (S.PROLOG, [("prolog", S.ACTIVE, S.BOOT), _TO_RUNNING]),
    S.EPILOG_FAILURE: (S.EPILOG, [("epilog", S.DONE, 0)]),
    S.EPILOG_STOP_FAILURE: (S.EPILOG_STOP, [("epilog", S.STOPPED, 0)]),
    S.EPILOG_UNDEPLOY_FAILURE: (S.EPILOG_UNDEPLOY, [("epilog", S.UNDEPLOYED, 0)]),
    S.BOOT_UNDEPLOY_FAILURE: (S.BOOT_UNDEPLOY, [_TO_RUNNING]),
    S.BOOT_STOPPED_FAILURE: (S.BOOT_STOPPED, [_TO_RUNNING]),
    S.PROLOG_RESUME_FAILURE: (S.PROLOG_RESUME, [("prolog", S.ACTIVE, S.BOOT_STOPPED), _TO_RUNNING]),
    S.PROLOG_UNDEPLOY_FAILURE: (S.PROLOG_UNDEPLOY, [("prolog", S.ACTIVE, S.BOOT_UNDEPLOY), _TO_RUNNING]),
}
# transient LCM state -> where a "recover --failure" sends it
FAIL_TO: dict[int, tuple[int, int]] = {
    S.PROLOG: (S.ACTIVE, S.PROLOG_FAILURE), S.BOOT: (S.ACTIVE, S.BOOT_FAILURE),
    S.EPILOG: (S.ACTIVE, S.EPILOG_FAILURE), S.EPILOG_STOP: (S.ACTIVE, S.EPILOG_STOP_FAILURE),
    S.EPILOG_UNDEPLOY: (S.ACTIVE, S.EPILOG_UNDEPLOY_FAILURE), S.PROLOG_RESUME: (S.ACTIVE, S.PROLOG_RESUME_FAILURE),
    S.PROLOG_UNDEPLOY: (S.ACTIVE, S.PROLOG_UNDEPLOY_FAILURE), S.BOOT_UNDEPLOY: (S.ACTIVE, S.BOOT_UNDEPLOY_FAILURE),
    S.BOOT_STOPPED: (S.ACTIVE, S.BOOT_STOPPED_FAILURE), S.SHUTDOWN: RUNNING, S.SHUTDOWN_POWEROFF: RUNNING,
    S.SHUTDOWN_UNDEPLOY: RUNNING, S.SAVE_STOP: RUNNING, S.SAVE_SUSPEND: RUNNING,
    S.BOOT_POWEROFF: (S.POWEROFF, 0), S.BOOT_SUSPENDED: (S.SUSPENDED, 0), S.BOOT_UNKNOWN: (S.ACTIVE, S.UNKNOWN),
}
ACTIONS = ("terminate", "terminate-hard", "undeploy", "undeploy-hard", "poweroff", "poweroff-hard", "reboot",
           "reboot-hard", "hold", "release", "stop", "suspend", "resume", "resched", "unresched")


def go(model: Model, vm: Vm, state: int, lcm: int, plan: list[tuple[str, int, int]] | None = None) -> None:
    """Move `vm` to (state, lcm) now, with an optional plan of next steps; queues guest start/stop,
    frees capacity and leases as the new state requires. Safe to run twice."""
    was_running = (vm.state, vm.lcm) == RUNNING
    if (vm.state, vm.lcm) != (state, lcm):
        vm.prev_state, vm.prev_lcm = vm.state, vm.lcm
    vm.state, vm.lcm = state, lcm
    vm.sched_epoch = -1
    vm.plan = list(plan or [])
    vm.step_at = model.clock()
    now_running = (state, lcm) == RUNNING
    if was_running and not now_running:
        model.guest_events.put(("stop", vm.id))
    if now_running and not was_running:
        vm.deploy_id = vm.deploy_id or f"one-{vm.id}"
        model.record_monitoring(vm)
        model.guest_events.put(("start", vm.id, vm.ip(), dict(vm.context)))
    if state in (S.DONE, S.STOPPED, S.UNDEPLOYED, S.PENDING, S.HOLD):
        model.free_host(vm)
    if state == S.DONE:
        model.release_leases(vm)
        vm.etime = model.now()
        vm.plan = []
    model.refile(vm)


def _advance(model: Model, vm: Vm, now: float) -> None:
    while vm.plan:
        delay = model.delays[vm.plan[0][0]]
        if now < vm.step_at + delay:
            return
        step_at = vm.step_at + delay
        _, state, lcm = vm.plan[0]
        go(model, vm, state, lcm, vm.plan[1:])
        vm.step_at = step_at


def allocate(model: Model, raw: Template, user: UserSpec, hold: bool, default_name: str | None = None) -> Vm:
    """Create a VM (PENDING, or HOLD when `hold`) from a parsed template. Not idempotent: a new id each call."""
    vm = build_vm(model, raw, user, default_name)
    model.next_vm_id += 1
    vm.state = S.HOLD if hold or (first_str(raw, "SUBMIT_ON_HOLD") or "").upper() == "YES" else S.PENDING
    vm.prev_state = vm.state
    vm.step_at = model.clock()
    model.add_vm(vm)
    return vm


def deploy(model: Model, vm: Vm, host_id: int) -> None:
    """Place `vm` on `host_id` and start PROLOG → BOOT → RUNNING (the resume variants after stop/undeploy)."""
    model.take_host(vm, model.hosts[host_id])
    model.set_user_attr(vm, "SCHED_MESSAGE", None)
    if vm.redeploy == "stopped":
        first, boot = S.PROLOG_RESUME, S.BOOT_STOPPED
    elif vm.redeploy == "undeployed":
        first, boot = S.PROLOG_UNDEPLOY, S.BOOT_UNDEPLOY
    else:
        first, boot = S.PROLOG, S.BOOT
    vm.redeploy = ""
    go(model, vm, S.ACTIVE, first, [("prolog", S.ACTIVE, boot), _TO_RUNNING])
    vm.deploy_id = f"one-{vm.id}"


def _wrong(action: str, verb: str, vm: Vm) -> S.OneError:
    return S.OneError(S.ACTION, f'Error performing action "{action}": Could not {verb} VM {vm.id}, '
                                f"wrong state {S.state_name(vm.state, vm.lcm)}.", vm.id)


def _terminate(model: Model, vm: Vm, hard: bool) -> bool:
    key = (vm.state, vm.lcm)
    if vm.state in (S.INIT, S.PENDING, S.HOLD, S.CLONING, S.CLONING_FAILURE):
        go(model, vm, S.DONE, 0)
    elif vm.state == S.DONE:
        pass
    elif key in (RUNNING, (S.ACTIVE, S.UNKNOWN)) and not hard:
        go(model, vm, S.ACTIVE, S.SHUTDOWN, [("shutdown", S.ACTIVE, S.EPILOG), ("epilog", S.DONE, 0)])
    elif key in (RUNNING, (S.ACTIVE, S.UNKNOWN), (S.ACTIVE, S.SHUTDOWN)) or vm.state in (
            S.POWEROFF, S.SUSPENDED, S.STOPPED, S.UNDEPLOYED):
        go(model, vm, S.ACTIVE, S.EPILOG, [("epilog", S.DONE, 0)])
    elif vm.state == S.ACTIVE and vm.lcm in S.FAILURE_LCM:
        go(model, vm, S.DONE, 0)
    else:
        return False
    return True


def _resume(model: Model, vm: Vm) -> bool:
    if vm.state == S.POWEROFF:
        go(model, vm, S.ACTIVE, S.BOOT_POWEROFF, [_TO_RUNNING])
    elif vm.state == S.SUSPENDED:
        go(model, vm, S.ACTIVE, S.BOOT_SUSPENDED, [_TO_RUNNING])
    elif vm.state in (S.STOPPED, S.UNDEPLOYED):
        vm.redeploy = "stopped" if vm.state == S.STOPPED else "undeployed"
        go(model, vm, S.PENDING, 0)
    elif (vm.state, vm.lcm) == (S.ACTIVE, S.UNKNOWN):
        go(model, vm, S.ACTIVE, S.BOOT_UNKNOWN, [_TO_RUNNING])
    else:
        return False
    return True


def _simple(model: Model, vm: Vm, action: str) -> bool:
    key = (vm.state, vm.lcm)
    soft = not action.endswith("-hard")
    if action.startswith("poweroff") and (key == RUNNING or (not soft and key == (S.ACTIVE, S.UNKNOWN))):
        go(model, vm, S.ACTIVE, S.SHUTDOWN_POWEROFF, [("shutdown", S.POWEROFF, 0)])
    elif action.startswith("undeploy") and key == RUNNING:
        first = [("shutdown", S.ACTIVE, S.EPILOG_UNDEPLOY)] if soft else []
        go(model, vm, S.ACTIVE, S.SHUTDOWN_UNDEPLOY if soft else S.EPILOG_UNDEPLOY,
           first + [("epilog", S.UNDEPLOYED, 0)])
    elif action.startswith("undeploy") and vm.state == S.POWEROFF:
        go(model, vm, S.ACTIVE, S.EPILOG_UNDEPLOY, [("epilog", S.UNDEPLOYED, 0)])
    elif action.startswith("reboot") and key == RUNNING:
        model.guest_events.put(("stop", vm.id))
        model.guest_events.put(("start", vm.id, vm.ip(), dict(vm.context)))
    elif action == "hold" and vm.state == S.PENDING:
        go(model, vm, S.HOLD, 0)
    elif action == "release" and vm.state == S.HOLD:
        go(model, vm, S.PENDING, 0)
    elif action == "stop" and key == RUNNING:
        go(model, vm, S.ACTIVE, S.SAVE_STOP, [("save", S.ACTIVE, S.EPILOG_STOP), ("epilog", S.STOPPED, 0)])
    elif action == "stop" and vm.state == S.SUSPENDED:
        go(model, vm, S.ACTIVE, S.EPILOG_STOP, [("epilog", S.STOPPED, 0)])
    elif action == "suspend" and key == RUNNING:
        go(model, vm, S.ACTIVE, S.SAVE_SUSPEND, [("save", S.SUSPENDED, 0)])
    elif action in ("resched", "unresched") and (key in (RUNNING, (S.ACTIVE, S.UNKNOWN)) or vm.state == S.POWEROFF):
        vm.resched = 1 if action == "resched" else 0
    else:
        return False
    return True


def vm_action(model: Model, vm: Vm, action: str) -> None:
    """Apply a one.vm.action verb, or raise OneError(ACTION) for an unknown verb or a wrong state."""
    if action not in ACTIONS:
        raise S.OneError(S.ACTION, f'Action "{action}" is not supported', vm.id)
    if action.startswith("terminate"):
        done = _terminate(model, vm, action.endswith("-hard"))
    elif action == "resume":
        done = _resume(model, vm)
    else:
        done = _simple(model, vm, action)
    if not done:
        raise _wrong(action, action.removesuffix("-hard"), vm)


def remove(model: Model, vm: Vm) -> None:
    """Drop `vm` from the pool entirely (delete-db, vanish): frees host and leases, stops its guest."""
    if (vm.state, vm.lcm) == RUNNING:
        model.guest_events.put(("stop", vm.id))
    model.free_host(vm)
    model.release_leases(vm)
    model.drop_vm(vm)


def recover(model: Model, vm: Vm, op: int) -> None:
    """one.vm.recover: 0 failure, 1 success, 2 retry, 3 delete, 4 delete-recreate, 5 delete-db."""
    if op not in range(6):
        raise S.OneError(S.RPC_API, f"Invalid recover operation {op}.", vm.id)
    if op in (3, 4, 5) and vm.state == S.DONE:
        raise S.OneError(S.ACTION, "Recover action is not available for state DONE", vm.id)
    if op == 3:
        go(model, vm, S.DONE, 0)
    elif op == 4:
        go(model, vm, S.PENDING, 0)
        vm.deploy_id, vm.redeploy, vm.resched = "", "", 0
    elif op == 5:
        remove(model, vm)
    elif vm.state == S.ACTIVE and vm.lcm in RETRY and op in (1, 2):
        lcm, plan = RETRY[vm.lcm]
        go(model, vm, S.ACTIVE, lcm, plan)
        if op == 1:
            _, state, nxt = plan[0]
            go(model, vm, state, nxt, plan[1:])
    elif vm.state == S.ACTIVE and vm.lcm in RETRY and op == 0:
        pass  # already failed
    elif vm.state == S.ACTIVE and vm.plan and op in (0, 1):
        if op == 1:
            _, state, lcm = vm.plan[0]
            go(model, vm, state, lcm, vm.plan[1:])
        else:
            go(model, vm, *FAIL_TO.get(vm.lcm, RUNNING))
    elif (vm.state, vm.lcm) == (S.ACTIVE, S.UNKNOWN) and op in (0, 1):
        go(model, vm, *(RUNNING if op == 1 else (S.POWEROFF, 0)))
    else:
        raise S.OneError(S.ACTION, "Recover action is not available for state "
                                   f"{S.state_name(vm.state, vm.lcm)}", vm.id)


FAIL_KINDS = {"UNKNOWN": S.UNKNOWN, "BOOT_FAILURE": S.BOOT_FAILURE, "PROLOG_FAILURE": S.PROLOG_FAILURE,
              "EPILOG_FAILURE": S.EPILOG_FAILURE}


def inject_failure(model: Model, vm: Vm, kind: str) -> None:
    """Fault injection: UNKNOWN / *_FAILURE (VM must be ACTIVE) or "vanish" (gone from the pool)."""
    if kind.lower() == "vanish":
        remove(model, vm)
        return
    lcm = FAIL_KINDS.get(kind.upper())
    if lcm is None:
        raise S.OneError(S.RPC_API, f"kind: unknown {kind!r} (UNKNOWN, BOOT_FAILURE, PROLOG_FAILURE, "
                                    "EPILOG_FAILURE or vanish)", vm.id)
    if vm.state != S.ACTIVE:
        raise S.OneError(S.ACTION, f"Cannot fail VM {vm.id}: wrong state {S.state_name(vm.state, vm.lcm)}.", vm.id)
    go(model, vm, S.ACTIVE, lcm)


def _priority(vm: Vm) -> float:
    try:
        return float(first_str(vm.user_template, "USER_PRIORITY") or 0)
    except ValueError:
        return 0.0


def schedule(model: Model, now: float) -> None:
    """Place due PENDING VMs (USER_PRIORITY desc, then id); unplaceable ones stay PENDING with SCHED_MESSAGE
    and are retried when capacity frees, when they change, or every SCHED_RETRY_SECONDS."""
    pending = (vm for i in model.pending if (vm := model.vms.get(i)) is not None)
    due = [vm for vm in pending if vm.state == S.PENDING and now >= vm.step_at + model.delays["schedule"]
           and (vm.sched_epoch != model.capacity_epoch or now >= vm.sched_tried_at + SCHED_RETRY_SECONDS)]
    if not due:
        return
    due.sort(key=lambda v: (-_priority(v), v.id))
    cache = {h.spec.id: model.host_attrs(h) for h in model.hosts.values()}
    for vm in due[:MAX_DISPATCH]:
        host_id, message = model.pick_host(vm, cache)
        if host_id is None:
            vm.sched_epoch, vm.sched_tried_at = model.capacity_epoch, now
            model.set_user_attr(vm, "SCHED_MESSAGE", f"{message}")
            continue
        deploy(model, vm, host_id)
        model.account(cache[host_id], vm)


def _advance_planned(model: Model, now: float) -> None:
    for vmid in sorted(model.planned):
        vm = model.vms.get(vmid)
        if vm is not None and vm.plan:
            _advance(model, vm, now)


def _monitor(model: Model, now: float) -> None:
    """Take a sample of every RUNNING VM whose last one is at least the monitor delay old (once per tick, at
    most MAX_SAMPLES: the rest stay due for the next ticks, so the lock is never held for long)."""
    interval, heap = model.delays["monitor"], model.monitor_due
    due: dict[int, Vm] = {}
    while heap and now - heap[0][0] >= interval and len(due) < MAX_SAMPLES:
        stamp, vmid = heapq.heappop(heap)
        vm = model.vms.get(vmid)
        if vm is not None and vm.last_monitor == stamp and (vm.state, vm.lcm) == RUNNING:
            due[vmid] = vm
    for vmid in sorted(due):
        model.record_monitoring(due[vmid])


def tick(model: Model) -> None:
    """Advance every plan whose delay elapsed, run the scheduler, take due monitoring samples.

    Costs O(VMs with a plan + PENDING VMs + samples due), not O(pool): see the work sets in onesim.model."""
    model.check_index()
    now = model.clock()
    _advance_planned(model, now)
    schedule(model, now)
    now = model.clock()
    _advance_planned(model, now)
    _monitor(model, now)
