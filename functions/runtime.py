"""Connections shared by the gateway, the worker and the scheduler: Redis and the RQ queue.

Two Redis clients: `text` (decode_responses=True) for Carina's own keys, `raw` (bytes) for RQ,
which must never get a decoding client.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from config.settings import Settings


class JsonJob(Job):
    """An RQ job that always uses the JSON serializer (no pickle in Redis). Used by rqscheduler -j."""

    def __init__(self, id: str | None = None, connection: redis.Redis | None = None, serializer: object = None):
        super().__init__(id=id, connection=connection, serializer=JSONSerializer)


class JsonQueue(Queue):
    """An RQ queue whose jobs use the JSON serializer. Used by rqscheduler -q."""

    job_class = JsonJob

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs["serializer"] = JSONSerializer
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


@dataclass
class Runtime:
    """Live connections for one process."""

    settings: Settings
    text: redis.Redis
    raw: redis.Redis
    queue: Queue


def connect(settings: Settings) -> Runtime:
    """Open the Redis clients and the queue described by `settings`. No I/O happens until first use."""
    text = redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=10)
    raw = redis.Redis.from_url(settings.redis_url, socket_timeout=30)
    queue = JsonQueue(settings.queue_name, connection=raw)
    return Runtime(settings=settings, text=text, raw=raw, queue=queue)
