"""`GET /openapi.json`: the API contract (config/openapi.yaml) as JSON, no token needed.

The YAML is read and converted once, when the routes are added; a broken file fails the app start
instead of answering 500 later.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import falcon
import yaml

from handlers.deps import Deps

SPEC_PATH = Path(__file__).resolve().parent.parent / "config" / "openapi.yaml"


def load_spec(path: Path = SPEC_PATH) -> dict[str, Any]:
    """The OpenAPI document at `path` as a dict (yaml.safe_load). Raises ValueError naming the file if it
    is not a mapping with an `openapi` version. Read-only; safe to run twice."""
    with path.open(encoding="utf-8") as fh:
        spec = yaml.safe_load(fh)
    if not isinstance(spec, dict) or not str(spec.get("openapi", "")).startswith("3."):
        raise ValueError(f"{path}: not an OpenAPI 3 document (top-level `openapi: 3.x` missing)")
    return spec


class OpenApi:
    auth_exempt = True

    def __init__(self, spec: dict[str, Any]) -> None:
        self.body = json.dumps(spec, separators=(",", ":")).encode("utf-8")

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self.body


def add_routes(app: falcon.App, deps: Deps) -> None:
    """Register GET /openapi.json."""
    app.add_route("/openapi.json", OpenApi(load_spec()))
