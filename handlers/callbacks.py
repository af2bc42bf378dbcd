"""Routes for callbacks (placeholder until its issue lands)."""

from __future__ import annotations

import falcon

from handlers.deps import Deps


def add_routes(app: falcon.App, deps: Deps) -> None:
    """Register this module's routes on `app`."""
