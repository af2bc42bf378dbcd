"""Restart-safety fixes, each on a real redis-server (and real processes where a crash matters):
one env lock with a short renewed TTL, callback retries pumped by every worker, the remove/delete race,
retention of jobs and events, and one tick's work per minute however many callers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from config.settings import Settings
from functions.engine import loop as engine
from functions.model.clock import FakeClock
from functions.ops import callbacks, operations
from functions.store import envstore, keys, runtime, scripts, tenants
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
    code = ("import os, sys, time, redis\nfrom functions.store import envstore\n"
            "r = redis.Redis.from_url(os.environ['REDIS_URL'], decode_responses=True)\n"
            f"with envstore.env_lock(r, {envid!r}{arg}) as got:\n"
            "    print('held' if got else 'busy', flush=True)\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=project_env(REDIS_URL=url_of(rdb)),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


# ---------------------------------------------------------------- 1. one env lock, short TTL renewed while held


def test_a_killed_lock_holder_frees_the_env_within_the_short_ttl(rdb: redis.Redis) -> None:
    holder = _holder(rdb, "1", ttl=None)
    try:
        assert 0 < rdb.pttl(keys.env_lock("1")) <= envstore.LOCK_TTL * 1000 <= 20_000   # not 120 s any more
        with envstore.env_lock(rdb, "1") as got:
            assert not got
    finally:
        holder.kill()
        holder.wait(5)
    quick = _holder(rdb, "2", ttl=1)
    os.kill(quick.pid, signal.SIGKILL)                       # crash while holding: nobody releases it
    quick.wait(5)
    wait_for(lambda: rdb.get(keys.env_lock("2")) is None, 3.0, "the dead holder's lock to expire")
    with envstore.env_lock(rdb, "2") as got:
        assert got


def test_the_lock_is_renewed_while_held_and_released_by_its_owner_only(rdb: redis.Redis) -> None:
    with envstore.env_lock(rdb, "3", ttl=1) as got:
        assert got
        token = rdb.get(keys.env_lock("3"))
        time.sleep(1.6)                                      # longer than the TTL: the keeper renewed it
        assert rdb.get(keys.env_lock("3")) == token
        with envstore.env_lock(rdb, "3") as second:
            assert not second                                # and a failed attempt does not release it
        assert rdb.get(keys.env_lock("3")) == token
    assert rdb.get(keys.env_lock("3")) is None


def test_the_engine_uses_the_same_lock(rdb: redis.Redis) -> None:
    ctx = engine.Ctx(r=rdb, queue=_queue(rdb), settings=Settings())
    with envstore.env_lock(rdb, "4") as got:
        assert got and engine.step(ctx, "4") == "busy"
    with engine.held_lock(rdb, "4") as got:
        assert got and 0 < rdb.pttl(keys.env_lock("4")) <= envstore.LOCK_TTL * 1000
        with envstore.env_lock(rdb, "4") as other:
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
    with envstore.env_lock(rdb, envid):
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
    assert envstore.current_op(rdb, envid) is None and envid not in envstore.inflight(rdb)


def test_a_deletion_right_after_a_remove_was_recorded_ends_that_remove_done(rdb: redis.Redis) -> None:
    clock = FakeClock(T0)
    q = _queue(rdb)
    envid, first = envstore.create_env(rdb, "svc", "tomcat", {"endpoint": "onesim"}, "REMOVE", clock)
    envstore.finish_job(rdb, first, "DONE", clock, "environment removed")
    second = operations.request_remove(rdb, q, "svc", envid, clock)[0]     # recorded, guarded, in flight
    assert envstore.current_op(rdb, envid) == second
    envstore.delete_env(rdb, envid, clock)                                    # the earlier remove deletes
    ctx = engine.Ctx(r=rdb, queue=q, settings=Settings(), clock=clock)
    assert engine.step(ctx, envid) == "gone"
    assert envstore.get_job(rdb, second)["status"] == "DONE"
    assert envstore.current_op(rdb, envid) is None and envid not in envstore.inflight(rdb)


def test_a_drive_of_a_vanished_env_finishes_the_job_holding_its_guard(rdb: redis.Redis) -> None:
    clock = FakeClock(T0)
    q = _queue(rdb)
    envid, create = envstore.create_env(rdb, "svc", "tomcat", {"endpoint": "onesim"}, "CREATE", clock)
    envstore.delete_env(rdb, envid)                      # deleted behind the lifecycle's back (no clock)
    remove = envstore.new_job(rdb, "svc", envid, "tomcat", "REMOVE", clock)
    envstore.take_over_op(rdb, envid, remove)            # a remove took the guard after the deletion
    envstore.mark_inflight(rdb, envid)
    ctx = engine.Ctx(r=rdb, queue=q, settings=Settings(), clock=clock)
    assert engine.step(ctx, envid) == "gone"
    assert envstore.get_job(rdb, remove)["status"] == "DONE"
    assert envstore.current_op(rdb, envid) is None and envstore.inflight(rdb) == []
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


def test_ticks_from_several_processes_in_one_minute_do_the_work_once(rdb: redis.Redis) -> None:
    code = ("import os, sys, redis\nfrom functions.upkeep import ticks\nfrom functions.model.clock import FakeClock\n"
            "from functions.store.runtime import JsonQueue\n"
            "r = redis.Redis.from_url(os.environ['REDIS_URL'], decode_responses=True)\n"
            "q = JsonQueue('carina', connection=redis.Redis.from_url(os.environ['REDIS_URL']))\n"
            "sys.stdin.readline()\n"
            f"print('done' if ticks.tick(r, q, FakeClock({T0} + float(sys.argv[1]))) else 'skipped')\n")
    envid, _ = envstore.create_env(rdb, "svc", "tomcat", {"endpoint": "onesim"}, "CREATE", FakeClock(T0))
    offsets = [0, 5, 30, 59, 59.9]                                   # all in the same minute
    procs = [subprocess.Popen([sys.executable, "-c", code, str(o)], env=project_env(REDIS_URL=url_of(rdb)),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for o in offsets]
    outs = [p.communicate("go\n", timeout=60)[0].strip() for p in procs]   # released together
    assert sorted(outs) == ["done"] + ["skipped"] * (len(offsets) - 1)
    q = _queue(rdb)
    assert [q.fetch_job(j).args for j in q.job_ids] == [[envid]]          # one recovery kick, not five
