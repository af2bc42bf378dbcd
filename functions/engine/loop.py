"""The lifecycle engine's loop: `step(ctx, envid)` runs an environment's current operation forward, one small
step at a time, under the environment lock, then says when to come back (a kick).

Level-triggered: each step reads the environment, its VM records and OpenNebula, and does the next thing that
is missing, so a lost, repeated or interrupted drive costs a little time, never a duplicate or an orphan VM.
An operation is "in progress" while the environment's current job is not final. Operation-local state
(deadline, chosen slot) is stored on the environment keyed by the job id (`op_job`), so a restart resumes it.
The steps of each operation live in functions.engine.steps (a table by job type); the RQ entry is
functions.tasks.drive.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager

import redis

from functions.cloud.one import OneUnavailable
from functions.engine import kick as lifecycle
from functions.engine import steps, vmops
from functions.engine.context import Ctx, Env, Step, Watch, deadline_passed, fail, load, work_pending
from functions.model import specview
from functions.store import envstore, guards, keys, scripts, watching

log = logging.getLogger("carina.engine")

MAX_STEPS = 40              # steps per drive job before handing over to a fresh job
MAX_SECONDS = 30.0          # wall time per drive job
BUSY_RETRY = 0.5            # seconds before retrying when another worker holds the env lock
MAX_BACKOFF = 30.0
OWN_DEADLINE_CHECK = ("CREATE", "SCALEUP")   # these steps end their jobs with a precise reason themselves
CAPACITY_RECHECK = 30.0     # seconds between checks while a VM waits for the global scheduler (a grant kicks at once)
UNWATCHABLE_RETRY = 1.0     # seconds: a wait on VMs that cannot be watched (no proxy in the spec) polls instead
DEADLINE_SLACK = 0.05       # seconds after the operation's deadline the last kick comes


# ---------------------------------------------------------------- the step loop


def dispatch(ctx: Ctx, env: Env) -> Step:
    """Run one step of the environment's current operation."""
    if not work_pending(ctx.r, env):          # also what a worker killed while ending the job left behind
        if env.op == "REMOVE" and (envstore.get_job(ctx.r, env.jobid) or {}).get("status") == "DONE":
            envstore.delete_env(ctx.r, env.envid, ctx.clock)     # killed between its DONE and the deletion
            return None
        guards.release_op(ctx.r, env.envid, env.jobid)
        scripts.run(ctx.r, "clear_inflight", [keys.env(env.envid), keys.inflight()], [env.envid, env.jobid])
        return None
    if env.data.get("op_job") != env.jobid:
        return steps.begin(ctx, env)
    handler = steps.STEPS.get(env.op)
    if handler is None:
        return fail(ctx, env, f"{env.op}_FAIL", f"op: unknown operation {env.op!r}")
    if env.op in OWN_DEADLINE_CHECK or not deadline_passed(ctx, env):
        return handler(ctx, env)
    if _last_look(env):
        try:
            if handler(ctx, env) is None:                  # what it waited for may be gone by now
                return None
        except OneUnavailable:                             # still away: the deadline stands
            pass
    return fail(ctx, env, f"{env.op}_FAIL: deadline", f"{env.op.lower()} did not complete within "
                f"{ctx.settings.op_deadline}s (deadline): {env.data.get('info') or 'no progress'}")


def _last_look(env: Env) -> bool:
    """Past its deadline, a remove, or a scale-down that already told the master, gets one more step before it
    FAILs: the VMs it terminated may be gone by now (a worker died meanwhile). That step starts nothing new."""
    return env.op == "REMOVE" or (env.op == "SCALEDOWN" and bool(env.num("drain_until")))


def _backoff(ctx: Ctx, env: Env, exc: Exception) -> float:
    tries = int(env.num("retries"))
    delay = min(MAX_BACKOFF, 2.0 ** tries)
    envstore.update_env(ctx.r, env.envid, retries=tries + 1, info=f"OpenNebula unreachable, retrying in {delay:.0f}s")
    ctx.event(env, "error", f"OpenNebula unreachable ({exc}), retrying in {delay:.0f}s")
    return delay


def _capacity_wait(ctx: Ctx, env: Env) -> float:
    """When to look again at a VM waiting for capacity: CAPACITY_RECHECK, but never past the op's deadline."""
    left = env.num("deadline") - ctx.clock() if env.num("deadline") else CAPACITY_RECHECK
    return max(1.0, min(CAPACITY_RECHECK, left))


def _watch(ctx: Ctx, env: Env, wait: Watch) -> float | None:
    """Put the environment in the watch set (its VMs as the step saw them). Returns the delayed kick still
    wanted: the watch's `within`, capped by the operation's deadline (so a create times out on time)."""
    try:
        proxy = specview.proxy(env.spec)
    except specview.SpecError:
        proxy = ""
    if not wait.vms or not proxy:
        return UNWATCHABLE_RETRY
    now = ctx.clock()
    watching.add(ctx.r, env.envid, watching.Entry(env.service, env.endpoint, proxy, dict(wait.vms), now))
    limits = [x for x in (wait.within,) if x is not None]
    if env.num("deadline"):
        limits.append(max(DEADLINE_SLACK, env.num("deadline") - now + DEADLINE_SLACK))
    return min(limits, default=None)


def run_steps(ctx: Ctx, envid: str) -> tuple[float | None, str]:
    """Steps until the operation waits or ends (bounded). Caller holds the env lock. A wait on OpenNebula
    (a Watch) puts the environment in the watch set and returns the delayed kick still wanted, if any."""
    started = time.monotonic()
    watching.drop(ctx.r, envid)              # this drive supersedes the environment's watch, if it had one
    for _ in range(MAX_STEPS):
        env = load(ctx.r, envid)
        if env is None:                  # removed: end the job still holding its guard (a racing remove)
            envstore.finish_vanished(ctx.r, envid, ctx.clock)
            return None, "gone"
        try:
            nxt = dispatch(ctx, env)
        except OneUnavailable as exc:
            return _backoff(ctx, env, exc), "retry"
        except vmops.WaitCapacity:
            return _capacity_wait(ctx, env), "wait"
        if env.num("retries"):
            envstore.update_env(ctx.r, envid, retries=0)
        if nxt is None:
            return None, "idle"
        if isinstance(nxt, Watch):
            return _watch(ctx, env, nxt), "wait"
        if nxt > 0 or time.monotonic() - started > MAX_SECONDS:
            return nxt, "wait"
    return 0.0, "more"


def held_lock(r: redis.Redis, envid: str) -> AbstractContextManager[str]:
    """The environment lock: guards.env_lock (owner token, short TTL renewed while held)."""
    return guards.env_lock(r, envid)


def step(ctx: Ctx, envid: str) -> str:
    """Drive the environment as far as it can go now, then schedule the next drive if needed.

    Takes the env lock; every VM record and job end it writes is fenced by that lock, so a drive paused past
    the lock's TTL stops ("lost") instead of writing over the new holder. A drive that finds the lock taken
    asks the holder to rerun (guards.want_rerun: a drive holding it kicks a new drive at once when it is done,
    so what made this drive run is never missed for long), tries once more (the holder may have just let go),
    and leaves a delayed kick in case the holder does not rerun (a callback holds it briefly). Unexpected errors
    are recorded as events and retried with backoff, never lost. Safe to run any number of times, concurrently.
    """
    result = _step_locked(ctx, envid)
    if result is None:
        guards.want_rerun(ctx.r, envid)
        result = _step_locked(ctx, envid)
    if result is None:
        lifecycle.kick(ctx.queue, envid, BUSY_RETRY)
        return "busy"
    nxt, outcome = result
    if guards.take_rerun(ctx.r, envid):     # a drive came while this one held the lock: run again now
        nxt = 0.0
    if nxt is not None:
        lifecycle.kick(ctx.queue, envid, nxt)
    return outcome


def _step_locked(ctx: Ctx, envid: str) -> tuple[float | None, str] | None:
    """run_steps under the env lock: (when to come back, outcome), or None if another holder has the lock."""
    with held_lock(ctx.r, envid) as fence:
        if not fence:
            return None
        ctx.fence = fence
        try:
            return run_steps(ctx, envid)
        except envstore.LockLost as exc:          # paused past the lock's TTL: the new holder carries on
            log.warning("env %s: %s; stopping this drive", envid, exc)
            return None, "lost"
        except Exception as exc:  # noqa: BLE001 - a bug must not lose the environment
            log.exception("env %s: step crashed", envid)
            env = load(ctx.r, envid)
            if env is None:
                return None, "gone"
            ctx.event(env, "error", f"internal error: {type(exc).__name__}: {exc}")
            return _backoff_internal(ctx, env), "error"


def _backoff_internal(ctx: Ctx, env: Env) -> float:
    tries = int(env.num("retries"))
    envstore.update_env(ctx.r, env.envid, retries=tries + 1)
    return min(60.0, 2.0 ** tries)
