"""`GET /repo/{service}/context/{file}`: the context repo VMs fetch with wget (no token, as in the original).

Public on purpose: a VM fetches its context files at boot, before it could prove anything, so **context files
are not secret** (anyone who can reach the gateway and knows a service name can read them; secrets belong in
VM templates' CONTEXT, which Carina never serves). Served: the service's uploaded context files and
`authorized_keys` (the controller's public key), nothing else: no .vm template, no configuration, no listing.
Every other request (unknown service, unknown file, malformed name) gets one and the same 404 body, which
echoes nothing of the request and does not tell an unknown service from an unknown file.
"""

from __future__ import annotations

import falcon

from functions import errors
from functions.store import tenants
from handlers.deps import Deps

NOT_FOUND = "no such context file"


def _missing() -> falcon.HTTPNotFound:
    return falcon.HTTPNotFound(title="Not found", description=NOT_FOUND)


class ContextFile:
    auth_exempt = True

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response, service: str, filename: str) -> None:
        r = self.deps.redis
        if not tenants.NAME_RE.fullmatch(service) or not tenants.FILE_RE.fullmatch(filename):
            raise _missing()
        if filename == "authorized_keys":
            try:
                _, public = tenants.service_keypair(r, service)
            except errors.NotFound:
                raise _missing() from None
            resp.content_type = falcon.MEDIA_TEXT
            resp.text = public + "\n"
            return
        data = tenants.get_context_file(r, service, filename)
        if data is None:
            raise _missing()
        resp.content_type = "application/octet-stream"
        resp.data = data


def add_routes(app: falcon.App, deps: Deps) -> None:
    """Register GET /repo/{service}/context/{filename}."""
    app.add_route("/repo/{service}/context/{filename}", ContextFile(deps))
