"""`GET /ui` and `/ui/{asset}`: the read-only dashboard, plain files from the top-level `ui/` folder.

No token is needed for the files themselves (they hold no data); the page asks for a service token, keeps it
in the tab's sessionStorage and sends it in the Authorization header of its API calls. The files are read
once when the routes are added; only the names found then are served. A strict Content-Security-Policy
allows this origin's script and style only.
"""

from __future__ import annotations

from pathlib import Path

import falcon

from handlers.deps import Deps

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def load_assets(folder: Path = UI_DIR) -> dict[str, tuple[str, bytes]]:
    """name -> (content type, bytes) of every servable file directly in `folder`. Read-only."""
    return {p.name: (TYPES[p.suffix], p.read_bytes()) for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix in TYPES}


class Ui:
    """GET /ui (the page) and GET /ui/{asset} (its script, style and images)."""

    auth_exempt = True

    def __init__(self, assets: dict[str, tuple[str, bytes]]) -> None:
        self.assets = assets

    def _send(self, resp: falcon.Response, name: str) -> None:
        if name not in self.assets:
            raise falcon.HTTPNotFound(title="Not found", description=f"asset: no file {name[:64]!r} in the UI")
        resp.content_type, resp.data = self.assets[name]
        resp.set_headers(HEADERS)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._send(resp, "index.html")

    def on_get_asset(self, req: falcon.Request, resp: falcon.Response, asset: str) -> None:
        self._send(resp, asset)


def add_routes(app: falcon.App, deps: Deps) -> None:
    """Register GET /ui and GET /ui/{asset}."""
    ui = Ui(load_assets())
    app.add_route("/ui", ui)
    app.add_route("/ui/{asset}", ui, suffix="asset")
