"""The gateway's JSON bodies: UTF-8, and never a 500 for echoing user text.

A refusal may quote what the user sent (a key of an uploaded YAML or JSON document); a JSON or YAML escape
like "\\ud800" decodes to a lone surrogate, which UTF-8 cannot encode. Such a body is written with every
non-ASCII character escaped instead (still valid JSON saying the same thing).
"""

from __future__ import annotations

import json
from typing import Any

import falcon
import falcon.media


def dumps(obj: Any) -> str:
    """JSON text of `obj`: non-ASCII kept as is when it encodes to UTF-8, else escaped (`\\uXXXX`). Pure."""
    text = json.dumps(obj, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj)
    return text


def install_json(app: falcon.App) -> None:
    """Make `dumps` the app's JSON serializer for responses (requests still parse with the default)."""
    handler = falcon.media.JSONHandler(dumps=dumps)
    app.resp_options.media_handlers.update({falcon.MEDIA_JSON: handler})
