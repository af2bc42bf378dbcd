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
from functions.engine import watch as watcher
from functions.engine.context import CapacityHook, Ctx, EndHook
from functions.model.clock import system_clock
from functions.ops import callbacks, cbinbox, groups, gsched
from functions.store import envstore, gsstore
from functions.store.runtime import Runtime, connect
from functions.upkeep import ticks

END_HOOKS: tuple[EndHook, ...] = (groups.after_job, gsched.after_job)
CAPACITY: CapacityHook = gsched.capacity

_RUNTIMES: dict[tuple[str, str], Runtime] = {}


def runtime() -> Runtime:
    """This process's connections for the environment's settings, made once and reused by every job a
    non-forking worker runs (a forked job makes its own, as before)."""
    settings = Settings.from_env()
    key = (settings.redis_url, settings.queue_name)
    rt = _RUNTIMES.get(key)
    if rt is None or rt.settings != settings:
        rt = _RUNTIMES[key] = connect(settings)
    return rt


def engine_ctx(rt: Runtime, **overrides: object) -> Ctx:
    """The engine context for `rt`, with every hook wired (tests override the clock, OpenNebula, SSH)."""
    return Ctx(r=rt.text, queue=rt.queue, settings=rt.settings, on_end=END_HOOKS,  # type: ignore[arg-type]
               capacity=CAPACITY, **overrides)


def drive(envid: str) -> str:
    """Run the environment's lifecycle as far as it goes now (functions.engine.loop.step). Safe to run twice."""
    rt = runtime()
    job = get_current_job()
    kick.clear_kick(rt.raw, str(envid), job.id if job is not None else None)
    env = envstore.get_env(rt.text, str(envid)) or {}
    with logs.bound(envid=envid, service=env.get("service"), jobid=env.get("job")):   # on every log line
        return loop.step(engine_ctx(rt), str(envid))


def apply_callback(envid: str, vmid: int, kind: str, fields: dict[str, str], slot: str = "",
                   attempt: int = 0) -> str:
    """Record one accepted VM callback (functions.ops.callbacks.apply): jobs queued before callbacks went to an
    inbox per environment (drain_callbacks), and their retries. Safe to run twice."""
    rt = runtime()
    with logs.bound(envid=envid):
        return callbacks.apply(rt.text, rt.queue, str(envid), int(vmid), kind, dict(fields), system_clock,
                               slot or None, int(attempt))


def drain_callbacks(envid: str) -> str:
    """Apply the callbacks waiting in the environment's inbox, in order (functions.ops.cbinbox.drain). Safe to run
    twice."""
    rt = runtime()
    with logs.bound(envid=envid):
        return cbinbox.drain(rt.text, rt.queue, str(envid), system_clock)


def gs_allocate() -> str:
    """One pass of the global scheduler (functions.ops.gsched.allocate_now), queued when a request arrives.
    Safe to run twice."""
    rt = runtime()
    gsstore.clear_alloc_job(rt.text)
    return str(gsched.allocate_now(rt.text, rt.queue, system_clock))


def minute_tick() -> str:
    """The per-minute upkeep (functions.upkeep.ticks.tick); acts once per minute however often it runs."""
    rt = runtime()
    started = time.monotonic()
    stats = ticks.tick(rt.text, rt.queue, retention=rt.settings.job_retention, grace=rt.settings.boot_grace)
    if stats is not None:
        metrics.tick(time.monotonic() - started)
    return "skipped (this minute already ran)" if stats is None else f"done: {stats}"


def watch() -> str:
    """One pass of the watcher (functions.engine.watch.run): one OpenNebula call per endpoint for every
    environment waiting on its VMs, kicking those whose VMs changed. Safe to run twice."""
    rt = runtime()
    stats = watcher.run(rt.text, rt.queue)
    return "skipped (another pass runs)" if stats is None else f"done: {stats}"
