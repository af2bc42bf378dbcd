"""Starting an operation (`begin`), SCALEUP, SCALEDOWN and REMOVE steps (see functions.engine for the contract).

Rules: scale-up adds the lowest free slave slot; a scale-up whose VM fails to boot is rolled back (its VM
terminated, its record dropped) and the job FAILs; an SSH failure to announce it ends the job DONE with status
SLAVE_SCALEUP_FAIL (the slave is kept, as the original did), but a changed master host key FAILs the job
(never accepted). Scale-down removes the highest slave slot (never
the master), announces `<scaledown_verb> <ip> <slavedata>` to the master first, waits drain_time (a delayed
drive, not a sleep), then terminates. Remove terminates every recorded VM and every VM tagged with the
environment, waits until OpenNebula shows none, then deletes the environment.
"""

from __future__ import annotations

from functions import envstore, render, specview, sshexec, vmops
from functions.engine import POLL, Ctx, Env, Step, deadline_passed, fail, finish
from functions.envstore import VmRecord
from functions.one import OneClient, OneError

SSH_ATTEMPTS = 3
SSH_RETRY = 2.0


def _preempt_older(ctx: Ctx, env: Env) -> None:
    """A remove ends the environment's other unfinished jobs FAIL. Safe to run twice."""
    for job in envstore.list_jobs(ctx.r, env.service, limit=200):
        if job.get("envid") == env.envid and job.get("jobid") != env.jobid:
            if envstore.finish_job(ctx.r, job["jobid"], "FAIL", ctx.clock, f"pre-empted by remove {env.jobid}"):
                ctx.event(env, "step", f"job {job['jobid']} pre-empted by remove {env.jobid}", job=job["jobid"])


def begin(ctx: Ctx, env: Env) -> Step:
    """Record the operation-local state of the new job (deadline, chosen slot), once per job."""
    now, op = ctx.clock(), env.op
    fields: dict[str, object] = {"op_job": env.jobid, "op_slot": "", "drain_until": 0, "ssh_tries": 0,
                                 "deadline": 0, "phase": op.lower(), "phase_since": now, "error": ""}
    slaves = env.slaves()
    if op in ("CREATE", "SCALEUP"):
        fields["deadline"] = now + ctx.settings.create_deadline
    if op == "SCALEUP":
        used = {v.index for v in slaves}
        index = next(i for i in range(len(used) + 1) if i not in used)
        fields.update(op_slot=f"s{index}", desired_slaves=len(slaves) + 1)
    elif op == "SCALEDOWN" and slaves:
        fields.update(op_slot=slaves[-1].slot, desired_slaves=len(slaves) - 1)
    elif op == "REMOVE":
        _preempt_older(ctx, env)
    envstore.update_env(ctx.r, env.envid, **fields)
    ctx.event(env, "step", f"{op} job {env.jobid} started" + (f" (slot {fields['op_slot']})" if fields["op_slot"]
                                                             else ""), job=env.jobid)
    return 0.0


def _rollback(ctx: Ctx, env: Env, one: OneClient, rec: VmRecord | None, why: str) -> Step:
    if rec is not None and rec.vmid is not None:
        one.terminate(rec.vmid, hard=True)
    if rec is not None:
        envstore.del_vm(ctx.r, env.envid, rec.slot)
    left = [v for v in env.slaves() if rec is None or v.slot != rec.slot]
    envstore.update_env(ctx.r, env.envid, desired_slaves=len(left))
    return fail(ctx, env, f"SLAVE_SCALEUP_FAIL: {why}"[:200], why)


def scaleup_step(ctx: Ctx, env: Env) -> Step:
    """One step of SCALEUP. Safe to run twice."""
    one = ctx.one(env)
    slot = str(env.data.get("op_slot") or "s0")
    rec = env.vms.get(slot)
    if deadline_passed(ctx, env):
        return _rollback(ctx, env, one, rec, f"slave {slot} not running within {ctx.settings.create_deadline}s")
    master = env.vms.get("m")
    if master is None or master.state not in ("running", "announced") or not master.ip:
        return fail(ctx, env, "SLAVE_SCALEUP_FAIL: the master is not running", "scale-up needs a running master")
    try:
        rec = vmops.ensure_allocated(ctx, env, one, slot, "slave", int(slot[1:]), master_ip=master.ip,
                                     num_slaves=int(env.num("desired_slaves")))
    except (render.RenderError, specview.SpecError, OneError) as exc:
        return _rollback(ctx, env, one, env.vms.get(slot), f"slave {slot}: {exc}")
    if rec.state in ("allocating", "allocated"):
        why = vmops.boot_failure(rec, vmops.observe(ctx, env, one, rec))
        if why:
            return _rollback(ctx, env, one, rec, f"slave {slot}: {why}")
        if rec.state != "running":
            return POLL
    if rec.state == "running":
        try:
            vmops.master_command(ctx, env, master, "add", rec)
        except sshexec.HostKeyMismatch as exc:
            ctx.event(env, "error", f"announce {slot} to the master refused: {exc}")
            return fail(ctx, env, "SLAVE_SCALEUP_FAIL: master host key changed", f"slave {slot} not announced: {exc}")
        except sshexec.SshFailed as exc:
            tries = int(env.num("ssh_tries")) + 1
            ctx.event(env, "error", f"announce {slot} to the master failed ({tries}/{SSH_ATTEMPTS}): {exc}")
            if tries < SSH_ATTEMPTS:
                envstore.update_env(ctx.r, env.envid, ssh_tries=tries)
                return SSH_RETRY
            return finish(ctx, env, f"slave {slot} added but not announced: {exc}",
                          status=f"SLAVE_SCALEUP_FAIL: ssh to master failed: {exc}"[:200])
        rec.state = "announced"
        envstore.put_vm(ctx.r, env.envid, rec)
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
                vmops.master_command(ctx, env, master, verb, rec)
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
    if not vmops.terminate(ctx, env, one, rec):
        return POLL
    return finish(ctx, env, f"removed slave {slot} (VM {rec.vmid})")


def remove_step(ctx: Ctx, env: Env) -> Step:
    """One step of REMOVE: terminate everything of the env, wait until OpenNebula shows none, delete it."""
    try:
        one = ctx.one(env)
        pending = [rec.slot for rec in list(env.vms.values()) if not vmops.terminate(ctx, env, one, rec)]
        for view in one.tagged(env.envid):
            one.terminate(view.vmid, hard=view.failed or view.unknown)
            pending.append(f"VM {view.vmid}")
    except (OneError, specview.SpecError) as exc:
        return fail(ctx, env, f"REMOVE_FAIL: {exc}"[:200], f"remove: {exc}")
    if pending:
        envstore.update_env(ctx.r, env.envid, phase="removing", info=f"waiting for {len(pending)} VM(s) to go")
        return POLL
    envstore.finish_job(ctx.r, env.jobid, "DONE", ctx.clock, "environment removed")
    ctx.event(env, "step", f"REMOVE job {env.jobid} DONE: environment removed", job=env.jobid)
    envstore.delete_env(ctx.r, env.envid, ctx.clock)   # also ends a remove that took the guard meanwhile
    return None
