"""Configuration upload and listing for one service.

`POST /configs` takes a multipart form (`upload` = the file, `name` = its file name; `type` is accepted and
ignored, as the original CLI sent it) or a raw body with `?name=`. By name: `*.rb`, `*.yaml`, `*.yml` are the
service configuration (validated by `functions.conf.schema.load_config`, replaced atomically or refused with
422 and nothing changed); `*.vm` are VM templates; anything else is a context file served by handlers/repo.py.
`GET /configs` lists the configured environments (never secrets). `GET /files` lists uploaded file names and
`GET /files/{filename}` returns one (a service's own files only). `/files` is not under `/configs/` because
`POST /configs/{name}` creates an environment and any word there may be an environment name.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import falcon
from falcon.media import MultipartFormHandler

from functions import errors
from functions.conf import schema as confschema
from functions.ops import configs
from functions.store import tenants
from functions.views import tables
from handlers.auth import require_service
from handlers.deps import Deps

log = logging.getLogger("carina.gateway")

MAX_BODY = 1024 * 1024
CONFIG_SUFFIXES = {".rb": "rb", ".yaml": "yaml", ".yml": "yaml"}
FORM_FIELDS = ("upload", "name", "type")
DESCRIPTION_WIDTH = 41
CONFIG_HEADERS = ["NAME", "TYPE", "ENDPOINT", "DESCRIPTION"]


@dataclass
class Upload:
    name: str
    data: bytes


def bad_request(field: str, message: str) -> falcon.HTTPBadRequest:
    """A 400 whose description starts with the field name."""
    return falcon.HTTPBadRequest(title="Invalid upload", description=f"{field}: {message}")


def read_body(req: falcon.Request) -> bytes:
    """The request body, at most MAX_BODY bytes (413 beyond)."""
    too_large = falcon.HTTPContentTooLarge(title="Upload too large",
                                           description=f"upload: the body is limited to {MAX_BODY} bytes")
    if req.content_length is not None and req.content_length > MAX_BODY:
        raise too_large
    body = req.bounded_stream.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise too_large
    return body


def _parse_form(req: falcon.Request, body: bytes) -> Upload:
    """The `upload` part and its name from a multipart form."""
    form = MultipartFormHandler().deserialize(io.BytesIO(body), req.content_type, len(body))
    data: bytes | None = None
    name = req.get_param("name")
    for part in form:
        if part.name not in FORM_FIELDS:
            raise bad_request(str(part.name), f"unknown form field; expected {', '.join(FORM_FIELDS)}")
        if part.name == "upload":
            data = part.get_data()
            name = name or part.filename
        elif part.name == "name":
            name = part.get_data().decode("utf-8", errors="replace").strip()
        else:
            part.get_data()
    if data is None:
        raise bad_request("upload", "the form has no `upload` file part")
    return Upload(name=name or "", data=data)


def _check_name(name: str) -> None:
    """400 naming `name` unless it is a plain file name."""
    if not name:
        raise bad_request("name", "missing: send the file name as form field `name` or query `?name=`")
    try:
        tenants.check_filename(name, "name")
    except errors.BadInput as exc:
        raise bad_request("name", str(exc).partition(": ")[2]) from None


def parse_upload(req: falcon.Request) -> Upload:
    """The uploaded file (name and bytes) from a multipart form or a raw body with ?name=. 400/413 if bad."""
    body = read_body(req)
    if req.get_param("name") is not None:
        # A bad ?name= is refused even when the multipart form's name would override it.
        _check_name(req.get_param("name") or "")
    if (req.content_type or "").lower().startswith("multipart/form-data"):
        upload = _parse_form(req, body)
    else:
        upload = Upload(name=req.get_param("name") or "", data=body)
    _check_name(upload.name)
    if not upload.data:
        raise bad_request("upload", "the file is empty")
    return upload


def _text(upload: Upload) -> str:
    try:
        return upload.data.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("upload", f"{upload.name} is not UTF-8 text") from None


def invalid_config(resp: falcon.Response, name: str, errors: list[str], total: int | None = None) -> None:
    """Answer 422 with the validation errors (the first ones of `total`; JSON whatever the Accept header says)."""
    total = len(errors) if total is None else total
    resp.status = falcon.HTTP_422
    resp.content_type = falcon.MEDIA_JSON
    resp.media = {"title": "Invalid configuration",
                  "description": f"{name} was refused ({total} error(s)); the configuration in force is "
                                 "unchanged",
                  "errors": errors}


def over_quota(resp: falcon.Response, exc: tenants.QuotaExceeded) -> None:
    """Answer 413 JSON stating the service's usage, its quota and the refused file's size (bytes as stored)."""
    resp.status = falcon.HTTP_413
    resp.content_type = falcon.MEDIA_JSON
    resp.media = {"title": "Upload quota exceeded", "description": exc.message, "usage": exc.usage,
                  "quota": exc.quota, "size": exc.size}


def _answer(req: falcon.Request, resp: falcon.Response, body: dict, text: str) -> None:
    if tables.wants_text(req.accept):
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = text + "\n"
    else:
        resp.media = body


def environment_rows(config: dict | None) -> list[dict]:
    """[{name, type, endpoint, description}] for each ENVIRONMENT entry (groups: endpoint None)."""
    envs = (config or {}).get("ENVIRONMENT") or {}
    rows = []
    for name, env in envs.items():
        group = env.get("type") == "group"
        rows.append({"name": name, "type": env.get("type"), "endpoint": None if group else env.get("endpoint"),
                     "description": env.get("description")})
    return rows


def configs_table(rows: list[dict]) -> str:
    """The --configs table: description quoted, then cut to 41 characters as the original did."""
    cells = [[row["name"], row["type"], row["endpoint"],
              ('"' + str(row["description"] or "") + '"')[:DESCRIPTION_WIDTH]] for row in rows]
    return tables.render_table(CONFIG_HEADERS, cells)


class Configs:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Store one uploaded file; a configuration replaces the old one only when valid."""
        service = require_service(req)
        upload = parse_upload(req)
        suffix = "." + upload.name.rpartition(".")[2] if "." in upload.name else ""
        r = self.deps.redis
        quota = self.deps.settings.upload_quota
        try:
            if suffix in CONFIG_SUFFIXES:
                self._config(req, resp, service, upload, CONFIG_SUFFIXES[suffix])
                return
            if suffix == ".vm":
                tenants.save_vm_file(r, service, upload.name, _text(upload), quota=quota)
                kind = "vm"
            else:
                tenants.save_context_file(r, service, upload.name, upload.data, quota=quota)
                kind = "context"
        except tenants.QuotaExceeded as exc:
            over_quota(resp, exc)
            return
        except errors.BadInput as exc:
            raise bad_request(exc.field or "name", str(exc).partition(": ")[2] or str(exc)) from None
        log.info("service %s uploaded %s file %s (%d bytes)", service, kind, upload.name, len(upload.data))
        body = {"status": "OK", "file": upload.name, "type": kind}
        if kind == "context":
            body["url"] = f"/repo/{service}/context/{upload.name}"
        _answer(req, resp, body, "OK")

    def _config(self, req: falcon.Request, resp: falcon.Response, service: str, upload: Upload, kind: str) -> None:
        r = self.deps.redis
        text = _text(upload)
        try:
            normalized = confschema.load_config(text, kind, set(tenants.list_vm_files(r, service)))
        except confschema.ConfigError as exc:
            log.info("service %s: %s refused with %d error(s)", service, upload.name, len(exc.errors))
            invalid_config(resp, upload.name, list(exc.errors), exc.total)
            return
        stranded = configs.stranded_endpoints(r, service, normalized)
        if stranded:
            log.info("service %s: %s refused: it drops endpoints in use", service, upload.name)
            invalid_config(resp, upload.name, stranded)
            return
        tenants.save_config(r, service, normalized, text, kind, clock=self.deps.clock)
        count = len(normalized.get("ENVIRONMENT") or {})
        log.info("service %s: configuration %s accepted (%d environments)", service, upload.name, count)
        _answer(req, resp, {"status": "OK", "environments": count}, f"OK ({count} environments)")

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The service's configured environments: JSON list, or the table for Accept: text/plain."""
        service = require_service(req)
        rows = environment_rows(tenants.get_config(self.deps.redis, service))
        if tables.wants_text(req.accept):
            resp.content_type = falcon.MEDIA_TEXT
            resp.text = configs_table(rows)
        else:
            resp.media = rows


class Files:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Names of the service's uploaded .vm templates and context files."""
        service = require_service(req)
        r = self.deps.redis
        resp.media = {"vm": tenants.list_vm_files(r, service), "context": tenants.list_context_files(r, service)}


class File:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response, filename: str) -> None:
        """One of the service's own uploaded files; 404 for anything else (including other services' files)."""
        service = require_service(req)
        r = self.deps.redis
        if filename.endswith(".vm"):
            text = tenants.get_vm_file(r, service, filename)
            data = text.encode() if text is not None else None
        else:
            data = tenants.get_context_file(r, service, filename)
        if data is None:
            raise falcon.HTTPNotFound(title="Not found", description=f"no uploaded file {filename!r}")
        resp.content_type = falcon.MEDIA_TEXT if filename.endswith(".vm") else "application/octet-stream"
        resp.data = data


def add_routes(app: falcon.App, deps: Deps) -> None:
    """Register /configs (upload, list) and /files (uploaded names, one file)."""
    app.add_route("/configs", Configs(deps))
    app.add_route("/files", Files(deps))
    app.add_route("/files/{filename}", File(deps))
