"""JSON error bodies for every failure: `{"title": ..., "description": ...}`, never a traceback."""

from __future__ import annotations

import logging

import falcon

log = logging.getLogger("carina.gateway")


def _unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict) -> None:
    log.exception("unhandled error on %s %s", req.method, req.path)
    raise falcon.HTTPInternalServerError(title="Internal error", description="see the gateway log")


def install_error_handlers(app: falcon.App) -> None:
    """Make unexpected exceptions answer 500 JSON.

    HTTPError keeps its default JSON handler: Falcon picks the most specific registered type.
    """
    app.add_error_handler(Exception, _unexpected)
