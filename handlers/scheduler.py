"""The global scheduler's routes: the admin's global configuration (`POST /global?kind=rb|yaml` with the file as
the raw body, `GET /global`; carina-admin writes the same through functions.ops.gsadmin), the shared pools
(`GET /pools`, the --pools table) and the requests (`GET /requests`, the --requests table: a service sees its
own, the admin all of them).
"""

from __future__ import annotations

import logging

import falcon

from functions.conf.schema import ConfigError
from functions.gs import views as gsviews
from functions.ops import gsadmin
from functions.views import tables
from handlers.auth import require_admin
from handlers.configs import invalid_config, read_body
from handlers.deps import Deps

log = logging.getLogger("carina.gateway")


def _kind(req: falcon.Request) -> str:
    """`?kind=` (rb or yaml); 400 naming the parameter."""
    kind = req.get_param("kind")
    if kind not in gsadmin.KINDS:
        raise falcon.HTTPBadRequest(title="Invalid parameter", description="kind: must be rb or yaml")
    return str(kind)


class Global:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The global configuration in force (admin): kind, uploaded_at, source, SHAREDPOOLS, SERVICES; 404 if none."""
        require_admin(req)
        doc = gsadmin.global_doc(self.deps.redis)
        if doc is None:
            raise falcon.HTTPNotFound(title="Not found", description="global: no global configuration uploaded")
        resp.media = doc

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Replace the global configuration (admin) when valid; 422 listing every problem, nothing changed."""
        require_admin(req)
        kind = _kind(req)
        body = read_body(req)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise falcon.HTTPBadRequest(title="Invalid upload", description="upload: not UTF-8 text") from None
        try:
            conf = gsadmin.upload_global(self.deps.redis, text, kind, self.deps.clock)
        except ConfigError as exc:
            log.info("global configuration refused with %d error(s)", len(exc.errors))
            invalid_config(resp, f"global.{kind}", list(exc.errors))
            return
        pools, services = len(conf["SHAREDPOOLS"]), len(conf["SERVICES"])
        log.info("global configuration accepted (%d pools, %d services)", pools, services)
        if tables.wants_text(req.accept):
            resp.content_type = falcon.MEDIA_TEXT
            resp.text = f"OK ({pools} pools, {services} services)\n"
        else:
            resp.media = {"status": "OK", "pools": pools, "services": services}


class Pools:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Every shared pool with its free capacity (any token); [] without a global configuration."""
        docs = gsadmin.pool_docs(self.deps.redis)
        if tables.wants_text(req.accept):
            resp.content_type = falcon.MEDIA_TEXT
            resp.text = gsviews.pools_table(docs)
        else:
            resp.media = docs


class Requests:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The global scheduler's requests: the caller's own (service token) or all (admin)."""
        service = None if req.context.admin else req.context.service
        docs = gsadmin.request_docs(self.deps.redis, service)
        if tables.wants_text(req.accept):
            resp.content_type = falcon.MEDIA_TEXT
            resp.text = gsviews.requests_table(docs)
        else:
            resp.media = docs


def add_routes(app: falcon.App, deps: Deps) -> None:
    """Register /global, /pools, /requests."""
    app.add_route("/global", Global(deps))
    app.add_route("/pools", Pools(deps))
    app.add_route("/requests", Requests(deps))
