"""Bearer-token authentication for every route, in one Falcon middleware.

`Authorization: Bearer <token>` names either a service (req.context.service = its name) or the admin
(req.context.admin = True). Resources with `auth_exempt = True` (health, the context repo, VM callbacks)
skip the check and see service None, admin False.
"""

from __future__ import annotations

from typing import Any

import falcon

from config import logs
from functions.store import tenants
from handlers.deps import Deps

MAX_TOKEN_LEN = 256


def _unauthorized(description: str) -> falcon.HTTPUnauthorized:
    return falcon.HTTPUnauthorized(title="Authentication required", description=description, challenges=["Bearer"])


def bearer_token(req: falcon.Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None when absent or not of that form."""
    header = req.get_header("Authorization") or ""
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LEN:
        return None
    return token


class AuthMiddleware:
    """Sets req.context.service / req.context.admin, or answers 401. Read-only on Redis."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        logs.clear()      # log lines of this request carry its own service/envid/jobid only

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any, params: dict) -> None:
        req.context.service = None
        req.context.admin = False
        logs.bind(envid=params.get("envid"), jobid=params.get("jobid"))
        if resource is None or getattr(resource, "auth_exempt", False):
            return
        if not req.get_header("Authorization"):
            raise _unauthorized("send the header `Authorization: Bearer <token>` (your service token)")
        token = bearer_token(req)
        if token is None:
            raise _unauthorized("the Authorization header must be `Bearer <token>`")
        if tenants.is_admin(self.deps.redis, token):
            req.context.admin = True
            return
        service = tenants.service_for_token(self.deps.redis, token)
        if service is None:
            raise _unauthorized("the token is not valid (unknown, rotated, or its service was removed)")
        req.context.service = service
        logs.bind(service=service)


def require_service(req: falcon.Request) -> str:
    """The calling service's name; 403 for the admin token, which belongs to no service."""
    service = getattr(req.context, "service", None)
    if not service:
        raise falcon.HTTPForbidden(title="Service token required",
                                   description="this route acts on one service: use that service's token")
    return service


def require_admin(req: falcon.Request) -> None:
    """Nothing for the admin token; 403 for a service token."""
    if not getattr(req.context, "admin", False):
        raise falcon.HTTPForbidden(title="Admin token required",
                                   description="this route needs the admin token ($CARINA_HOME/admin.token)")
