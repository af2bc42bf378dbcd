"""Service (tenant) administration: create, list, remove, rotate a token.

Admin token only, except `GET /services`, where a service token sees its own row (the --services table).
Rows (functions.ops.gsadmin.service_docs) carry the original global scheduler's keys (priclass, maxcpus,
maxmemory, vcpusallocated, memallocated, zone, client) and the ones this gateway answered before (class,
mem_alloc, mem_max, vcpus_alloc, vcpus_max): with a global configuration in force, a service listed in its
SERVICES shows that entry's class and maxima and what its ALLOCATED requests hold.
"""

from __future__ import annotations

import logging

import falcon

from functions.errors import Invalid
from functions.gs import views as gsviews
from functions.ops import gsadmin
from functions.store import tenants
from functions.views import tables
from handlers.auth import require_admin
from handlers.deps import Deps

log = logging.getLogger("carina.gateway")

SERVICE_FIELDS = ("name", "class", "max_memory", "max_vcpus")


def services_table(rows: list[dict]) -> str:
    """The --services table (`NAME PRIORITY_CLASS MEM(ALLOC/MAX) VCPUS(ALLOC/MAX) CLIENT`)."""
    return gsviews.services_table(rows)


def _service_body(req: falcon.Request) -> dict:
    """The JSON object of POST /services, every key checked (400 naming the field)."""
    body = req.get_media()
    if not isinstance(body, dict):
        raise falcon.HTTPBadRequest(title="Invalid request", description="body: must be a JSON object")
    for key in body:
        if key not in SERVICE_FIELDS:
            raise falcon.HTTPBadRequest(title="Invalid request",
                                        description=f"{key}: unknown field; expected {', '.join(SERVICE_FIELDS)}")
    return body


class Services:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Create a service; answers its token once (201). Not repeatable: the same name again is 409."""
        require_admin(req)
        body = _service_body(req)
        name, cls = body.get("name"), body.get("class", "silver")
        tenants.check_class(cls)
        problems = gsadmin.check_new_service(self.deps.redis, str(name), str(cls))
        if problems:
            raise Invalid("; ".join(problems), "class")
        token = tenants.add_service(self.deps.redis, name, cls, clock=self.deps.clock,  # type: ignore[arg-type]
                                    max_memory=body.get("max_memory", 0), max_vcpus=body.get("max_vcpus", 0))
        log.info("service %s created (class %s)", name, cls)
        resp.status = falcon.HTTP_201
        resp.media = {"name": name, "class": cls, "token": token}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """All services for the admin; only itself for a service token."""
        r = self.deps.redis
        rows = gsadmin.service_docs(r, None if req.context.admin else req.context.service)
        if tables.wants_text(req.accept):
            resp.content_type = falcon.MEDIA_TEXT
            resp.text = services_table(rows)
        else:
            resp.media = rows


class Service:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        """One service's row: admin, or the service itself (others get 404)."""
        record = tenants.get_service(self.deps.redis, name)
        if record is None or not (req.context.admin or req.context.service == name):
            raise falcon.HTTPNotFound(title="Not found", description=f"name: no service {name!r}")
        resp.media = gsadmin.service_docs(self.deps.redis, name)[0]

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        """Remove a service and its keys; 409 while it has environments, 404 the second time."""
        require_admin(req)
        tenants.remove_service(self.deps.redis, name)
        log.info("service %s removed", name)
        resp.media = {"name": name, "status": "removed"}


class ServiceToken:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        """Rotate the service's token: the old one stops working at once. Each call rotates again."""
        require_admin(req)
        token = tenants.rotate_token(self.deps.redis, name)
        log.info("service %s: token rotated", name)
        resp.media = {"name": name, "token": token}


def add_routes(app: falcon.App, deps: Deps) -> None:
    """Register /services, /services/{name}, /services/{name}/token."""
    app.add_route("/services", Services(deps))
    app.add_route("/services/{name}", Service(deps))
    app.add_route("/services/{name}/token", ServiceToken(deps))
