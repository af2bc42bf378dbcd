"""VM-level steps shared by create, scale and remove: render, allocate (intent first), observe, announce, terminate.

Every function here runs under the environment lock (one writer). Each OpenNebula side effect is preceded by a
written intent (a VmRecord in state "allocating" with its nonce), and a replay of an "allocating" record first
searches OpenNebula for a VM tagged with the environment and slot, so a crash never yields a duplicate VM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from functions.cloud import sshexec
from functions.cloud.one import OneClient, VmView
from functions.model import ownership, render, specview, tokens
from functions.store import envstore, keys, tenants
from functions.store.envstore import VmRecord

if TYPE_CHECKING:
    from functions.engine.context import Ctx, Env


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


def render_vm(ctx: Ctx, env: Env, rec: VmRecord, master_ip: str = "", num_slaves: int = 0) -> str:
    """The allocate text for `rec` (role master or slave). Pure apart from reading the callback secret.

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
    token = tokens.vm_token(envstore.callback_secret(ctx.r), env.envid, rec.slot, rec.nonce)
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
    ctx.put_vm(env, rec)
    ctx.r.set(keys.vm_index(env.endpoint, vmid), f"{env.envid} {rec.slot}")
    ctx.event(env, "step", f"{rec.role} {rec.slot}: VM {vmid} {how}", vmid=str(vmid), slot=rec.slot)
    return rec


def ensure_allocated(ctx: Ctx, env: Env, one: OneClient, slot: str, role: str, index: int,
                     master_ip: str = "", num_slaves: int = 0) -> VmRecord:
    """The slot's record with a VM id, allocating the VM if needed. Safe to run twice (never a 2nd VM).

    Writes the intent record before allocate; a replayed intent adopts a VM already tagged with the slot. A
    drive that lost the env lock meanwhile terminates the VM it allocated and raises LockLost.
    """
    rec = env.vms.get(slot)
    if rec is not None and rec.vmid is not None:
        return rec
    if rec is None:
        rec = VmRecord(slot=slot, role=role, index=index, endpoint=env.endpoint, created=ctx.clock())
        text = render_vm(ctx, env, rec, master_ip, num_slaves)       # render errors before any intent
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
        _drop_unrecorded(ctx, env, one, slot, vmid)
        raise


def adopt_tagged(ctx: Ctx, env: Env, one: OneClient, rec: VmRecord) -> VmRecord | None:
    """An intent's VM found by its tags (the allocate's answer was lost), recorded; any extra one terminated.
    None if OpenNebula has none. Safe to run twice."""
    found = slot_vms(ctx, env, one, rec)
    for extra in found[1:]:
        one.terminate(extra.vmid)
    return _adopt(ctx, env, rec, found[0].vmid, "found by its tags after a restart") if found else None


def _drop_unrecorded(ctx: Ctx, env: Env, one: OneClient, slot: str, vmid: int) -> None:
    """The lock was lost between the intent and recording the VM just allocated (a stalled drive): the new
    holder allocated or adopted the slot's VM itself, so this one is nobody's. Terminate it, unless the new
    holder adopted this very VM. Safe to run twice."""
    current = envstore.get_vms(ctx.r, env.envid).get(slot)
    if current is None or current.vmid != vmid:
        one.terminate(vmid, hard=True)


def observe(ctx: Ctx, env: Env, one: OneClient, rec: VmRecord) -> VmView | None:
    """Refresh the record from OpenNebula (state, IP, CPU); marks it running once RUNNING. Returns the view."""
    assert rec.vmid is not None
    view = one.info(rec.vmid)
    why = "gone from OpenNebula" if view is None or view.gone else foreign(ctx, env, rec, view)
    if why:
        _mark_missing(ctx, env, rec, why)
        return None
    changed = rec.one_state != view.short_status()
    rec.one_state = view.short_status()
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


def master_command(ctx: Ctx, env: Env, master: VmRecord, verb: str, slave: VmRecord) -> None:
    """SSH to the master as adminuser and run `~/<master script> <verb> <slave ip> <slavedata>`.

    Pins the master's host key on first contact and verifies it afterwards. Raises sshexec.SshFailed
    (retry later), HostKeyMismatch (never accepted) or StepFailed on a non-zero exit. Runs the command again
    if called again (the master scripts' add/remove are idempotent).
    """
    script = str(env.cfg.get("master_context_script") or "")
    if not script:
        return
    command = sshexec.script_command(script, [verb, slave.ip, str(env.cfg.get("slavedata") or "")])
    private_pem, _ = tenants.service_keypair(ctx.r, env.service)
    assert master.vmid is not None
    known = envstore.pinned_hostkey(ctx.r, pin_id(env, master))
    result, seen = ctx.ssh(master.ip, ctx.settings.ssh_port, str(env.cfg.get("adminuser") or "root"),
                           private_pem, command, known_key=known, timeout=ctx.settings.ssh_timeout)
    if known is None:
        envstore.pin_hostkey(ctx.r, pin_id(env, master), seen)
    if result.rc != 0:
        raise sshexec.SshFailed(f"`{verb}` on the master exited {result.rc}: {(result.err or result.out)[-200:]}")
    ctx.event(env, "step", f"master: {verb} {slave.ip} {env.cfg.get('slavedata') or ''}".rstrip(),
              slot=slave.slot)


def terminate(ctx: Ctx, env: Env, one: OneClient, rec: VmRecord, hard: bool = False) -> bool:
    """Ask OpenNebula to terminate the slot's VM; True once it is gone (then the record is deleted).

    Safe to run twice: terminate is idempotent and an already-gone VM just drops the record.
    """
    if rec.vmid is not None:
        view = one.info(rec.vmid)
        why = foreign(ctx, env, rec, view) if view is not None and not view.gone else None
        if why:
            ctx.event(env, "error", f"{rec.role} {rec.slot}: not terminating VM {rec.vmid}: {why}",
                      vmid=str(rec.vmid), slot=rec.slot)
        elif view is not None and not view.gone:
            surface_refusal(ctx, env, rec.vmid, one.terminate(rec.vmid, hard=hard or view.failed or view.unknown))
            if rec.state != "removing":
                rec.state = "removing"
                ctx.put_vm(env, rec)
                ctx.event(env, "step", f"{rec.role} {rec.slot}: terminating VM {rec.vmid}", vmid=str(rec.vmid))
            return False
        if ctx.r.get(keys.vm_index(env.endpoint, rec.vmid)) == f"{env.envid} {rec.slot}":
            ctx.r.delete(keys.vm_index(env.endpoint, rec.vmid))
        envstore.forget_hostkey(ctx.r, pin_id(env, rec))
    ctx.del_vm(env, rec.slot)
    env.vms.pop(rec.slot, None)
    return True
