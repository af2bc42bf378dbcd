"""JSON error bodies for every failure: `{"title": ..., "description": ...}`, never a traceback.

functions.errors.CarinaError subclasses map to one HTTP status each (the only such mapping); handlers let
them propagate."""

from __future__ import annotations

import logging

import falcon

from functions import errors

log = logging.getLogger("carina.gateway")

STATUS: list[tuple[type[errors.CarinaError], str, str]] = [   # most specific first
    (errors.NotFound, falcon.HTTP_404, "Not found"),
    (errors.Conflict, falcon.HTTP_409, "Conflict"),
    (errors.Invalid, falcon.HTTP_422, "Unprocessable request"),
    (errors.BadInput, falcon.HTTP_400, "Invalid request"),
]


def http_error(exc: errors.CarinaError) -> falcon.HTTPError:
    """The HTTP error for a refusal raised by functions/."""
    for cls, status, title in STATUS:
        if isinstance(exc, cls):
            return falcon.HTTPError(status, title=title, description=exc.message)
    return falcon.HTTPUnprocessableEntity(title="Unprocessable request", description=exc.message)


def _refused(req: falcon.Request, resp: falcon.Response, ex: errors.CarinaError, params: dict) -> None:
    raise http_error(ex)


def _unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict) -> None:
    log.exception("unhandled error on %s %s", req.method, req.path)
    raise falcon.HTTPInternalServerError(title="Internal error", description="see the gateway log")


def install_error_handlers(app: falcon.App) -> None:
    """Refusals answer their 4xx JSON; unexpected exceptions answer 500 JSON.

    HTTPError keeps its default JSON handler: Falcon picks the most specific registered type.
    """
    app.add_error_handler(Exception, _unexpected)
    app.add_error_handler(errors.CarinaError, _refused)
