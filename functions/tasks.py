"""Every RQ entry point, under a stable dotted name (`functions.tasks.<name>`), so that a queued job's
function path never depends on where the code behind it lives. Each connects from the environment's
settings, builds what the function needs and calls it; nothing else happens here.

This is also where the engine's hooks are wired (`engine_ctx`): the engine calls hooks, it never imports who
reacts. Jobs queued under the names used before functions/ had subpackages still run: store.runtime.JsonJob
maps them (RENAMED_TASKS).
"""

from __future__ import annotations

import time

from rq import get_current_job

from config import logs, metrics
from config.settings import Settings
from functions.engine import kick, loop
from functions.engine.context import CapacityHook, Ctx, EndHook
from functions.model.clock import system_clock
from functions.ops import callbacks, groups, gsched
from functions.store import envstore, gsstore
from functions.store.runtime import Runtime, connect
from functions.upkeep import ticks

END_HOOKS: tuple[EndHook, ...] = (groups.after_job, gsched.after_job)
CAPACITY: CapacityHook = gsched.capacity


def engine_ctx(rt: Runtime, **overrides: object) -> Ctx:
    """The engine context for `rt`, with every hook wired (tests override the clock, OpenNebula, SSH)."""
    return Ctx(r=rt.text, queue=rt.queue, settings=rt.settings, on_end=END_HOOKS,  # type: ignore[arg-type]
               capacity=CAPACITY, **overrides)


def drive(envid: str) -> str:
    """Run the environment's lifecycle as far as it goes now (functions.engine.loop.step). Safe to run twice."""
    rt = connect(Settings.from_env())
    job = get_current_job()
    kick.clear_kick(rt.raw, str(envid), job.id if job is not None else None)
    env = envstore.get_env(rt.text, str(envid)) or {}
    with logs.bound(envid=envid, service=env.get("service"), jobid=env.get("job")):   # on every log line
        return loop.step(engine_ctx(rt), str(envid))


def apply_callback(envid: str, vmid: int, kind: str, fields: dict[str, str], slot: str = "",
                   attempt: int = 0) -> str:
    """Record one accepted VM callback (functions.ops.callbacks.apply). Safe to run twice."""
    rt = connect(Settings.from_env())
    with logs.bound(envid=envid):
        return callbacks.apply(rt.text, rt.queue, str(envid), int(vmid), kind, dict(fields), system_clock,
                               slot or None, int(attempt))


def gs_allocate() -> str:
    """One pass of the global scheduler (functions.ops.gsched.allocate_now), queued when a request arrives.
    Safe to run twice."""
    rt = connect(Settings.from_env())
    gsstore.clear_alloc_job(rt.text)
    return str(gsched.allocate_now(rt.text, rt.queue, system_clock))


def minute_tick() -> str:
    """The per-minute upkeep (functions.upkeep.ticks.tick); acts once per minute however often it runs."""
    settings = Settings.from_env()
    rt = connect(settings)
    started = time.monotonic()
    stats = ticks.tick(rt.text, rt.queue, retention=settings.job_retention, grace=settings.boot_grace)
    if stats is not None:
        metrics.tick(time.monotonic() - started)
    return "skipped (this minute already ran)" if stats is None else f"done: {stats}"
