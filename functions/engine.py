"""The lifecycle engine: `step(ctx, envid)` runs an environment's current operation forward, one small step at
a time, under the environment lock, then says when to come back.

Level-triggered: each step reads the environment, its VM records and OpenNebula, and does the next thing that
is missing, so a lost, repeated or interrupted drive costs a little time, never a duplicate or an orphan VM.
An operation is "in progress" while the environment's current job is not final. Operation-local state
(deadline, chosen slot) is stored on the environment keyed by the job id (`op_job`), so a restart resumes it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import redis
from rq import Queue

from config.settings import Settings
from functions import envstore, keys, lifecycle, scripts, specview, sshexec, tenants
from functions.clock import Clock, system_clock
from functions.envstore import VmRecord
from functions.one import OneClient, OneError, OneUnavailable

log = logging.getLogger("carina.engine")

MAX_STEPS = 40              # steps per drive job before handing over to a fresh job
MAX_SECONDS = 30.0          # wall time per drive job
POLL = 1.0                  # seconds between OpenNebula polls while a VM boots or shuts down
BUSY_RETRY = 0.5            # seconds before retrying when another worker holds the env lock
MAX_BACKOFF = 30.0
FINAL = ("DONE", "FAIL", "ABORT")
LOCK_TTL = envstore.LOCK_TTL  # the env lock's TTL, renewed while a step runs (functions.envstore.env_lock)


Step = float | None   # None: nothing more to do; 0: next step now; > 0: come back in that many seconds


@dataclass
class Env:
    """An environment as loaded for one step."""

    envid: str
    data: dict[str, Any]
    vms: dict[str, VmRecord]

    @property
    def service(self) -> str:
        return str(self.data.get("service", ""))

    @property
    def name(self) -> str:
        return str(self.data.get("name", ""))

    @property
    def spec(self) -> dict[str, Any]:
        return self.data.get("spec") or {}

    @property
    def cfg(self) -> dict[str, Any]:
        return specview.env_entry(self.spec)

    @property
    def endpoint(self) -> str:
        return str(self.data.get("endpoint") or specview.endpoint(self.spec))

    @property
    def op(self) -> str:
        return str(self.data.get("op") or "CREATE")

    @property
    def jobid(self) -> str:
        return str(self.data.get("job") or "")

    def num(self, name: str, default: float = 0.0) -> float:
        try:
            return float(self.data.get(name) or default)
        except (TypeError, ValueError):
            return default

    def slaves(self) -> list[VmRecord]:
        return sorted((v for v in self.vms.values() if v.role == "slave"), key=lambda v: v.index)


@dataclass
class Ctx:
    """What a step needs: Redis, the queue, settings, the clock and the two outside worlds (OpenNebula, SSH)."""

    r: redis.Redis
    queue: Queue
    settings: Settings
    clock: Clock = system_clock
    one_factory: Callable[[str, str], OneClient] = OneClient
    ssh: Callable[..., tuple[sshexec.SshResult, str]] = sshexec.run_remote
    clients: dict[str, OneClient] = field(default_factory=dict)

    def event(self, env: Env, kind: str, msg: str, **extra: str) -> None:
        envstore.add_event(self.r, env.envid, env.service, kind, msg, self.clock, **extra)
        (log.warning if kind == "error" else log.info)("env %s: %s", env.envid, msg)

    def one(self, env: Env) -> OneClient:
        """The OneClient for the env's endpoint: spec proxy + oneauth from the service's stored config."""
        url = specview.proxy(env.spec)
        if url not in self.clients:
            conf = tenants.get_config(self.r, env.service) or {}
            auth = ((conf.get("ENDPOINT") or {}).get(env.endpoint) or {}).get("oneauth")
            if not auth:
                raise OneError(-1, f"endpoint {env.endpoint!r}: no oneauth in the service's current config")
            self.clients[url] = self.one_factory(url, auth)
        return self.clients[url]


def load(r: redis.Redis, envid: str) -> Env | None:
    data = envstore.get_env(r, envid)
    return None if data is None else Env(envid=envid, data=data, vms=envstore.get_vms(r, envid))


def work_pending(r: redis.Redis, env: Env) -> bool:
    """True while the environment's current job is not final (a job not yet written counts if it holds the op)."""
    if not env.jobid:
        return False
    job = envstore.get_job(r, env.jobid)
    if job is None:
        return envstore.current_op(r, env.envid) == env.jobid
    return job.get("status") not in FINAL


# ---------------------------------------------------------------- ending an operation


def _end(ctx: Ctx, env: Env, job_status: str, info: str, **fields: Any) -> None:
    envstore.finish_job(ctx.r, env.jobid, job_status, ctx.clock, info)
    envstore.update_env(ctx.r, env.envid, info=info, retries=0, **fields)
    envstore.release_op(ctx.r, env.envid, env.jobid)
    scripts.run(ctx.r, "clear_inflight", [keys.env(env.envid), keys.inflight()], [env.envid, env.jobid])
    if env.op == "CREATE" and env.data.get("group"):     # a group member: start the next one or abort the rest
        from functions import groups

        groups.advance(ctx.r, ctx.queue, str(env.data["group"]), ctx.clock)


def finish(ctx: Ctx, env: Env, info: str, **fields: Any) -> Step:
    """End the current job DONE. Safe to run twice."""
    _end(ctx, env, "DONE", info, phase="done", **fields)
    ctx.event(env, "step", f"{env.op} job {env.jobid} DONE: {info}", job=env.jobid)
    return None


def fail(ctx: Ctx, env: Env, status: str, why: str, job_status: str = "FAIL") -> Step:
    """End the current job FAIL (VMs are kept: the user removes the environment). Safe to run twice."""
    _end(ctx, env, job_status, why, phase="failed", status=status, error=why)
    ctx.event(env, "error", f"{env.op} job {env.jobid} {job_status}: {why}", job=env.jobid)
    return None


def deadline_passed(ctx: Ctx, env: Env) -> bool:
    return bool(env.num("deadline")) and ctx.clock() >= env.num("deadline")


# ---------------------------------------------------------------- the step loop


def dispatch(ctx: Ctx, env: Env) -> Step:
    """Run one step of the environment's current operation."""
    from functions import steps_create, steps_scale

    if not work_pending(ctx.r, env):
        scripts.run(ctx.r, "clear_inflight", [keys.env(env.envid), keys.inflight()], [env.envid, env.jobid])
        return None
    if env.data.get("op_job") != env.jobid:
        return steps_scale.begin(ctx, env)
    handler = {"CREATE": steps_create.create_step, "SCALEUP": steps_scale.scaleup_step,
               "SCALEDOWN": steps_scale.scaledown_step, "REMOVE": steps_scale.remove_step}.get(env.op)
    if handler is None:
        return fail(ctx, env, f"{env.op}_FAIL", f"op: unknown operation {env.op!r}")
    return handler(ctx, env)


def _backoff(ctx: Ctx, env: Env, exc: Exception) -> Step:
    tries = int(env.num("retries"))
    delay = min(MAX_BACKOFF, 2.0 ** tries)
    envstore.update_env(ctx.r, env.envid, retries=tries + 1, info=f"OpenNebula unreachable, retrying in {delay:.0f}s")
    ctx.event(env, "error", f"OpenNebula unreachable ({exc}), retrying in {delay:.0f}s")
    return delay


def run_steps(ctx: Ctx, envid: str) -> tuple[Step, str]:
    """Steps until the operation waits or ends (bounded). Caller holds the env lock."""
    started = time.monotonic()
    for _ in range(MAX_STEPS):
        env = load(ctx.r, envid)
        if env is None:                  # removed: end the job still holding its guard (a racing remove)
            envstore.finish_vanished(ctx.r, envid, ctx.clock)
            return None, "gone"
        try:
            nxt = dispatch(ctx, env)
        except OneUnavailable as exc:
            return _backoff(ctx, env, exc), "retry"
        if env.num("retries"):
            envstore.update_env(ctx.r, envid, retries=0)
        if nxt is None:
            return None, "idle"
        if nxt > 0 or time.monotonic() - started > MAX_SECONDS:
            return nxt, "wait"
    return 0.0, "more"


def held_lock(r: redis.Redis, envid: str) -> AbstractContextManager[bool]:
    """The environment lock: envstore.env_lock (owner token, short TTL renewed while held)."""
    return envstore.env_lock(r, envid)


def step(ctx: Ctx, envid: str) -> str:
    """Drive the environment as far as it can go now, then schedule the next drive if needed.

    Takes the env lock (busy: retry shortly). Unexpected errors are recorded as events and retried with
    backoff, never lost. Safe to run any number of times, concurrently.
    """
    with held_lock(ctx.r, envid) as got:
        if not got:
            lifecycle.kick(ctx.queue, envid, BUSY_RETRY)
            return "busy"
        try:
            nxt, result = run_steps(ctx, envid)
        except Exception as exc:  # noqa: BLE001 - a bug must not lose the environment
            log.exception("env %s: step crashed", envid)
            env = load(ctx.r, envid)
            if env is None:
                return "gone"
            ctx.event(env, "error", f"internal error: {type(exc).__name__}: {exc}")
            nxt, result = _backoff_internal(ctx, env), "error"
    if nxt is not None:
        lifecycle.kick(ctx.queue, envid, nxt)
    return result


def _backoff_internal(ctx: Ctx, env: Env) -> float:
    tries = int(env.num("retries"))
    envstore.update_env(ctx.r, env.envid, retries=tries + 1)
    return min(60.0, 2.0 ** tries)


def run_drive(envid: str) -> str:
    """RQ entry (via lifecycle.drive): connect from the environment's settings and step the environment."""
    from rq import get_current_job

    from functions.runtime import connect

    settings = Settings.from_env()
    rt = connect(settings)
    job = get_current_job()
    lifecycle.clear_kick(rt.raw, envid, job.id if job is not None else None)
    return step(Ctx(r=rt.text, queue=rt.queue, settings=settings), envid)
