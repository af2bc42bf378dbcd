"""Minute tick dedupe, scheduler registration, recovery kicks (real redis-server, real RQ and rq-scheduler)."""

from __future__ import annotations

import json
import zlib

import redis
from rq.serializers import JSONSerializer

from functions import schedule
from functions.engine import kick as lifecycle
from functions.model.clock import FakeClock
from functions.store import envstore, keys, runtime
from functions.store.runtime import JsonJob, JsonQueue
from functions.upkeep import reconcile, ticks
from tests.harness import twin


def _raw(rdb: redis.Redis) -> redis.Redis:
    return twin(rdb)


def test_minute_claim_once_per_minute(rdb: redis.Redis) -> None:
    clock = FakeClock(1_790_000_040.0)
    assert ticks.claim_minute(rdb, "minute", clock()) is True
    assert ticks.claim_minute(rdb, "minute", clock() + 10) is False      # same minute, another scheduler
    assert ticks.claim_minute(rdb, "minute", clock() + 60) is True       # next minute
    assert 0 < rdb.ttl(keys.tick("minute", int(clock() // 60))) <= ticks.TICK_TTL


def test_tick_kicks_inflight_envs_once_per_minute(rdb: redis.Redis) -> None:
    q = JsonQueue("carina", connection=_raw(rdb))
    clock = FakeClock(1_790_000_000.0)
    envid, _ = envstore.create_env(rdb, "svc", "tomcat", {"endpoint": "onesim"}, "CREATE", clock)
    stats = ticks.tick(rdb, q, clock)
    assert stats is not None and stats["kicked"] == 1
    assert [q.fetch_job(j).args for j in q.job_ids] == [[envid]]
    assert ticks.tick(rdb, q, clock) is None                             # deduplicated
    assert len(q.job_ids) == 1


def test_recover_all_forces_a_kick_even_if_one_is_marked_pending(rdb: redis.Redis) -> None:
    q = JsonQueue("carina", connection=_raw(rdb))
    clock = FakeClock()
    envid, _ = envstore.create_env(rdb, "svc", "tomcat", {}, "CREATE", clock)
    assert lifecycle.kick(q, envid)
    q.empty()                                                            # the queued job got lost
    assert lifecycle.kick(q, envid) is False                             # dedupe believes it is queued
    assert reconcile.recover_all(rdb, q) == [envid]
    assert len(q.job_ids) == 1


def test_scheduler_registers_once_and_enqueues_a_json_tick(rdb: redis.Redis) -> None:
    raw = _raw(rdb)
    q = JsonQueue("carina", connection=raw)
    sched = schedule.scheduler_for(raw, q, interval=1)
    assert schedule.register(sched) is True
    assert schedule.register(schedule.scheduler_for(raw, q, interval=1)) is False   # second scheduler
    assert [j.id for j in sched.get_jobs()] == [schedule.TICK_ID]
    sched.enqueue_jobs()
    high = runtime.sibling(q, runtime.HIGH)                             # the tick never waits behind drives
    assert q.job_ids == [] and high.job_ids == [schedule.TICK_ID]
    job = JsonJob.fetch(schedule.TICK_ID, connection=raw)
    assert job.func_name == schedule.TICK_FUNC
    assert job.serializer is JSONSerializer or job.serializer == JSONSerializer
    data = zlib.decompress(raw.hget(f"rq:job:{schedule.TICK_ID}", "data"))
    assert json.loads(data)[0] == schedule.TICK_FUNC                    # JSON, not pickle
