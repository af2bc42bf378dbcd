"""Connections shared by the gateway, the worker and the scheduler: Redis and the RQ queue.

Two Redis clients: `text` (decode_responses=True) for Carina's own keys, `raw` (bytes) for RQ,
which must never get a decoding client. REDIS_URL may name a Sentinel-managed master for high availability:
`redis+sentinel://[:password@]host:port[,host:port...]/<master name>[/<db>]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import import_attribute

from config.settings import Settings

# Jobs queued before functions/ had subpackages name their function by its old path; they still run.
RENAMED_TASKS = {
    "functions.lifecycle.drive": "functions.tasks.drive",
    "functions.callbacks.apply_callback": "functions.tasks.apply_callback",
    "functions.ticks.minute_tick": "functions.tasks.minute_tick",
}


class JsonJob(Job):
    """An RQ job that always uses the JSON serializer (no pickle in Redis). Used by rqscheduler -j.

    A job naming a function by a path listed in RENAMED_TASKS runs the function at its new path."""

    def __init__(self, id: str | None = None, connection: redis.Redis | None = None, serializer: object = None):
        super().__init__(id=id, connection=connection, serializer=JSONSerializer)

    @property
    def func(self) -> Any:
        renamed = RENAMED_TASKS.get(self.func_name or "")
        return import_attribute(renamed) if renamed else super().func


class JsonQueue(Queue):
    """An RQ queue whose jobs use the JSON serializer. Used by rqscheduler -q."""

    job_class = JsonJob

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs["serializer"] = JSONSerializer
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


# The queues every worker serves, first non-empty first (RQ takes from the first queue in the list that has a
# job): periodic work (the minute tick, the watcher, policies) never waits behind callbacks, and callbacks
# never wait behind drives. Names are the settings' queue name plus a suffix.
HIGH = "high"              # periodic and short: functions.tasks.minute_tick, functions.tasks.watch
CALLBACKS = "callbacks"    # functions.tasks.apply_callback (and its retries)
LEVELS = (HIGH, CALLBACKS, "")   # "" is the base queue: functions.tasks.drive


def queue_name(base: str, level: str = "") -> str:
    """The name of the `level` queue of base queue `base` (`carina-high`, `carina-callbacks`, `carina`)."""
    return f"{base}-{level}" if level else base


def sibling(queue: Queue, level: str) -> Queue:
    """The `level` queue next to the base queue `queue` (same connection, JSON jobs). No I/O."""
    return JsonQueue(queue_name(queue.name, level), connection=queue.connection)


def worker_queues(queue: Queue) -> list[Queue]:
    """The queues a worker of base queue `queue` listens on, in priority order: high, callbacks, base."""
    return [sibling(queue, level) if level else queue for level in LEVELS]


@dataclass
class Runtime:
    """Live connections for one process. `queue` is the base queue (drives); `high` and `callbacks` the
    priority queues next to it."""

    settings: Settings
    text: redis.Redis
    raw: redis.Redis
    queue: Queue

    @property
    def high(self) -> Queue:
        return sibling(self.queue, HIGH)

    @property
    def callbacks(self) -> Queue:
        return sibling(self.queue, CALLBACKS)


SENTINEL_SCHEME = "redis+sentinel"


@dataclass(frozen=True)
class SentinelUrl:
    hosts: list[tuple[str, int]]
    master: str
    db: int
    password: str | None


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Split a `redis+sentinel://` URL; ValueError naming REDIS_URL when it is malformed."""
    parts = urlsplit(url)
    path = [p for p in parts.path.split("/") if p]
    try:
        hosts = [(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1]) if ":" in h else 26379)
                 for h in parts.netloc.rsplit("@", 1)[-1].split(",") if h]
        db = int(path[1]) if len(path) > 1 else 0
    except ValueError as exc:
        raise ValueError(f"REDIS_URL: bad sentinel address or db in {url!r}") from exc
    if not hosts or not path:
        raise ValueError("REDIS_URL: a sentinel URL needs host:port[,host:port]/<master name>[/<db>]")
    return SentinelUrl(hosts, path[0], db, unquote(parts.password) if parts.password else None)


def redis_client(url: str, *, decode: bool, timeout: float) -> redis.Redis:
    """A client for `url`: a plain redis:// (or rediss://, unix://) server, or a Sentinel-managed master."""
    if urlsplit(url).scheme != SENTINEL_SCHEME:
        return redis.Redis.from_url(url, decode_responses=decode, socket_timeout=timeout)
    s = parse_sentinel_url(url)
    kwargs: dict[str, Any] = {"db": s.db, "password": s.password, "decode_responses": decode,
                              "socket_timeout": timeout}
    return Sentinel(s.hosts, socket_timeout=2).master_for(s.master, **kwargs)


def connect(settings: Settings) -> Runtime:
    """Open the Redis clients and the queue described by `settings`. No I/O happens until first use."""
    text = redis_client(settings.redis_url, decode=True, timeout=10)
    raw = redis_client(settings.redis_url, decode=False, timeout=30)
    queue = JsonQueue(settings.queue_name, connection=raw)
    return Runtime(settings=settings, text=text, raw=raw, queue=queue)
