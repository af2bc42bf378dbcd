"""kick(): deduplicated enqueueing of drive jobs (real redis-server, real RQ queue)."""

from __future__ import annotations

import time

import redis

from functions.engine import kick as lifecycle
from functions.store import keys, scripts
from functions.store.runtime import JsonQueue
from tests.harness import twin


def _queue(rdb: redis.Redis) -> JsonQueue:
    raw = twin(rdb)
    return JsonQueue("carina", connection=raw)


def test_repeated_kicks_enqueue_one_job(rdb: redis.Redis) -> None:
    q = _queue(rdb)
    assert lifecycle.kick(q, "7") is True
    for _ in range(5):
        assert lifecycle.kick(q, "7") is False
    assert lifecycle.kick(q, "7", delay=3) is True       # delayed: recorded for the pump, no job yet
    assert len(q.job_ids) == 1
    job = q.fetch_job(q.job_ids[0])
    assert job.func_name == "functions.tasks.drive" and job.args == ["7"]


def test_kick_after_job_started_enqueues_again(rdb: redis.Redis) -> None:
    q = _queue(rdb)
    assert lifecycle.kick(q, "7")
    assert lifecycle.clear_kick(rdb, "7") is True          # the drive job started
    assert rdb.get(keys.env_kick("7")) is None
    assert lifecycle.kick(q, "7") is True                  # a wake-up during the run is not lost
    assert len(q.job_ids) == 2


def test_delayed_kicks_keep_the_earliest_due_time_and_are_pumped_once(rdb: redis.Redis) -> None:
    q = _queue(rdb)
    assert lifecycle.kick(q, "8", delay=30)
    assert lifecycle.kick(q, "8", delay=40)
    assert lifecycle.kick(q, "8", delay=20)                 # earlier wins
    due = rdb.zscore(keys.kick_schedule(), "8")
    assert q.job_ids == [] and rdb.zcard(keys.kick_schedule()) == 1
    assert lifecycle.pump(q, now=due - 1) == []             # not due yet
    assert lifecycle.pump(q, now=due + 0.1) == ["8"]
    assert lifecycle.pump(q, now=due + 0.2) == []           # taken once
    assert len(q.job_ids) == 1 and q.fetch_job(q.job_ids[0]).args == ["8"]


def test_kicks_of_different_envs_are_independent(rdb: redis.Redis) -> None:
    q = _queue(rdb)
    assert lifecycle.kick(q, "1") and lifecycle.kick(q, "2")
    assert sorted(q.fetch_job(j).args[0] for j in q.job_ids) == ["1", "2"]
    assert rdb.ttl(keys.env_kick("1")) > 0                  # a lost job cannot block kicks forever


def test_a_job_clears_its_own_mark_only(rdb: redis.Redis) -> None:
    q = _queue(rdb)
    rdb.set(keys.env_kick("9"), repr(time.time() + 30))    # a mark for some later job
    assert lifecycle.clear_kick(rdb, "9", "drive-9-1") is False
    assert lifecycle.kick(q, "9")                           # an earlier kick supersedes it
    assert lifecycle.clear_kick(rdb, "9", q.job_ids[0]) is True


def test_a_pumper_killed_between_taking_and_kicking_loses_no_wake_up(rdb: redis.Redis) -> None:
    """Delayed kicks are leased, not popped: one taken by a pumper that died before enqueueing is due again."""
    q = _queue(rdb)
    assert lifecycle.kick(q, "9", delay=5)
    due = rdb.zscore(keys.kick_schedule(), "9")
    taken = scripts.run(q.connection, "lease_due", [keys.kick_schedule()],     # what pump does first ...
                        [repr(due + 0.1), "10", repr(lifecycle.KICK_LEASE)])
    assert taken == [b"9"] and q.job_ids == []                                # ... then the pumper dies
    assert lifecycle.pump(q, now=due + 1) == []                               # leased: nobody doubles it
    assert lifecycle.pump(q, now=due + 0.1 + lifecycle.KICK_LEASE) == ["9"]   # due again after the lease
    assert len(q.job_ids) == 1 and rdb.zcard(keys.kick_schedule()) == 0


def test_a_kick_rescheduled_while_leased_is_kept(rdb: redis.Redis) -> None:
    q = _queue(rdb)
    assert lifecycle.kick(q, "10", delay=5)
    due = rdb.zscore(keys.kick_schedule(), "10")
    scripts.run(q.connection, "lease_due", [keys.kick_schedule()], [repr(due), "10", repr(lifecycle.KICK_LEASE)])
    assert lifecycle.kick(q, "10", delay=1)                                   # an earlier wake-up meanwhile
    assert scripts.run(q.connection, "zrem_if_score", [keys.kick_schedule()],
                       ["10", repr(due + lifecycle.KICK_LEASE)]) == 0         # the old lease can't remove it
    assert rdb.zcard(keys.kick_schedule()) == 1


def test_kick_many_queues_one_drive_per_env_not_already_kicked(rdb: redis.Redis) -> None:
    q = _queue(rdb)
    assert lifecycle.kick(q, "7") is True                                   # a drive of 7 already waits
    assert lifecycle.kick_many(q, ["7", "8", "9", "8"]) == ["8", "9"]       # once each, 7 not again
    assert lifecycle.kick_many(q, ["8", "9"]) == []                         # repeated: nothing more
    assert sorted(q.fetch_job(j).args[0] for j in q.job_ids) == ["7", "8", "9"]
    job = q.fetch_job(next(j for j in q.job_ids if j.startswith("drive-8-")))
    assert job.func_name == "functions.tasks.drive" and job.timeout == lifecycle.JOB_TIMEOUT
    assert lifecycle.clear_kick(rdb, "8", job.id) is True                   # its mark stands for this job
    assert lifecycle.kick_many(q, ["8"]) == ["8"]                           # a wake-up during the run
