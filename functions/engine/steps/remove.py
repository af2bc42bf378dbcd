"""The REMOVE step: terminate every recorded VM and every VM tagged with the environment, wait until
OpenNebula shows none, then delete the environment."""

from __future__ import annotations

from functions.cloud.one import OneError
from functions.engine import vmops
from functions.engine.context import Ctx, Env, Step, Watch, fail
from functions.model import specview
from functions.store import envstore, gsstore


def remove_step(ctx: Ctx, env: Env) -> Step:
    """One step of REMOVE: terminate everything of the env, wait until OpenNebula shows none, delete it."""
    seen: dict[int, str] = {}
    try:
        one = ctx.one(env)
        recorded = {rec.vmid for rec in env.vms.values()}
        pending = [rec.slot for rec in list(env.vms.values()) if not vmops.terminate(ctx, env, one, rec, seen=seen)]
        for view in (v for v in vmops.env_vms(ctx, env, one) if v.vmid not in recorded):
            vmops.surface_refusal(ctx, env, view.vmid, one.terminate(view.vmid, hard=view.failed or view.unknown))
            pending.append(f"VM {view.vmid}")
            seen[view.vmid] = vmops.going_state(view)
    except (OneError, specview.SpecError) as exc:
        return fail(ctx, env, f"REMOVE_FAIL: {exc}"[:200], f"remove: {exc}")
    if pending:
        refused = env.data.get("refused")
        envstore.update_env(ctx.r, env.envid, phase="removing",
                            info=f"waiting for {len(pending)} VM(s) to go" + (f"; {refused}" if refused else ""))
        return Watch(seen) if seen else 1.0
    envstore.finish_job(ctx.r, env.jobid, "DONE", ctx.clock, "environment removed",
                        fence=(env.envid, ctx.fence) if ctx.fence else None)
    ctx.event(env, "step", f"REMOVE job {env.jobid} DONE: environment removed", job=env.jobid)
    gsstore.end_env(ctx.r, env.envid, ctx.clock(), "environment removed")   # no request outlives its env
    envstore.delete_env(ctx.r, env.envid, ctx.clock)   # also ends a remove that took the guard meanwhile
    return None
