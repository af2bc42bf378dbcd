"""RECREATE (started by an availability policy): replace broken VMs, each in its own slot.

`begin_fields` records, once per job, the slots to replace (`op_slots`: the master alone, or slaves) and each
old incarnation (`rc_old`: nonce, VM id, IP, origin). The step is level-triggered per slot:

1. The slot still holds the old incarnation (same nonce): if its VM runs again it is kept; otherwise a slave is
   announced `<scaledown_verb> <old ip> <slavedata>` to the master once (`rc_removed`), then the VM is
   terminated (hard) and, once OpenNebula shows it gone, its record dropped. Only then is a new intent written,
   so a replayed intent can never adopt the old VM by its tags.
2. A new incarnation: intent first (new nonce, so a new callback token), allocate, tags (vmops.ensure_allocated),
   boot. A slave is then announced `add <new ip> <slavedata>` and marked announced.
3. A new master waits for its own MASTER_INIT_DONE callback and master_setup_time, then every running slave is
   announced `add <ip> <slavedata>` to it (`rc_added`), and app_url is rewritten with the new master's IP.

A boot failure of the new VM ends the job FAIL (the policy judges the slot again after the boot grace).

Waiting on OpenNebula (an old VM going away, a new one booting) returns a Watch (functions.engine.context): the
watcher wakes the environment when the VM changes, no drive polls it. Waiting on the new master's callback
returns the time left to the deadline (the callback kicks the drive).
"""

from __future__ import annotations

import json
from typing import Any

from functions.cloud import sshexec
from functions.cloud.one import OneClient, OneError
from functions.engine import announce, vmops
from functions.engine.context import POLL, Ctx, Env, Step, Watch, deadline_passed, fail, finish, later
from functions.model import render, specview
from functions.store import envstore
from functions.store.envstore import VmRecord

SSH_RETRY = 2.0
BROKEN_SHORT = ("missing", "unkn", "fail")


def begin_fields(env: Env, slots: list[str]) -> dict[str, Any]:
    """The op-local fields of a new RECREATE of `slots` (only slots that exist; the master alone if named)."""
    valid = [s for s in dict.fromkeys(slots) if s in env.vms]
    if "m" in valid:
        valid = ["m"]
    old = {s: {"nonce": env.vms[s].nonce, "vmid": env.vms[s].vmid, "ip": env.vms[s].ip,
               "origin": env.vms[s].origin} for s in valid}
    fields: dict[str, Any] = {"op_slots": ",".join(valid), "rc_old": json.dumps(old), "rc_removed": "",
                              "rc_added": "", "rc_kept": ""}
    if valid == ["m"]:
        fields.update(master_ready=0, master_up=0)
    return fields


def _listed(env: Env, name: str) -> list[str]:
    return [s for s in str(env.data.get(name) or "").split(",") if s]


def _note(ctx: Ctx, env: Env, name: str, item: str) -> None:
    """Add `item` to the env's comma list `name` (and to env.data, for the rest of this step)."""
    items = _listed(env, name)
    if item not in items:
        env.data[name] = ",".join([*items, item])
        envstore.update_env(ctx.r, env.envid, **{name: env.data[name]})


def _old(env: Env) -> dict[str, dict[str, Any]]:
    try:
        value = json.loads(str(env.data.get("rc_old") or "{}"))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _announce(ctx: Ctx, env: Env, master: VmRecord, verb: str, slave: VmRecord) -> Step:
    """Tell the master `verb <ip>`; None when done, SSH_RETRY to try again. Raises StepFailed on a changed key."""
    try:
        announce.master_command(ctx, env, master, verb, slave)
    except sshexec.HostKeyMismatch as exc:
        raise vmops.StepFailed("RECREATE_FAIL: master host key changed", f"{verb} {slave.slot}: {exc}") from None
    except sshexec.SshFailed as exc:
        ctx.event(env, "error", f"`{verb} {slave.ip}` on the master failed, retrying: {exc}", slot=slave.slot)
        return SSH_RETRY
    return None


def _drop_old(ctx: Ctx, env: Env, one: OneClient, rec: VmRecord, master: VmRecord | None,
              seen: dict[int, str]) -> str:
    """Move the old incarnation out: "kept" (it runs again), "waiting" (terminating: its watch state is put in
    `seen`) or "gone"."""
    if rec.state != "removing":
        view = one.info(rec.vmid) if rec.vmid is not None else None
        if view is not None and view.running:
            _note(ctx, env, "rc_kept", rec.slot)
            ctx.event(env, "step", f"{rec.role} {rec.slot}: VM {rec.vmid} runs again, kept", slot=rec.slot)
            return "kept"
        if master is not None and rec.role == "slave" and rec.ip and rec.slot not in _listed(env, "rc_removed"):
            verb = str(env.cfg.get("scaledown_verb") or "remove")
            try:
                announce.master_command(ctx, env, master, verb, rec)
            except sshexec.SshFailed as exc:        # a changed host key included: nothing ran on the master
                ctx.event(env, "error", f"could not announce `{verb} {rec.ip}` to the master: {exc}", slot=rec.slot)
            _note(ctx, env, "rc_removed", rec.slot)
    vmid = rec.vmid
    if not vmops.terminate(ctx, env, one, rec, hard=True, seen=seen):
        return "waiting"
    ctx.event(env, "step", f"{rec.role} {rec.slot}: old VM {vmid} gone, creating its replacement", slot=rec.slot)
    return "gone"


def _going(seen: dict[int, str]) -> Step:
    """The wait for old VMs being terminated: a Watch on them (POLL only if none was seen, which terminate
    never leaves)."""
    return Watch(seen) if seen else POLL


def _boot(ctx: Ctx, env: Env, one: OneClient, rec: VmRecord) -> Step:
    """A Watch until the new VM runs (one that called back with its address runs); None once it does. Raises
    StepFailed if it will never run."""
    if rec.state in ("allocating", "allocated") and not vmops.came_up(ctx, env, rec):
        if rec.slot in env.fresh:                             # allocated just now: PENDING, nothing to ask
            return vmops.wait_new(rec)
        view = vmops.observe(ctx, env, one, rec)
        why = vmops.boot_failure(rec, view)
        if why:
            raise vmops.StepFailed(f"RECREATE_FAIL: {rec.slot}", f"{rec.role} {rec.slot}: {why}")
        if rec.state != "running" and view is not None:
            return vmops.watch(rec, view)
    return None


def _allocate(ctx: Ctx, env: Env, one: OneClient, slot: str, old: dict[str, Any], master_ip: str) -> VmRecord:
    role, index = ("master", 0) if slot == "m" else ("slave", int(slot[1:]))
    try:
        return vmops.ensure_allocated(ctx, env, one, slot, role, index, master_ip=master_ip,
                                      num_slaves=int(env.num("desired_slaves")), origin=str(old.get("origin") or ""))
    except (render.RenderError, specview.SpecError, OneError) as exc:
        raise vmops.StepFailed(f"RECREATE_FAIL: {slot}: {exc}"[:200], f"{role} {slot}: {exc}") from None


def _slave(ctx: Ctx, env: Env, one: OneClient, master: VmRecord, slot: str, old: dict[str, Any]) -> Step:
    """Move one slave slot on; None once its replacement is announced (or the old VM was kept)."""
    if slot in _listed(env, "rc_kept"):
        return None
    rec = env.vms.get(slot)
    if rec is not None and rec.nonce == old.get("nonce"):
        seen: dict[int, str] = {}
        state = _drop_old(ctx, env, one, rec, master, seen)
        if state != "gone":
            return None if state == "kept" else _going(seen)
        rec = None
    if rec is None or rec.vmid is None:                  # a new intent, or one a killed worker left
        rec = _allocate(ctx, env, one, slot, old, master.ip)
    wait = _boot(ctx, env, one, rec)
    if wait is not None:
        return wait
    if rec.state == "running":
        wait = _announce(ctx, env, master, "add", rec)
        if wait is not None:
            return wait
        rec.state = "announced"
        ctx.put_vm(env, rec)
    return None


def _master_ready(ctx: Ctx, env: Env, master: VmRecord) -> Step:
    """None once the new master reported MASTER_INIT_DONE and master_setup_time passed; else when to look again."""
    if env.num("master_ready"):
        return None
    if master.status.startswith("MASTER_INIT_FAIL"):
        raise vmops.StepFailed(master.status, f"the new master reported {master.status}")
    now = ctx.clock()
    up = env.num("master_up")
    if not up:
        up = now
        envstore.update_env(ctx.r, env.envid, master_up=now, phase="master_init")
        ctx.event(env, "step", "waiting for the new master's MASTER_INIT_DONE callback")
    if not master.status.startswith("MASTER_INIT_DONE"):
        return max(1.0, env.num("deadline") - now)
    left = up + float(env.cfg.get("master_setup_time") or 0) - now
    if left > 0:
        return left
    envstore.update_env(ctx.r, env.envid, master_ready=1, phase="announce")
    env.data["master_ready"] = "1"
    ctx.event(env, "step", "new master initialised (MASTER_INIT_DONE)")
    return None


def _reannounce(ctx: Ctx, env: Env, master: VmRecord) -> Step:
    """`add` every running slave not yet told to the new master (one SSH connection); None once all were.
    Raises StepFailed on a changed key; SSH_RETRY when one failed (the others are noted as told)."""
    todo = [s for s in env.slaves() if s.state in ("running", "announced") and s.ip
            and s.one_state not in BROKEN_SHORT and s.slot not in _listed(env, "rc_added")]
    retry = False
    for slave, exc in zip(todo, announce.tell_master(ctx, env, master, "add", todo), strict=True):
        if isinstance(exc, sshexec.HostKeyMismatch):
            raise vmops.StepFailed("RECREATE_FAIL: master host key changed", f"add {slave.slot}: {exc}")
        if exc is not None:
            ctx.event(env, "error", f"`add {slave.ip}` on the master failed, retrying: {exc}", slot=slave.slot)
            retry = True
        else:
            _note(ctx, env, "rc_added", slave.slot)
    return SSH_RETRY if retry else None


def _master(ctx: Ctx, env: Env, one: OneClient, old: dict[str, Any]) -> Step:
    """Replace the master, then re-announce every running slave to it."""
    rec = env.vms.get("m")
    if rec is not None and rec.nonce == old.get("nonce"):
        seen: dict[int, str] = {}
        state = _drop_old(ctx, env, one, rec, None, seen)
        if state == "kept":
            return finish(ctx, env, f"master VM {rec.vmid} runs again; nothing recreated")
        if state == "waiting":
            return _going(seen)
        rec = None
    if rec is None or rec.vmid is None:                  # a new intent, or one a killed worker left
        rec = _allocate(ctx, env, one, "m", old, "")
    wait = _boot(ctx, env, one, rec)
    if wait is None:
        wait = _master_ready(ctx, env, rec)
    if wait is not None:
        return wait
    wait = _reannounce(ctx, env, rec)
    if wait is not None:
        return wait
    url = render.app_url(str(env.cfg.get("app_url") or ""), rec.ip)
    return finish(ctx, env, f"recreated the master (VM {old.get('vmid')} -> VM {rec.vmid})"
                  + (f", {len(_listed(env, 'rc_added'))} slave(s) announced to it" if env.slaves() else ""),
                  app_url=url)


def recreate_step(ctx: Ctx, env: Env) -> Step:
    """One step of RECREATE. Safe to run twice (never a second VM for a slot)."""
    slots, old = _listed(env, "op_slots"), _old(env)
    if not slots:
        return finish(ctx, env, "nothing to recreate (the VMs named are gone)")
    if deadline_passed(ctx, env):
        return fail(ctx, env, "RECREATE_TIMEOUT", f"{', '.join(slots)} not replaced within "
                    f"{ctx.settings.create_deadline}s (deadline)")
    one = ctx.one(env)
    try:
        if slots == ["m"]:
            return _master(ctx, env, one, old.get("m") or {})
        master = env.vms.get("m")
        if master is None or master.state not in ("running", "announced") or not master.ip:
            return fail(ctx, env, "RECREATE_FAIL: the master is not running",
                        "recreating slaves needs a running master")
        waits = [w for w in (_slave(ctx, env, one, master, s, old.get(s) or {}) for s in slots) if w is not None]
    except vmops.StepFailed as exc:
        return fail(ctx, env, exc.status, exc.why)
    if waits:
        return later(*waits)
    kept = _listed(env, "rc_kept")
    done = [s for s in slots if s not in kept]
    text = f"recreated {', '.join(done)}" if done else "nothing recreated"
    return finish(ctx, env, text + (f" ({', '.join(kept)} runs again, kept)" if kept else ""))
