"""Restart-safety fixes, each on a real redis-server (and real processes where a crash matters):
one env lock with a short renewed TTL, callback retries pumped by every worker, the remove/delete race,
retention of jobs and events, and one tick's work per minute however many callers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis

from config.settings import Settings
from functions.engine import loop as engine
from functions.model.clock import FakeClock
from functions.ops import callbacks, operations
from functions.store import envstore, guards, keys, runtime, scripts, tenants
from functions.store.envstore import VmRecord
from functions.store.runtime import JsonQueue
from functions.upkeep import ticks
from tests.harness import project_env, twin, url_of
from tests.stack import wait_for

pytestmark = pytest.mark.slow

T0 = 1_790_000_040.0   # a minute boundary (divisible by 60)


def _queue(rdb: redis.Redis) -> JsonQueue:
    return JsonQueue("carina", connection=twin(rdb))


def _holder(rdb: redis.Redis, envid: str, ttl: float | None) -> subprocess.Popen[str]:
    """A separate process that takes envid's lock (ttl None: the default) and holds it until killed."""
    arg = "" if ttl is None else f", ttl={ttl}"
    code = ("import os, sys, time, redis\nfrom functions.store import guards\n"
            "r = redis.Redis.from_url(os.environ['REDIS_URL'], decode_responses=True)\n"
            f"with guards.env_lock(r, {envid!r}{arg}) as got:\n"
            "    print('held' if got else 'busy', flush=True)\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=project_env(REDIS_URL=url_of(rdb)),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


# ---------------------------------------------------------------- 1. one env lock, short TTL renewed while held


def _pttl_samples(rdb: redis.Redis, key: str, enough: Callable[[list[int]], bool], timeout: float,
                  what: str) -> list[int]:
    """PTTL of `key` sampled every 20 ms until `enough(samples)` (-2 once the key is gone). A wait for a
    condition with a generous timeout, never a claim about elapsed time."""
    samples: list[int] = []

    def sample() -> bool:
        samples.append(int(rdb.pttl(key)))
        return enough(samples)

    wait_for(sample, timeout, what, every=0.02)
    return samples


def _renewals(samples: list[int]) -> int:
    """How often the TTL went up between two samples: each time, someone renewed the lock."""
    return sum(1 for a, b in zip(samples, samples[1:], strict=False) if a >= 0 and b > a + 50)


def test_a_killed_lock_holder_frees_the_env_within_the_short_ttl(rdb: redis.Redis) -> None:
    """A worker process holding an env lock with the default TTL renews it while alive; once it is killed -9
    nobody renews it (its TTL only falls) and the lock disappears, at most the TTL after the kill."""
    assert guards.LOCK_TTL <= 20                           # short (it was 120 s): a killed holder costs little
    key = keys.env_lock("1")
    holder = _holder(rdb, "1", ttl=None)
    try:
        with guards.env_lock(rdb, "1") as got:
            assert not got
        alive = _pttl_samples(rdb, key, lambda s: _renewals(s) >= 1 or s[-1] < 0, guards.LOCK_TTL * 3,
                              "the live holder to renew its lock")
        assert _renewals(alive) >= 1, alive
        token = rdb.get(key)
    finally:
        os.kill(holder.pid, signal.SIGKILL)                  # crash while holding: nobody releases it
        holder.wait(5)
    left = rdb.pttl(key)
    assert 0 < left <= guards.LOCK_TTL * 1000 and rdb.get(key) == token
    dead = _pttl_samples(rdb, key, lambda s: s[-1] == -2, guards.LOCK_TTL + 30, "the dead holder's lock to go")
    assert _renewals(dead) == 0 and max(dead) <= left, dead  # it ran out; it was never extended
    with guards.env_lock(rdb, "1") as got:
        assert got


def test_the_lock_is_renewed_while_held_and_released_by_its_owner_only(rdb: redis.Redis) -> None:
    """Held for more renewals than fit in one TTL (so for longer than its TTL), by the same owner throughout;
    a failed attempt by another does not release it; leaving the block does."""
    key = keys.env_lock("3")
    with guards.env_lock(rdb, "3", ttl=3) as got:
        assert got
        token = rdb.get(key)
        held = _pttl_samples(rdb, key, lambda s: _renewals(s) >= 5 or s[-1] < 0, 60, "five renewals")
        assert _renewals(held) >= 5 and min(held) > 0, held   # renewed every ttl/4, never let go
        assert rdb.get(key) == token
        with guards.env_lock(rdb, "3") as second:
            assert not second                                # and a failed attempt does not release it
        assert rdb.get(key) == token
    assert rdb.get(key) is None


def test_the_engine_uses_the_same_lock(rdb: redis.Redis) -> None:
    ctx = engine.Ctx(r=rdb, queue=_queue(rdb), settings=Settings())
    with guards.env_lock(rdb, "4") as got:
        assert got and engine.step(ctx, "4") == "busy"
    with engine.held_lock(rdb, "4") as got:
        assert got and 0 < rdb.pttl(keys.env_lock("4")) <= guards.LOCK_TTL * 1000
        with guards.env_lock(rdb, "4") as other:
            assert not other


# ---------------------------------------------------------------- 2. callback retries without RQ's scheduler


def _env_with_master(rdb: redis.Redis) -> str:
    envid, _ = envstore.create_env(rdb, "svc", "tomcat", {"endpoint": "onesim"}, "CREATE", FakeClock(T0))
    envstore.put_vm(rdb, envid, VmRecord(slot="m", role="master", index=0, endpoint="onesim", vmid=7,
                                         state="running"))
    return envid


def test_a_busy_callback_is_retried_through_the_pumped_set_not_rq_delayed_jobs(rdb: redis.Redis) -> None:
    q = _queue(rdb)
    envid = _env_with_master(rdb)
    with guards.env_lock(rdb, envid):
        assert callbacks.apply(rdb, q, envid, 7, "net", {"newip": "10.0.0.7"}, FakeClock(T0), "m") == "retry"
    cq = runtime.sibling(q, runtime.CALLBACKS)                      # callbacks are served before drives
    assert q.scheduled_job_registry.get_job_ids() == [] and q.job_ids == [] and cq.job_ids == []
    assert rdb.zcard(keys.callback_retries()) == 1
    # every worker's pump thread moves it once due (worker.start_pump, as in `python worker.py`)
    import worker

    stop = threading.Event()
    worker.start_pump(q, stop)
    try:
        wait_for(lambda: cq.job_ids, 5.0, "the retry to be pumped onto the queue")
    finally:
        stop.set()
    assert rdb.zcard(keys.callback_retries()) == 0
    job = cq.fetch_job(cq.job_ids[0])
    assert job.func_name == callbacks.APPLY and job.args == [envid, 7, "net", {"newip": "10.0.0.7"}, "m", 1]
    assert callbacks.apply(rdb, q, *job.args[:4], FakeClock(T0), "m", 1) == "applied"
    assert envstore.get_vms(rdb, envid)["m"].ip == "10.0.0.7"


def test_a_pumper_killed_after_taking_a_retry_does_not_lose_it(rdb: redis.Redis) -> None:
    q = _queue(rdb)
    callbacks.enqueue_apply(q, "5", 7, "status", {"status": "MASTER_INIT_DONE"}, "m", attempt=3)
    due = rdb.zrange(keys.callback_retries(), 0, 0, withscores=True)[0][1]
    # a pumper takes it (its lease moves the due time on) and dies before enqueueing it
    taken = scripts.run(rdb, "lease_due", [keys.callback_retries()],
                        [repr(due), "10", repr(callbacks.RETRY_LEASE)])
    cq = runtime.sibling(q, runtime.CALLBACKS)
    assert len(taken) == 1 and cq.job_ids == []
    assert callbacks.pump_retries(q, now=due + 1) == 0                  # leased to the dead pumper
    assert callbacks.pump_retries(q, now=due + callbacks.RETRY_LEASE + 1) == 1
    assert [cq.fetch_job(j).args for j in cq.job_ids] == [["5", 7, "status", {"status": "MASTER_INIT_DONE"}, "m", 3]]
    assert rdb.zcard(keys.callback_retries()) == 0


# ---------------------------------------------------------------- 3. remove racing the env's deletion


class _Interleaving(redis.Redis):
    """A real client that runs `hook` when the request takes its job id: the moment between a remove request's
    existence check and its (atomic) hand-over to the lifecycle."""

    hook: Callable[[], Any] | None = None

    def incr(self, name: Any, amount: int = 1) -> Any:
        if self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        return super().incr(name, amount)


def test_a_remove_racing_the_deletion_of_its_env_ends_done(rdb: redis.Redis) -> None:
    clock = FakeClock(T0)
    q = _queue(rdb)
    envid, first = envstore.create_env(rdb, "svc", "tomcat", {"endpoint": "onesim"}, "REMOVE", clock)
    envstore.finish_job(rdb, first, "DONE", clock, "environment removed")   # the lifecycle, just before deleting
    r = _Interleaving(connection_pool=rdb.connection_pool)
    r.hook = lambda: envstore.delete_env(rdb, envid, clock)                   # ... and deleting (remove_step)
    second = operations.request_remove(r, q, "svc", envid, clock)[0]
    assert second != first and envstore.get_env(rdb, envid) is None
    ctx = engine.Ctx(r=rdb, queue=q, settings=Settings(), clock=clock)
    assert engine.step(ctx, envid) == "gone"                                 # the kicked drive
    assert envstore.get_job(rdb, second)["status"] == "DONE"
    assert guards.current_op(rdb, envid) is None and envid not in envstore.inflight(rdb)


def test_a_deletion_right_after_a_remove_was_recorded_ends_that_remove_done(rdb: redis.Redis) -> None:
    clock = FakeClock(T0)
    q = _queue(rdb)
    envid, first = envstore.create_env(rdb, "svc", "tomcat", {"endpoint": "onesim"}, "REMOVE", clock)
    envstore.finish_job(rdb, first, "DONE", clock, "environment removed")
    second = operations.request_remove(rdb, q, "svc", envid, clock)[0]     # recorded, guarded, in flight
    assert guards.current_op(rdb, envid) == second
    envstore.delete_env(rdb, envid, clock)                                    # the earlier remove deletes
    ctx = engine.Ctx(r=rdb, queue=q, settings=Settings(), clock=clock)
    assert engine.step(ctx, envid) == "gone"
    assert envstore.get_job(rdb, second)["status"] == "DONE"
    assert guards.current_op(rdb, envid) is None and envid not in envstore.inflight(rdb)


def test_a_drive_of_a_vanished_env_finishes_the_job_holding_its_guard(rdb: redis.Redis) -> None:
    clock = FakeClock(T0)
    q = _queue(rdb)
    envid, create = envstore.create_env(rdb, "svc", "tomcat", {"endpoint": "onesim"}, "CREATE", clock)
    envstore.delete_env(rdb, envid)                      # deleted behind the lifecycle's back (no clock)
    remove = envstore.new_job(rdb, "svc", envid, "tomcat", "REMOVE", clock)
    guards.take_over_op(rdb, envid, remove)            # a remove took the guard after the deletion
    envstore.mark_inflight(rdb, envid)
    ctx = engine.Ctx(r=rdb, queue=q, settings=Settings(), clock=clock)
    assert engine.step(ctx, envid) == "gone"
    assert envstore.get_job(rdb, remove)["status"] == "DONE"
    assert guards.current_op(rdb, envid) is None and envstore.inflight(rdb) == []
    assert envstore.get_job(rdb, create)["status"] == "RUNNING"   # not the guard's holder: left alone
    assert engine.step(ctx, envid) == "gone"                     # twice: harmless
    assert envstore.get_job(rdb, remove)["status"] == "DONE"


def test_deleting_an_env_ends_a_scale_holding_its_guard_fail(rdb: redis.Redis) -> None:
    clock = FakeClock(T0)
    envid, create = envstore.create_env(rdb, "svc", "tomcat", {"endpoint": "onesim"}, "CREATE", clock)
    assert envstore.delete_env(rdb, envid, clock) == create
    assert envstore.get_job(rdb, create)["status"] == "FAIL"
    assert envstore.delete_env(rdb, envid, clock) is None


# ---------------------------------------------------------------- 4. retention and T4 (one tick per minute)


def test_the_minute_tick_trims_jobs_and_events_to_the_retention(rdb: redis.Redis) -> None:
    clock = FakeClock(T0)
    q = _queue(rdb)
    tenants.add_service(rdb, "svc", "silver")
    envid, create = envstore.create_env(rdb, "svc", "tomcat", {"endpoint": "onesim"}, "CREATE", clock)
    done = [envstore.new_job(rdb, "svc", envid, "tomcat", "SCALEUP", clock) for _ in range(5)]
    for jobid in done:
        envstore.finish_job(rdb, jobid, "DONE", clock)
    for i in range(8):
        envstore.add_event(rdb, envid, "svc", "step", f"event {i}", clock)
    stats = ticks.tick(rdb, q, clock, retention=3)
    assert stats is not None and stats["jobs_dropped"] == 2
    assert [j["jobid"] for j in envstore.list_jobs(rdb, "svc")] == [create, *done[-3:]]   # running create kept
    assert [e["msg"] for e in envstore.list_events(rdb, envid)] == ["event 5", "event 6", "event 7"]
    assert rdb.xlen(keys.service_events("svc")) == 3
    assert ticks.tick(rdb, q, clock, retention=3) is None                  # same minute: nothing more
    clock.advance(60)
    assert ticks.tick(rdb, q, clock, retention=3)["jobs_dropped"] == 0     # idempotent
    assert envstore.EVENT_MAXLEN > 0 and Settings().job_retention > 0       # capped even between ticks


TICKERS = 8             # processes ticking at once
ROUNDS = 3              # minutes each of them ticks in
BARRIER_READY, BARRIER_GO, BARRIER_DONE = "test:barrier:ready", "test:barrier:go:", "test:barrier:done:"  # test's


def test_ticks_from_several_processes_in_one_minute_do_the_work_once(rdb: redis.Redis) -> None:
    """TICKERS processes (each at another second of the same minute) are started, wait at a Redis barrier,
    and are released together by one LPUSH, ROUNDS times (one minute each): exactly one of them does each
    minute's work. A claim that is not atomic (read, then write) lets two of them through."""
    code = ("import os, sys, redis\nfrom functions.upkeep import ticks\nfrom functions.model.clock import FakeClock\n"
            "from functions.store.runtime import JsonQueue\n"
            "r = redis.Redis.from_url(os.environ['REDIS_URL'], decode_responses=True)\n"
            "q = JsonQueue('carina', connection=redis.Redis.from_url(os.environ['REDIS_URL']))\n"
            f"r.rpush({BARRIER_READY!r}, '1')\n"
            f"for k in range({ROUNDS}):\n"
            f"    assert r.blpop({BARRIER_GO!r} + str(k), timeout=60)\n"
            f"    now = {T0} + 60 * k + float(sys.argv[1])\n"
            "    print('done' if ticks.tick(r, q, FakeClock(now)) else 'skipped', flush=True)\n"
            f"    r.rpush({BARRIER_DONE!r} + str(k), '1')\n")
    envid, _ = envstore.create_env(rdb, "svc", "tomcat", {"endpoint": "onesim"}, "CREATE", FakeClock(T0))
    offsets = [59.9 * i / (TICKERS - 1) for i in range(TICKERS)]           # all in the same minute
    procs = [subprocess.Popen([sys.executable, "-c", code, str(o)], env=project_env(REDIS_URL=url_of(rdb)),
                              stdout=subprocess.PIPE, text=True) for o in offsets]
    try:
        wait_for(lambda: rdb.llen(BARRIER_READY) == TICKERS, 60, "every ticker at the barrier")
        for k in range(ROUNDS):
            rdb.lpush(BARRIER_GO + str(k), *["go"] * TICKERS)              # all released by one command
            wait_for(lambda k=k: rdb.llen(BARRIER_DONE + str(k)) == TICKERS, 60, f"every tick of minute {k}")
        outs = [p.communicate(timeout=60)[0].split() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    assert [p.returncode for p in procs] == [0] * TICKERS
    for k in range(ROUNDS):
        assert sorted(out[k] for out in outs) == ["done"] + ["skipped"] * (TICKERS - 1), f"minute {k}: {outs}"
    q = _queue(rdb)
    # the first minute's recovery queued one drive; later minutes see it still queued and add none (no pile-up)
    assert [q.fetch_job(j).args for j in q.job_ids] == [[envid]]
