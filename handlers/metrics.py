"""`GET /metrics`: Prometheus text exposition for the admin token or the scrape token (CARINA_METRICS_TOKEN).

What every process recorded (config/metrics.py: callbacks, XML-RPC calls, SSH commands, ticks), plus
gauges counted from Redis at scrape time: environments by policy status, VMs by Carina state, jobs by type
and status, and the depth of each RQ queue.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Any

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from rq import Queue

from config import metrics
from functions.store import feeds, tenants
from handlers.auth import bearer_token
from handlers.deps import Deps


class StateCollector:
    """Gauges read from Redis on each scrape (read-only)."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def collect(self) -> Iterator[Any]:
        counts = feeds.census(self.deps.redis)
        envs = GaugeMetricFamily("carina_environments", "Environments by policy status", labels=["policy_status"])
        for status, n in sorted(counts["envs"].items()):
            envs.add_metric([status], n)
        vms = GaugeMetricFamily("carina_vms", "VM records by Carina state", labels=["state"])
        for state, n in sorted(counts["vms"].items()):
            vms.add_metric([state], n)
        jobs = GaugeMetricFamily("carina_jobs", "Jobs kept, by type and status", labels=["type", "status"])
        for (typ, status), n in sorted(counts["jobs"].items()):
            jobs.add_metric([typ, status], n)
        depth = GaugeMetricFamily("carina_queue_depth", "Jobs waiting in each RQ queue", labels=["queue"])
        for name, n in self._queues():
            depth.add_metric([name], n)
        yield from (envs, vms, jobs, depth)

    def _queues(self) -> list[tuple[str, int]]:
        names = {q.name for q in Queue.all(connection=self.deps.raw)} | {self.deps.queue.name}
        return [(name, Queue(name, connection=self.deps.raw).count) for name in sorted(names)]


class Metrics:
    """GET /metrics (its own token check: the scrape token is neither a service's nor the admin's)."""

    auth_exempt = True

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def _authorize(self, req: falcon.Request) -> None:
        token = bearer_token(req)
        if token is None:
            raise falcon.HTTPUnauthorized(title="Authentication required", challenges=["Bearer"],
                                          description="send `Authorization: Bearer <admin or scrape token>`")
        scrape = self.deps.settings.metrics_token
        if scrape and hmac.compare_digest(token.encode(), scrape.encode()):
            return
        if tenants.is_admin(self.deps.redis, token):
            return
        if tenants.service_for_token(self.deps.redis, token) is not None:
            raise falcon.HTTPForbidden(title="Admin token required",
                                       description="/metrics needs the admin token or CARINA_METRICS_TOKEN")
        raise falcon.HTTPUnauthorized(title="Authentication required", challenges=["Bearer"],
                                      description="the token is not valid for /metrics")

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._authorize(req)
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(metrics.registry_for_scrape(StateCollector(self.deps)))


def add_routes(app: falcon.App, deps: Deps) -> None:
    """Register GET /metrics."""
    app.add_route("/metrics", Metrics(deps))
