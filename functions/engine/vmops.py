"""VM-level steps shared by create, scale and remove: render, allocate (intent first), observe, terminate (telling
the master: functions.engine.announce).

Every function here runs under the environment lock (one writer). Each OpenNebula side effect is preceded by a
written intent (a VmRecord in state "allocating" with its nonce), and a replay of an "allocating" record first
searches OpenNebula for a VM tagged with the environment and slot, so a crash never yields a duplicate VM.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

from functions.cloud.one import OneClient, VmView
from functions.engine.context import Watch
from functions.model import ownership, render, specview, tokens
from functions.store import envstore, gsstore, install, keys, watching
from functions.store.envstore import VmRecord

if TYPE_CHECKING:
    from functions.engine.context import Ctx, Env


class WaitCapacity(Exception):
    """The VM may not be allocated yet (Ctx.capacity said why): the step waits and checks again."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class StepFailed(Exception):
    """The current operation cannot go on (terminal); `status` becomes the environment's status."""

    def __init__(self, status: str, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


def _per_endpoint(entry: dict, key: str, endpoint: str, role: str) -> str:
    value = entry.get(key)
    if isinstance(value, dict):
        value = value.get(endpoint)
    if value is None or value == "":
        raise render.RenderError(f"{role} template: no {key} for endpoint {endpoint!r}")
    return str(value)


def render_vm(ctx: Ctx, env: Env, rec: VmRecord, master_ip: str = "", num_slaves: int = 0,
              secret: bytes | None = None) -> str:
    """The allocate text for `rec` (role master or slave). Pure apart from reading the callback secret (unless
    `secret`, install.callback_secret, is given).

    Raises RenderError / SpecError naming the culprit.
    """
    cfg, role = env.cfg, rec.role
    entry = specview.template_entry(env.spec, role)
    values = {
        "NAME": f"{env.name}-{'m' if role == 'master' else 's'}", "ENVID": env.envid,
        "SERVICE_NAME": env.service, "CARINA_IP": ctx.settings.callback_addr,
        "NETWORK_ID": _per_endpoint(entry, "network_id", env.endpoint, role),
        "IMAGE_ID": _per_endpoint(entry, "image_id", env.endpoint, role),
        "CPU": str(entry.get("cpu", 1)), "MEMORY": str(entry.get("memory", 1024)),
        "APP_CONTEXT_SCRIPT": str(cfg.get(f"{role}_context_script") or ""),
        "ADMIN_USER": str(cfg.get("adminuser") or "root"),
        "MASTER_SERVICE_PORT": str(cfg.get("master_service_port") or ""),
    }
    if role == "slave":
        values.update({"MASTER": master_ip, "APP_PACKAGE": str(cfg.get("app_package") or "")})
    pairs = render.context_pairs(str(cfg.get(f"{role}_context_var") or ""), role, master_ip=master_ip,
                                 index=rec.index, num_slaves=num_slaves, deps=specview.deps(env.spec))
    secret = install.callback_secret(ctx.r) if secret is None else secret
    token = tokens.vm_token(secret, env.envid, rec.slot, rec.nonce)
    extra = {"CARINA_TOKEN": token, "CARINA_ROLE": role, "CARINA_SLOT": rec.slot}
    return render.render_vm(specview.vm_text(env.spec, role), values, pairs, context_extra=extra,
                            tags=expected_tags(ctx, env, rec), placement=cfg.get("placement_policy"))


def expected_tags(ctx: Ctx, env: Env, rec: VmRecord) -> dict[str, str]:
    """The tags the VM of this slot incarnation carries (model.ownership)."""
    return ownership.vm_tags(env.service, ctx.install(), env.envid, rec.slot, rec.nonce, rec.role)


def foreign(ctx: Ctx, env: Env, rec: VmRecord, view: VmView) -> str | None:
    """Why OpenNebula's VM `view` (found by the record's vmid) is not this record's VM, or None if it is."""
    return ownership.mismatch(view.user_template, expected_tags(ctx, env, rec))


def env_vms(ctx: Ctx, env: Env, one: OneClient) -> list[VmView]:
    """Live VMs tagged with this environment of this service and installation (one pool call). Read-only."""
    want = {"CARINA_SERVICE": env.service, "CARINA_INSTALL": ctx.install(), "CARINA_ENVID": env.envid}
    return [v for v in one.tagged(env.envid) if ownership.mismatch(v.user_template, want) is None]


def slot_vms(ctx: Ctx, env: Env, one: OneClient, rec: VmRecord) -> list[VmView]:
    """Live VMs carrying this slot incarnation's tags (nonce included), lowest id first. Read-only."""
    return sorted((v for v in one.tagged(env.envid) if foreign(ctx, env, rec, v) is None), key=lambda v: v.vmid)


def _mark_missing(ctx: Ctx, env: Env, rec: VmRecord, why: str) -> None:
    if rec.one_state != "missing":
        rec.one_state = "missing"
        ctx.put_vm(env, rec)
        ctx.event(env, "error", f"{rec.role} {rec.slot}: VM {rec.vmid} is missing: {why}", vmid=str(rec.vmid),
                  slot=rec.slot)


def _adopt(ctx: Ctx, env: Env, rec: VmRecord, vmid: int, how: str) -> VmRecord:
    rec.vmid, rec.state = vmid, "allocated"
    if how == "allocated":
        env.fresh.add(rec.slot)
    ctx.put_vm(env, rec)
    ctx.r.set(keys.vm_index(env.endpoint, vmid), f"{env.envid} {rec.slot}")
    ctx.event(env, "step", f"{rec.role} {rec.slot}: VM {vmid} {how}", vmid=str(vmid), slot=rec.slot)
    return rec


def grant(ctx: Ctx, env: Env, rec: VmRecord) -> None:
    """Ask Ctx.capacity whether the new VM may be allocated now; if not, say why (env info, phase, one event per
    reason) and raise WaitCapacity."""
    why = ctx.capacity(ctx, env, rec) if ctx.capacity is not None else None
    owner = str(env.data.get("gs_slot") or "")       # the waiting VM the env's info speaks of (the first one)
    if why is None:
        if owner == rec.slot:                         # granted: the wait is over, so is what info said
            envstore.update_env(ctx.r, env.envid, gs_wait="", gs_slot="", info="")
            env.data.update(gs_wait="", gs_slot="", info="")
        return
    info = f"{rec.role} {rec.slot}: waiting for capacity: {why}"
    if owner in ("", rec.slot) and env.data.get("info") != info:
        envstore.update_env(ctx.r, env.envid, info=info, phase="capacity", gs_wait=why, gs_slot=rec.slot)
        env.data.update(info=info, phase="capacity", gs_wait=why, gs_slot=rec.slot)
        ctx.event(env, "capacity", info, slot=rec.slot)
    raise WaitCapacity(why)


def op_origin(env: Env) -> str:
    """"policy" when the environment's current operation is a SCALEUP started by a policy, else ""."""
    return "policy" if env.op == "SCALEUP" and env.data.get("op_origin") == "policy" else ""


def ensure_allocated(ctx: Ctx, env: Env, one: OneClient, slot: str, role: str, index: int,
                     master_ip: str = "", num_slaves: int = 0, origin: str | None = None) -> VmRecord:
    """The slot's record with a VM id, allocating the VM if needed. Safe to run twice (never a 2nd VM).

    Writes the intent record before allocate (once Ctx.capacity grants it: WaitCapacity otherwise); a replayed
    intent adopts a VM already tagged with the slot. A new record's `origin` is `origin`, or by default "policy"
    for a policy's SCALEUP (op_origin). A drive that lost the env lock meanwhile terminates the VM it allocated
    and raises LockLost.
    """
    rec = env.vms.get(slot)
    if rec is not None and rec.vmid is not None:
        return rec
    if rec is None:
        rec = VmRecord(slot=slot, role=role, index=index, endpoint=env.endpoint, created=ctx.clock(),
                       origin=op_origin(env) if origin is None else origin)
        text = render_vm(ctx, env, rec, master_ip, num_slaves)       # render errors before any intent
        grant(ctx, env, rec)
        ctx.put_vm(env, rec)
    else:
        adopted = adopt_tagged(ctx, env, one, rec)
        if adopted is not None:
            return adopted
        text = render_vm(ctx, env, rec, master_ip, num_slaves)
    env.vms[slot] = rec
    vmid = one.allocate(text)
    try:
        return _adopt(ctx, env, rec, vmid, "allocated")
    except envstore.LockLost:
        drop_unrecorded(ctx, env, one, slot, vmid)
        raise


def adopt_tagged(ctx: Ctx, env: Env, one: OneClient, rec: VmRecord) -> VmRecord | None:
    """An intent's VM found by its tags (the allocate's answer was lost), recorded; any extra one terminated.
    None if OpenNebula has none. Safe to run twice."""
    found = slot_vms(ctx, env, one, rec)
    for extra in found[1:]:
        one.terminate(extra.vmid)
    return _adopt(ctx, env, rec, found[0].vmid, "found by its tags after a restart") if found else None


def drop_unrecorded(ctx: Ctx, env: Env, one: OneClient, slot: str, vmid: int) -> None:
    """The lock was lost between the intent and recording the VM just allocated (a stalled drive): the new
    holder allocated or adopted the slot's VM itself, so this one is nobody's. Terminate it, unless the new
    holder adopted this very VM. Safe to run twice."""
    current = envstore.get_vms(ctx.r, env.envid).get(slot)
    if current is None or current.vmid != vmid:
        one.terminate(vmid, hard=True)


def watch_state(view: VmView | None) -> str:
    """What the watcher compares for one VM: STATE.LCM_STATE, plus the scheduler's message while it cannot
    place the VM ("gone" once DONE or unknown to OpenNebula). Pure."""
    if view is None or view.gone:
        return "gone"
    reason = view.sched_message()
    return f"{view.state}.{view.lcm_state}" + (f" {reason}" if reason else "")


GOING = "going"    # the watch state of a VM asked to terminate: only its end (or a failure) matters
EPILOG_LCM = 11    # ACTIVE/EPILOG: the VM's disks are being cleaned up; DONE follows without another action


def cleaning_up(view: VmView) -> bool:
    """Whether a VM is already in its last phase before DONE (a terminate was accepted): asking again is
    refused by OpenNebula ("wrong state EPILOG"), so it is not asked. Pure."""
    return view.state == 3 and view.lcm_state == EPILOG_LCM


def going_state(view: VmView | None) -> str:
    """The watch state of a VM Carina has asked to terminate: GOING while it shuts down normally, its exact
    watch_state once it is gone, failed or unknown (terminating it again may be needed then). Pure."""
    if view is None or view.gone or view.failed or view.unknown:
        return watch_state(view)
    return GOING


def changed(seen: str, view: VmView | None) -> bool:
    """Whether OpenNebula's `view` of a VM differs from the watch state `seen` a step recorded. Pure."""
    return (going_state(view) if seen == GOING else watch_state(view)) != seen


def watch(rec: VmRecord, view: VmView | None) -> Watch:
    """Wait until the record's VM leaves the state `view` shows (the watcher kicks the environment then)."""
    assert rec.vmid is not None
    return Watch({rec.vmid: watch_state(view)})


NEW_VM = "1.0"      # the watch state of a VM just allocated: PENDING (state 1, LCM 0), no scheduler message yet


def wait_new(rec: VmRecord) -> Watch:
    """Wait until a VM allocated by this step (Env.fresh) leaves PENDING: no call to OpenNebula needed, the
    watcher notices when it changes."""
    assert rec.vmid is not None
    return Watch({rec.vmid: NEW_VM})


PENDING_PREFIX = "PENDING: "


def pending_status(reason: str) -> str:
    """The short environment status (it fits the D_STATUS column) for a VM OpenNebula cannot place. Pure."""
    low = reason.lower()
    if "capacity" in low:
        return PENDING_PREFIX + "hosts full"
    if "requirement" in low:
        return PENDING_PREFIX + "no host fits"
    return PENDING_PREFIX + "not placed"


def _note_placement(ctx: Ctx, env: Env, rec: VmRecord, reason: str) -> None:
    """Say (once per change) that OpenNebula cannot place the VM, or that it now did: an event, the env's
    `info`, and its status while it still is the create's INIT (or an earlier PENDING: ...)."""
    status = str(env.data.get("status") or "")
    fields: dict[str, str] = {}
    if reason:
        ctx.event(env, "wait", f"{rec.role} {rec.slot}: VM {rec.vmid} is PENDING, OpenNebula cannot place it: "
                               f"{reason}", vmid=str(rec.vmid), slot=rec.slot)
        fields["info"] = f"waiting for OpenNebula to place {rec.role} VM {rec.vmid}: {reason}"
        if status in ("", "INIT") or status.startswith(PENDING_PREFIX):
            fields["status"] = pending_status(reason)
    else:
        ctx.event(env, "step", f"{rec.role} {rec.slot}: VM {rec.vmid} placed by OpenNebula after waiting",
                  vmid=str(rec.vmid), slot=rec.slot)
        fields["info"] = ""
        if status.startswith(PENDING_PREFIX):
            fields["status"] = "INIT"
    envstore.update_env(ctx.r, env.envid, **fields)
    env.data.update(fields)


SEEN_FRESH = 10.0   # seconds a view the watcher handed over stays good enough to act on


def view_json(view: VmView, at: float) -> str:
    """A VmView as JSON, stamped with the (real) time it was seen `at`."""
    return json.dumps({**asdict(view), "at": at}, sort_keys=True)


def _seen_view(ctx: Ctx, env: Env, vmid: int) -> VmView | None:
    """The VM as the watcher saw it when it woke this environment (once, if fresh), or None."""
    raw = watching.pop_seen(ctx.r, env.envid, vmid)
    if not raw:
        return None
    try:
        data = json.loads(raw)
        at = float(data.pop("at"))
        return VmView(**data) if time.time() - at < SEEN_FRESH else None
    except (ValueError, TypeError, KeyError):
        return None


def observe(ctx: Ctx, env: Env, one: OneClient, rec: VmRecord) -> VmView | None:
    """Refresh the record from OpenNebula (state, IP, CPU, why it is not placed); marks it running once
    RUNNING. Returns the view: the one the watcher just saw, if it woke the environment, else one.info.
    Safe to run twice (a placement note is made once per change)."""
    assert rec.vmid is not None
    view = _seen_view(ctx, env, rec.vmid) or one.info(rec.vmid)
    why = "gone from OpenNebula" if view is None or view.gone else foreign(ctx, env, rec, view)
    if why:
        _mark_missing(ctx, env, rec, why)
        return None
    changed = (rec.one_state, rec.vm_state, rec.lcm_state) != (view.short_status(), view.state, view.lcm_state)
    changed = changed or (bool(view.ip) and rec.one_ip != view.ip)
    rec.one_state, rec.vm_state, rec.lcm_state = view.short_status(), view.state, view.lcm_state
    rec.one_ip = view.ip or rec.one_ip
    reason = view.sched_message()
    if reason != rec.sched:
        _note_placement(ctx, env, rec, reason)
        rec.sched, changed = reason, True
    if view.cpu is not None:
        rec.cpu = view.cpu
    if view.running and rec.state in ("allocating", "allocated"):
        rec.state, changed = "running", True
        rec.ip = rec.ip or view.ip or ""
        ctx.event(env, "step", f"{rec.role} {rec.slot}: VM {rec.vmid} RUNNING at {rec.ip or '?'}",
                  vmid=str(rec.vmid), slot=rec.slot)
    if changed:
        ctx.put_vm(env, rec)
    return view


def called_back(rec: VmRecord) -> bool:
    """True if the VM has called back with its address (its network callback, or a later status one with the
    address known): it booted, whatever OpenNebula shows yet. Pure."""
    return rec.vmid is not None and bool(rec.ip) and rec.status not in ("", "VM_CREATE")


def came_up_event(rec: VmRecord) -> tuple[str, str, dict[str, str]]:
    """The event (kind, msg, extra) of a booting record marked running because it called back. Pure."""
    return "step", f"{rec.role} {rec.slot}: VM {rec.vmid} RUNNING at {rec.ip} (it called back)", {
        "vmid": str(rec.vmid), "slot": rec.slot}


def came_up(ctx: Ctx, env: Env, rec: VmRecord) -> bool:
    """True if the VM has called back (called_back): there is nothing to ask OpenNebula. Marks a booting
    record running (once, with an event). Safe to run twice."""
    if not called_back(rec):
        return False
    if rec.state in ("allocating", "allocated"):
        rec.state = "running"
        ctx.put_vm(env, rec)
        kind, msg, extra = came_up_event(rec)
        ctx.event(env, kind, msg, **extra)
    return True


def boot_failure(rec: VmRecord, view: VmView | None) -> str | None:
    """Why the VM will never run (vanished or failed), or None."""
    if view is None:
        return f"VM {rec.vmid} disappeared from OpenNebula"
    if view.failed:
        return f"VM {rec.vmid} failed to boot ({view.short_status()})"
    return None


def surface_refusal(ctx: Ctx, env: Env, vmid: int, refused: str | None) -> None:
    """Say (env info, and an event when it is news) that OpenNebula refused to terminate a VM; the operation
    keeps trying until its deadline. Nothing when `refused` is None."""
    info = f"OpenNebula refused to terminate VM {vmid}: {refused}"
    if refused is None or env.data.get("refused") == info:
        return
    envstore.update_env(ctx.r, env.envid, info=info, refused=info)
    env.data.update(info=info, refused=info)
    ctx.event(env, "error", info + " (retrying until the operation's deadline)", vmid=str(vmid))


def pin_id(env: Env, rec: VmRecord) -> str:
    """Whose host key a pin is: the service, the endpoint's URL, the VM id and the slot incarnation's nonce (a
    reused VM id or another service's endpoint of the same name never shares a pin)."""
    return f"{env.service} {specview.proxy(env.spec)} {rec.vmid} {rec.nonce}"


def terminate(ctx: Ctx, env: Env, one: OneClient, rec: VmRecord, hard: bool = False,
              seen: dict[int, str] | None = None) -> bool:
    """Ask OpenNebula to terminate the slot's VM; True once it is gone (then the record is deleted). While
    it is not gone, its watch_state goes into `seen` (for a Watch).

    Safe to run twice: terminate is idempotent and an already-gone VM just drops the record.
    """
    if rec.vmid is not None:
        view = one.info(rec.vmid)
        why = foreign(ctx, env, rec, view) if view is not None and not view.gone else None
        if why:
            ctx.event(env, "error", f"{rec.role} {rec.slot}: not terminating VM {rec.vmid}: {why}",
                      vmid=str(rec.vmid), slot=rec.slot)
        elif view is not None and not view.gone:
            if not cleaning_up(view):                # OpenNebula accepts no terminate in EPILOG: it ends by itself
                surface_refusal(ctx, env, rec.vmid, one.terminate(rec.vmid, hard=hard or view.failed or view.unknown))
            if seen is not None:
                seen[rec.vmid] = going_state(view)
            if rec.state != "removing":
                rec.state = "removing"
                ctx.put_vm(env, rec)
                ctx.event(env, "step", f"{rec.role} {rec.slot}: terminating VM {rec.vmid}", vmid=str(rec.vmid))
            return False
        if ctx.r.get(keys.vm_index(env.endpoint, rec.vmid)) == f"{env.envid} {rec.slot}":
            ctx.r.delete(keys.vm_index(env.endpoint, rec.vmid))
        install.forget_hostkey(ctx.r, pin_id(env, rec))
    ctx.del_vm(env, rec.slot)
    env.vms.pop(rec.slot, None)
    gsstore.release_slot(ctx.r, env.envid, rec.slot, rec.nonce, ctx.clock())    # its capacity comes back
    return True
