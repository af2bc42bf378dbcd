"""CREATE: master → RUNNING → master_setup_time and MASTER_INIT_DONE → slaves → announce each → READY/ACTIVE.

Each function is one level-triggered step under the env lock (see functions.engine.loop); it returns when to
come back (0 = at once, > 0 = seconds, None = the job ended).
"""

from __future__ import annotations

from functions.cloud import sshexec
from functions.cloud.one import OneClient, OneError, OneUnavailable
from functions.engine import announce, bulk, vmops
from functions.engine.context import Ctx, Env, Step, deadline_passed, fail, finish, later
from functions.model import render, specview
from functions.store import envstore
from functions.store.envstore import VmRecord

SSH_RETRY = 2.0


def _status_of(env: Env, master: VmRecord) -> str:
    """The master's init verdict: the recorded fact first (later statuses cannot undo it), then its last
    reported status, then the environment's (records written before verdicts were kept)."""
    if master.init:
        return "MASTER_INIT_DONE" if master.init == "done" else master.init.removeprefix("fail:")
    for status in (master.status, str(env.data.get("status") or "")):
        if status.startswith(("MASTER_INIT_DONE", "MASTER_INIT_FAIL")):
            return status
    return ""


def _timeout(ctx: Ctx, env: Env) -> Step:
    try:                                      # first record what intents made (a worker died after allocate)
        for rec in [v for v in env.vms.values() if v.vmid is None]:
            vmops.adopt_tagged(ctx, env, ctx.one(env), rec)
    except (OneError, OneUnavailable) as exc:  # best effort: the deadline holds even with OpenNebula away
        ctx.event(env, "error", f"could not look for the VMs of unfinished allocations: {exc}")
    master = env.vms.get("m")
    if master is None or master.state in ("allocating", "allocated"):
        why = "the master VM did not reach RUNNING"
    elif not env.data.get("master_ready"):
        why = "no MASTER_INIT_DONE callback from the master"
    else:
        why = "the slaves were not all running and announced"
    waiting = str(env.data.get("gs_wait") or "")
    if waiting:                                   # a VM never got capacity from the global scheduler
        why += f" (no capacity granted: {waiting})"
    why += f" within {ctx.settings.create_deadline}s (deadline)"
    unplaced = [f"{v.role} VM {v.vmid}: {v.sched}" for v in env.vms.values() if v.sched and v.state == "allocated"]
    if unplaced:
        why += "; OpenNebula could not place " + "; ".join(unplaced)
    return fail(ctx, env, "CREATE_TIMEOUT", why)


def _master(ctx: Ctx, env: Env, one: OneClient) -> tuple[VmRecord | None, Step]:
    """Get the master to RUNNING and initialised. Returns (master, None) when slaves may start."""
    try:
        master = vmops.ensure_allocated(ctx, env, one, "m", "master", 0,
                                        num_slaves=int(env.num("desired_slaves")))
    except (render.RenderError, specview.SpecError, OneError) as exc:
        return None, fail(ctx, env, f"MASTER_CREATE_FAIL: {exc}", f"master: {exc}")
    if master.state in ("allocating", "allocated") and not vmops.came_up(ctx, env, master):
        if "m" in env.fresh:                                  # allocated just now: PENDING, nothing to ask
            envstore.update_env(ctx.r, env.envid, phase="master_boot")
            return None, vmops.wait_new(master)
        view = vmops.observe(ctx, env, one, master)
        why = vmops.boot_failure(master, view)
        if why:
            return None, fail(ctx, env, "MASTER_CREATE_FAIL: VM failed", f"master: {why}")
        if master.state != "running":
            if env.data.get("phase") != "master_boot":
                envstore.update_env(ctx.r, env.envid, phase="master_boot")
            return None, vmops.watch(master, view)
    if env.data.get("master_ready"):
        return master, None
    now = ctx.clock()
    up = env.num("master_up")
    if not up:
        up = now
        envstore.update_env(ctx.r, env.envid, master_up=now, phase="master_init")
        ctx.event(env, "step", "waiting for the master's MASTER_INIT_DONE callback")
    status = _status_of(env, master)
    if status.startswith("MASTER_INIT_FAIL"):
        return None, fail(ctx, env, status, f"the master reported {status}")
    if not status:
        return None, max(1.0, env.num("deadline") - now) if env.num("deadline") else None
    left = up + float(env.cfg.get("master_setup_time") or 0) - now
    if left > 0:
        envstore.update_env(ctx.r, env.envid, phase="master_setup")
        return None, left
    envstore.update_env(ctx.r, env.envid, master_ready=1, phase="slaves")
    ctx.event(env, "step", "master initialised (MASTER_INIT_DONE)")
    return master, None


def _slaves(ctx: Ctx, env: Env, one: OneClient, master: VmRecord, desired: int) -> Step:
    """Move every slave on (boot, then `add` over one SSH connection); None once all are announced. Raises
    StepFailed when a slave will never run or the master's host key changed; a failed announce retries."""
    progress = announce.bring_up(ctx, env, one, master, [env.vms[f"s{i}"] for i in range(desired)])
    waits: list[Step] = []
    for slot, p in progress.items():
        if p.failed:
            raise vmops.StepFailed(f"SLAVE_CREATE_FAIL: {slot}", f"slave {slot}: {p.failed}")
        if isinstance(p.ssh, sshexec.HostKeyMismatch):
            raise vmops.StepFailed("SLAVE_CREATE_FAIL: master host key changed", f"announce {slot}: {p.ssh}")
        if p.ssh is not None:
            ctx.event(env, "error", f"announce {slot} to the master failed, retrying: {p.ssh}", slot=slot)
            waits.append(SSH_RETRY)
        elif p.wait is not None:
            waits.append(p.wait)
    return later(*waits) if waits else None


def create_step(ctx: Ctx, env: Env) -> Step:
    """One step of CREATE. Safe to run twice."""
    if deadline_passed(ctx, env):
        return _timeout(ctx, env)
    one = ctx.one(env)
    master, wait = _master(ctx, env, one)
    if master is None:
        return wait
    desired = int(env.num("desired_slaves"))
    try:                                         # the new slaves at once (Redis work batched), then any intent left
        short = bulk.allocate_new(ctx, env, one, [(f"s{i}", "slave", i) for i in range(desired)],
                                  master_ip=master.ip, num_slaves=desired)
    except bulk.SlotFailed as exc:
        return fail(ctx, env, f"SLAVE_CREATE_FAIL: {exc.cause}", f"slave {exc.slot}: {exc.cause}")
    for i in range(desired):                     # intents a killed drive left (adopted by tag, else allocated)
        rec = env.vms.get(f"s{i}")
        if rec is None or rec.vmid is not None:
            continue
        try:
            vmops.ensure_allocated(ctx, env, one, f"s{i}", "slave", i, master_ip=master.ip, num_slaves=desired)
        except vmops.WaitCapacity as exc:       # ask for every slave at once, then wait for the grants
            short = short or exc
        except (render.RenderError, specview.SpecError, OneError) as exc:
            return fail(ctx, env, f"SLAVE_CREATE_FAIL: {exc}", f"slave s{i}: {exc}")
    if short is not None:
        raise short
    try:
        wait = _slaves(ctx, env, one, master, desired)
    except vmops.StepFailed as exc:
        return fail(ctx, env, exc.status, exc.why)
    if wait is not None:
        return wait
    return _complete(ctx, env, master, desired)


def _complete(ctx: Ctx, env: Env, master: VmRecord, desired: int) -> Step:
    url = render.app_url(str(env.cfg.get("app_url") or ""), master.ip)
    policy = env.cfg.get("availability_policy") or {}
    passive = isinstance(policy, dict) and str(policy.get("failover_role", "")).lower() == "passive"
    envstore.update_env(ctx.r, env.envid, app_url=url, policy_status="READY")
    ctx.event(env, "step", f"environment READY{' at ' + url if url else ''}")
    return finish(ctx, env, f"created: 1 master + {desired} slaves",
                  policy_status="PASSIVE" if passive else "ACTIVE")
