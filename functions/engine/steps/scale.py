"""SCALEUP and SCALEDOWN steps (see functions.engine.loop for the contract).

Rules: scale-up adds the lowest free slave slot; a scale-up whose VM fails to boot is rolled back (its VM
terminated, its record dropped) and the job FAILs; an SSH failure to announce it ends the job DONE with status
SLAVE_SCALEUP_FAIL (the slave is kept, as the original did), but a changed master host key FAILs the job
(never accepted). Scale-down removes the highest slave slot (never
the master), announces `<scaledown_verb> <ip> <slavedata>` to the master first, waits drain_time (a delayed
drive, not a sleep), then terminates.
"""

from __future__ import annotations

from functions.cloud import sshexec
from functions.cloud.one import OneClient, OneError
from functions.engine import announce, vmops
from functions.engine.context import Ctx, Env, Step, Watch, deadline_passed, fail, finish
from functions.model import render, specview
from functions.store import envstore, gsstore
from functions.store.envstore import VmRecord

SSH_ATTEMPTS = 3
SSH_RETRY = 2.0


def _rollback(ctx: Ctx, env: Env, one: OneClient, rec: VmRecord | None, why: str) -> Step:
    if rec is not None and rec.vmid is not None:
        one.terminate(rec.vmid, hard=True)
    elif rec is not None:                     # an intent whose allocate answer was lost: its VM has the slot's tags
        for view in vmops.slot_vms(ctx, env, one, rec):
            one.terminate(view.vmid, hard=True)
    if rec is not None:
        ctx.del_vm(env, rec.slot)
        gsstore.release_slot(ctx.r, env.envid, rec.slot, rec.nonce, ctx.clock())
    left = [v for v in env.slaves() if rec is None or v.slot != rec.slot]
    envstore.update_env(ctx.r, env.envid, desired_slaves=len(left))
    return fail(ctx, env, f"SLAVE_SCALEUP_FAIL: {why}"[:200], why)


def scaleup_step(ctx: Ctx, env: Env) -> Step:
    """One step of SCALEUP. Safe to run twice."""
    one = ctx.one(env)
    slot = str(env.data.get("op_slot") or "s0")
    rec = env.vms.get(slot)
    if deadline_passed(ctx, env):
        waiting = f" (no capacity granted: {env.data['gs_wait']})" if rec is None and env.data.get("gs_wait") else ""
        unplaced = f" (OpenNebula could not place VM {rec.vmid}: {rec.sched})" if rec is not None and rec.sched else ""
        return _rollback(ctx, env, one, rec, f"slave {slot} not running within {ctx.settings.create_deadline}s"
                         + waiting + unplaced)
    master = env.vms.get("m")
    if master is None or master.state not in ("running", "announced") or not master.ip:
        return fail(ctx, env, "SLAVE_SCALEUP_FAIL: the master is not running", "scale-up needs a running master")
    try:
        rec = vmops.ensure_allocated(ctx, env, one, slot, "slave", int(slot[1:]), master_ip=master.ip,
                                     num_slaves=int(env.num("desired_slaves")))
    except (render.RenderError, specview.SpecError, OneError) as exc:
        return _rollback(ctx, env, one, env.vms.get(slot), f"slave {slot}: {exc}")
    progress = announce.bring_up(ctx, env, one, master, [rec])[slot]
    if progress.failed:
        return _rollback(ctx, env, one, rec, f"slave {slot}: {progress.failed}")
    if progress.wait is not None:
        return progress.wait
    exc = progress.ssh
    if isinstance(exc, sshexec.HostKeyMismatch):
        ctx.event(env, "error", f"announce {slot} to the master refused: {exc}")
        return fail(ctx, env, "SLAVE_SCALEUP_FAIL: master host key changed", f"slave {slot} not announced: {exc}")
    if exc is not None:
        tries = int(env.num("ssh_tries")) + 1
        ctx.event(env, "error", f"announce {slot} to the master failed ({tries}/{SSH_ATTEMPTS}): {exc}")
        if tries < SSH_ATTEMPTS:
            envstore.update_env(ctx.r, env.envid, ssh_tries=tries)
            return SSH_RETRY
        return finish(ctx, env, f"slave {slot} added but not announced: {exc}",
                      status=f"SLAVE_SCALEUP_FAIL: ssh to master failed: {exc}"[:200])
    return finish(ctx, env, f"added slave {slot} (VM {rec.vmid}, {rec.ip})", status="SLAVE_SCALEUP_SUCCESS")


def _drain_time(ctx: Ctx, env: Env) -> float:
    value = env.cfg.get("drain_time")
    return float(ctx.settings.drain_time_default if value is None or value == "" else value)


def scaledown_step(ctx: Ctx, env: Env) -> Step:
    """One step of SCALEDOWN. Safe to run twice."""
    slot = str(env.data.get("op_slot") or "")
    rec = env.vms.get(slot) if slot else None
    if rec is None:
        return finish(ctx, env, "no slave to remove" if not slot else f"slave {slot} already gone")
    one = ctx.one(env)
    now = ctx.clock()
    if not env.num("drain_until") and rec.state != "removing":
        master = env.vms.get("m")
        verb = str(env.cfg.get("scaledown_verb") or "remove")
        if master is not None and master.ip and rec.ip and master.state in ("running", "announced"):
            try:
                announce.master_command(ctx, env, master, verb, rec)
            except sshexec.HostKeyMismatch as exc:
                return fail(ctx, env, "SLAVE_SCALEDOWN_FAIL: master host key changed", f"{slot}: {exc}")
            except sshexec.SshFailed as exc:
                ctx.event(env, "error", f"could not announce `{verb} {rec.ip}` to the master, removing anyway: {exc}")
        drain = _drain_time(ctx, env)
        envstore.update_env(ctx.r, env.envid, drain_until=now + drain, phase="draining")
        if drain > 0:
            ctx.event(env, "step", f"draining {slot} for {drain:.0f}s")
            return drain
    elif env.num("drain_until") > now:
        return env.num("drain_until") - now
    seen: dict[int, str] = {}
    if not vmops.terminate(ctx, env, one, rec, seen=seen):
        return Watch(seen)
    return finish(ctx, env, f"removed slave {slot} (VM {rec.vmid})")
