"""`begin`: what every new job records once before its first step (deadline, chosen slot, who asked); a REMOVE
pre-empts the environment's other unfinished jobs.

A job started by a policy (functions.ops.operations.request_policies) names its slots in the job hash (`slots`)
and has `origin` "policy": a SCALEDOWN removes that slot instead of the highest one, a RECREATE replaces those
slots in place, and a SCALEUP's new VM is recorded as added by policy (`op_origin`).
"""

from __future__ import annotations

from functions.engine.context import Ctx, Env, Step
from functions.engine.steps import recreate
from functions.store import envstore


def _preempt_older(ctx: Ctx, env: Env) -> None:
    """A remove ends the environment's other unfinished jobs FAIL. Safe to run twice."""
    for job in envstore.list_jobs(ctx.r, env.service, limit=200):
        if job.get("envid") == env.envid and job.get("jobid") != env.jobid:
            if envstore.finish_job(ctx.r, job["jobid"], "FAIL", ctx.clock, f"pre-empted by remove {env.jobid}"):
                ctx.event(env, "step", f"job {job['jobid']} pre-empted by remove {env.jobid}", job=job["jobid"])


ORIGINS = {"scheduler": " by the global scheduler (reclaim)", "policy": " by a policy"}   # as the start event says


def _asked(ctx: Ctx, env: Env) -> tuple[list[str], str]:
    """(slots named by the job, who started it: "user", "policy", or "scheduler" for a reclaim)."""
    job = envstore.get_job(ctx.r, env.jobid) or {}
    return [s for s in str(job.get("slots") or "").split(",") if s], str(job.get("origin") or "user")


def begin(ctx: Ctx, env: Env) -> Step:
    """Record the operation-local state of the new job (deadline, chosen slot), once per job. A SCALEDOWN whose
    job names a slave slot (`slots`, e.g. the global scheduler's reclaim) removes that one."""
    now, op = ctx.clock(), env.op
    slots, origin = _asked(ctx, env)
    fields: dict[str, object] = {"op_job": env.jobid, "op_slot": "", "drain_until": 0, "ssh_tries": 0,
                                 "deadline": 0, "phase": op.lower(), "phase_since": now, "error": "", "refused": "",
                                 "gs_wait": "", "gs_slot": "", "op_origin": origin}
    slaves = env.slaves()
    if op in ("CREATE", "SCALEUP", "RECREATE"):
        fields["deadline"] = now + ctx.settings.create_deadline
    else:
        fields["deadline"] = now + ctx.settings.op_deadline
    if op == "SCALEUP":
        used = {v.index for v in slaves}
        index = next(i for i in range(len(used) + 1) if i not in used)
        fields.update(op_slot=f"s{index}", desired_slaves=len(slaves) + 1)
    elif op == "SCALEDOWN" and slots and slots[0] != "m":
        fields.update(op_slot=slots[0], desired_slaves=max(0, len(slaves) - (slots[0] in env.vms)))
    elif op == "SCALEDOWN" and slaves:
        fields.update(op_slot=slaves[-1].slot, desired_slaves=len(slaves) - 1)
    elif op == "RECREATE":
        fields.update(recreate.begin_fields(env, slots))
    elif op == "REMOVE":
        _preempt_older(ctx, env)
    envstore.update_env(ctx.r, env.envid, **fields)
    shown = fields["op_slot"] or fields.get("op_slots") or ""
    ctx.event(env, "step", f"{op} job {env.jobid} started" + (f" (slot {shown})" if shown else "")
              + ORIGINS.get(origin, ""), job=env.jobid)
    return 0.0
