"""functions.tasks: jobs queued under the RQ names used before functions/ had subpackages still run after
the upgrade (store.runtime.RENAMED_TASKS), on a real RQ worker against real Redis."""

from __future__ import annotations

import pytest
import redis
from rq import SimpleWorker
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from functions import tasks
from functions.store import envstore
from functions.store.runtime import RENAMED_TASKS, JsonJob, JsonQueue
from tests.harness import twin, url_of


def _queue(rdb: redis.Redis) -> JsonQueue:
    return JsonQueue("carina", connection=twin(rdb))


def test_every_renamed_task_points_at_a_task() -> None:
    for new in RENAMED_TASKS.values():
        assert callable(getattr(tasks, new.rpartition(".")[2]))


def test_jobs_queued_under_the_old_names_still_run(rdb: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", url_of(rdb))
    q = _queue(rdb)
    envid, _ = envstore.create_env(rdb, "svc", "web", {"name": "web"}, "CREATE", lambda: 1000.0)
    envstore.delete_env(rdb, envid, lambda: 1001.0)            # a drive of a removed env answers "gone"
    old_drive = q.enqueue("functions.lifecycle.drive", envid)
    old_tick = q.enqueue("functions.ticks.minute_tick")
    SimpleWorker([q], connection=q.connection, serializer=JSONSerializer, job_class=JsonJob).work(burst=True)
    for job, expected in ((old_drive, "gone"), (old_tick, "done")):
        job = JsonJob.fetch(job.id, connection=q.connection)
        assert job.get_status() == JobStatus.FINISHED, job.exc_info
        assert str(job.return_value()).startswith(expected)
