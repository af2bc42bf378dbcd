"""`GET /repo/{service}/context/{file}`: the context repo VMs fetch with wget (no token, as in the original).

Serves the service's uploaded context files, and `authorized_keys` = the service's controller public key.
Anything unknown, including malformed names, answers 404.
"""

from __future__ import annotations

import falcon

from functions import errors
from functions.store import tenants
from handlers.deps import Deps


def _missing(filename: str) -> falcon.HTTPNotFound:
    return falcon.HTTPNotFound(title="Not found", description=f"no context file {filename!r} for this service")


class ContextFile:
    auth_exempt = True

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response, service: str, filename: str) -> None:
        r = self.deps.redis
        if not tenants.NAME_RE.fullmatch(service) or not tenants.FILE_RE.fullmatch(filename):
            raise _missing(filename)
        if filename == "authorized_keys":
            try:
                _, public = tenants.service_keypair(r, service)
            except errors.NotFound:
                raise _missing(filename) from None
            resp.content_type = falcon.MEDIA_TEXT
            resp.text = public + "\n"
            return
        data = tenants.get_context_file(r, service, filename)
        if data is None:
            raise _missing(filename)
        resp.content_type = "application/octet-stream"
        resp.data = data


def add_routes(app: falcon.App, deps: Deps) -> None:
    """Register GET /repo/{service}/context/{filename}."""
    app.add_route("/repo/{service}/context/{filename}", ContextFile(deps))
