"""Environment routes: create from a configuration, list envs / VMs / jobs, scale, remove (events: events.py).

Every route needs a service token and sees only that service's objects (another service's env is a 404).
Handlers validate, authorize, call functions.ops.operations and answer; lists are JSON, or the original CLI
table when the request prefers `text/plain`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import falcon

from functions.ops import gsadmin, operations
from functions.store import envstore
from functions.views import shapes as views
from functions.views.tables import render_table, wants_text
from handlers.auth import require_service
from handlers.deps import Deps

ID_RE = re.compile(r"[0-9]{1,18}")
GROUP_RE = re.compile(r"-?[0-9]{1,18}")
NAME_MAX = 128


def check_id(value: str, field: str = "envid", group: bool = False) -> str:
    """`value` if it is an id (digits; `-digits` too when `group`), else 400 naming `field`."""
    if not (GROUP_RE if group else ID_RE).fullmatch(value or ""):
        hint = "digits, or -digits for a group" if group else "digits"
        raise falcon.HTTPBadRequest(title="Invalid parameter", description=f"{field}: must be {hint}")
    return value


def answer_list(req: falcon.Request, resp: falcon.Response, docs: list[dict[str, Any]], headers: Sequence[str],
                row: Callable[[dict[str, Any]], list[object]]) -> None:
    """Answer `docs` as JSON, or as the CLI table when the client prefers text/plain."""
    if wants_text(req.get_header("Accept")):
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = render_table(headers, [row(d) for d in docs])
    else:
        resp.media = docs


def _vm_docs(deps: Deps, envid: str) -> list[dict[str, Any]]:
    return [views.vm_json(envid, asdict(rec)) for rec in envstore.get_vms(deps.redis, envid).values()]


def _owned_env(deps: Deps, req: falcon.Request, envid: str) -> dict[str, Any]:
    env = envstore.get_env(deps.redis, check_id(envid), require_service(req))
    if env is None:
        raise falcon.HTTPNotFound(title="Not found", description=f"envid: no environment {envid}")
    return env


class Create:
    """POST /configs/{name}: create an environment → 202 {"envid", "jobid"}."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        service = require_service(req)
        if not name or len(name) > NAME_MAX:
            raise falcon.HTTPBadRequest(title="Invalid parameter", description=f"name: 1-{NAME_MAX} characters")
        d = self.deps
        envid, jobid = operations.request_create(d.redis, d.queue, service, name, d.clock, d.settings)
        resp.status = falcon.HTTP_202
        resp.media = {"envid": envid, "jobid": jobid}


class Envs:
    """GET /envs: the service's environments."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        r = self.deps.redis
        docs = [views.env_json(env, views.count_vms(asdict(v) for v in envstore.get_vms(r, env["envid"]).values()),
                               *gsadmin.env_tokens(r, env["envid"]))
                for env in envstore.list_envs(r, require_service(req))]
        answer_list(req, resp, docs, views.ENV_HEADERS, views.env_row)


class Env:
    """DELETE /envs/{envid}: remove an environment (`-N`: the group N) → 202 {"jobid": "a,b,c"}."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_delete(self, req: falcon.Request, resp: falcon.Response, envid: str) -> None:
        service = require_service(req)
        d = self.deps
        jobids = operations.request_remove(d.redis, d.queue, service, check_id(envid, group=True), d.clock)
        resp.status = falcon.HTTP_202
        resp.media = {"jobid": ",".join(jobids)}


class EnvVms:
    """GET /envs/{envid}/vms: one environment's VMs."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response, envid: str) -> None:
        env = _owned_env(self.deps, req, envid)
        answer_list(req, resp, _vm_docs(self.deps, env["envid"]), views.VM_HEADERS, views.vm_row)


class Scale:
    """PUT /envs/{envid}/scaleup and /scaledown → 202 {"jobid"}, or 409 while another operation runs."""

    def __init__(self, deps: Deps, direction: str) -> None:
        self.deps = deps
        self.direction = direction

    def on_put(self, req: falcon.Request, resp: falcon.Response, envid: str) -> None:
        service = require_service(req)
        d = self.deps
        jobid = operations.request_scale(d.redis, d.queue, service, check_id(envid), self.direction, d.clock)
        resp.status = falcon.HTTP_202
        resp.media = {"jobid": jobid}


class Vms:
    """GET /vms: every VM of the service."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        docs: list[dict[str, Any]] = []
        for env in envstore.list_envs(self.deps.redis, require_service(req)):
            docs.extend(_vm_docs(self.deps, env["envid"]))
        answer_list(req, resp, docs, views.VM_HEADERS, views.vm_row)


class Jobs:
    """GET /jobs: the service's jobs, oldest first."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        docs = [views.job_json(j) for j in envstore.list_jobs(self.deps.redis, require_service(req))]
        answer_list(req, resp, docs, views.JOB_HEADERS, views.job_row)


def add_routes(app: falcon.App, deps: Deps) -> None:
    """Register the environment, VM and job routes."""
    app.add_route("/configs/{name}", Create(deps))
    app.add_route("/envs", Envs(deps))
    app.add_route("/envs/{envid}", Env(deps))
    app.add_route("/envs/{envid}/vms", EnvVms(deps))
    app.add_route("/envs/{envid}/scaleup", Scale(deps, "up"))
    app.add_route("/envs/{envid}/scaledown", Scale(deps, "down"))
    app.add_route("/vms", Vms(deps))
    app.add_route("/jobs", Jobs(deps))
