"""`GET /health`: 200 only when Redis answers and at least one RQ worker of our queue is alive."""

from __future__ import annotations

import logging

import falcon
import redis
from rq import Worker
from rq.defaults import DEFAULT_WORKER_TTL

from handlers.deps import Deps

log = logging.getLogger("carina.gateway")

# A live worker refreshes its heartbeat at least every worker_ttl seconds; RQ expires its key 60 s later.
HEARTBEAT_FRESH = DEFAULT_WORKER_TTL + 60


def live_workers(deps: Deps) -> int:
    """How many workers listening on our queue have a heartbeat younger than HEARTBEAT_FRESH. Read-only."""
    now = deps.clock()
    count = 0
    for worker in Worker.all(queue=deps.queue):
        beat = worker.last_heartbeat
        if beat is None or worker.death_date is not None:
            continue
        if now - beat.timestamp() <= HEARTBEAT_FRESH:
            count += 1
    return count


class Health:
    auth_exempt = True

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            self.deps.redis.ping()
            workers = live_workers(self.deps)
        except redis.RedisError as exc:
            log.warning("health: redis unreachable: %s", type(exc).__name__)
            resp.status = falcon.HTTP_503
            resp.media = {"redis": "unreachable", "workers": 0,
                          "description": f"Redis does not answer ({type(exc).__name__})"}
            return
        resp.media = {"redis": "ok", "workers": workers}
        if workers == 0:
            resp.status = falcon.HTTP_503
            resp.media["description"] = f"no live RQ worker on queue {self.deps.queue.name!r}"


def add_routes(app: falcon.App, deps: Deps) -> None:
    """Register GET /health."""
    app.add_route("/health", Health(deps))
