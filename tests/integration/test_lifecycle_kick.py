"""kick(): deduplicated enqueueing of drive jobs (real redis-server, real RQ queue)."""

from __future__ import annotations

import redis
from rq.registry import ScheduledJobRegistry

from functions import keys, lifecycle
from functions.runtime import JsonQueue


def _queue(rdb: redis.Redis) -> JsonQueue:
    kw = rdb.connection_pool.connection_kwargs
    raw = redis.Redis(host=kw["host"], port=kw["port"], db=kw.get("db", 0))
    return JsonQueue("carina", connection=raw)


def test_repeated_kicks_enqueue_one_job(rdb: redis.Redis) -> None:
    q = _queue(rdb)
    assert lifecycle.kick(q, "7") is True
    for _ in range(5):
        assert lifecycle.kick(q, "7") is False
    assert lifecycle.kick(q, "7", delay=3) is False      # a later kick is covered by the queued one
    assert len(q.job_ids) == 1
    job = q.fetch_job(q.job_ids[0])
    assert job.func_name == "functions.lifecycle.drive" and job.args == ["7"]


def test_kick_after_job_started_enqueues_again(rdb: redis.Redis) -> None:
    q = _queue(rdb)
    assert lifecycle.kick(q, "7")
    assert lifecycle.clear_kick(rdb, "7") is True          # the drive job started
    assert rdb.get(keys.env_kick("7")) is None
    assert lifecycle.kick(q, "7") is True                  # a wake-up during the run is not lost
    assert len(q.job_ids) == 2


def test_delayed_kick_is_scheduled_and_superseded_by_an_earlier_one(rdb: redis.Redis) -> None:
    q = _queue(rdb)
    assert lifecycle.kick(q, "8", delay=30) is True
    assert lifecycle.kick(q, "8", delay=40) is False
    assert len(ScheduledJobRegistry(queue=q).get_job_ids()) == 1
    assert q.job_ids == []
    assert lifecycle.clear_kick(rdb, "8") is False          # not due yet: the mark stays
    assert lifecycle.kick(q, "8") is True                   # earlier due time wins
    assert len(q.job_ids) == 1


def test_kicks_of_different_envs_are_independent(rdb: redis.Redis) -> None:
    q = _queue(rdb)
    assert lifecycle.kick(q, "1") and lifecycle.kick(q, "2")
    assert sorted(q.fetch_job(j).args[0] for j in q.job_ids) == ["1", "2"]
    assert rdb.ttl(keys.env_kick("1")) > 0                  # a lost job cannot block kicks forever


def test_a_delayed_job_running_early_still_clears_its_own_mark(rdb: redis.Redis) -> None:
    q = _queue(rdb)
    assert lifecycle.kick(q, "9", delay=5)
    job_id = ScheduledJobRegistry(queue=q).get_job_ids()[0]
    assert lifecycle.clear_kick(rdb, "9") is False              # some other job: the mark is not due
    assert lifecycle.clear_kick(rdb, "9", job_id) is True       # its own job, even if early
    assert lifecycle.kick(q, "9", delay=1) is True              # so its next kick is not swallowed
