"""The API contract (config/openapi.yaml, served at /openapi.json) fuzzed with schemathesis against the real
Falcon app in-process, on the real redis-server.

Each operation runs in a fresh database seeded through the API itself: service `oneenv1` with the example
templates, context scripts and config.rb uploaded, and one environment created (envid 1), so the spec's
examples hit real objects. Requests carry a real token (admin for /services*, the service's otherwise).
Checks: schemathesis' defaults (no 5xx, status codes, content types and bodies conform, auth enforced,
schema-invalid data refused).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import falcon
import hypothesis
import pytest
import schemathesis

from config.settings import Settings
from gateway import create_app
from handlers.openapi import load_spec
from tests.api.conftest import Api, bearer
from tests.api.test_configs import multipart

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "config" / "examples"
CONTEXT = ROOT / "context"
SERVICE = "oneenv1"



class AppSlot:
    """A WSGI app forwarding to the app of the running test.

    The schema must exist at import (schemathesis.pytest.from_fixture breaks on pytest 9: it sets
    `node._nodeid`), while each test gets its own app on a freshly seeded database. The first app only serves
    /openapi.json to load the schema: its clients touch no Redis until first use, and that route needs none.
    """

    def __init__(self) -> None:
        self.app: falcon.App = create_app(Settings(redis_url="redis://127.0.0.1:9/0", home=ROOT / "var"))

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        return self.app(environ, start_response)


SLOT = AppSlot()
# 422 means "well-formed but refused in this state" here (e.g. creating a group entry): schema errors are 400.
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
# Unknown query parameters are ignored, as by most HTTP APIs (OpenAPI does not forbid them): don't generate them.
CONFIG = schemathesis.Config.from_dict({"checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED}},
                                        "generation": {"allow-extra-parameters": False}})
schema = schemathesis.openapi.from_wsgi("/openapi.json", SLOT, config=CONFIG)


@dataclass
class Seeded:
    app: falcon.App
    service_token: str
    admin_token: str

    def headers_for(self, case: schemathesis.Case) -> dict[str, str]:
        """A real token in place of the generated one: the admin's for the service-administration routes, the
        global configuration and /metrics, the service's for the rest. Empty when a negative case left the header
        out on purpose (→ 401 expected)."""
        generated = {k.lower() for k in case.headers or {}}
        if "authorization" not in generated and case.meta is not None and not case.meta.generation.mode.is_positive:
            return {}
        admin_paths = ("/services", "/global", "/metrics")
        return bearer(self.admin_token if case.path.startswith(admin_paths) else self.service_token)


def _upload(api: Api, token: str, name: str, data: bytes) -> None:
    res = api.client.simulate_post("/configs", params={"name": name}, body=data,
                                   headers=bearer(token, **{"Content-Type": "application/octet-stream"}))
    assert res.status_code == 200, f"{name}: {res.status_code} {res.text}"


@pytest.fixture
def seeded(api: Api) -> Seeded:
    token = api.service(SERVICE)
    for path in sorted(EXAMPLES.glob("*.vm")) + sorted(CONTEXT.glob("*.sh")):
        _upload(api, token, path.name, path.read_bytes())
    _upload(api, token, "config.rb", (EXAMPLES / "config.rb").read_bytes())
    res = api.client.simulate_post("/configs/tomcat", headers=bearer(token))
    assert res.status_code == 202 and res.json["envid"] == "1", res.text
    SLOT.app = api.client.app
    return Seeded(app=api.client.app, service_token=token, admin_token=api.admin)


# Acceptance rules OpenAPI 3.0 cannot express: POST /configs needs the file name in `?name=` or in the
# multipart form, and the guide-form callback carries its required keys inside the path segment. For these
# two, schema-valid data may rightly get a 400; every other check still runs on them.
# Examples per operation; CARINA_FUZZ_EXAMPLES=500 for a longer hunt.
MAX_EXAMPLES = int(os.environ.get("CARINA_FUZZ_EXAMPLES", "25"))
CROSS_FIELD = {("POST", "/configs"), ("GET", "/cgi-bin/{script}")}


def _no_long_poll(case: schemathesis.Case) -> None:
    """A valid `wait` becomes 0: nothing writes events during the fuzz, so each case would wait its full
    `wait` seconds (the waiting itself is tested in tests/api/test_events.py). Invalid values stay."""
    wait = (case.query or {}).get("wait")
    if isinstance(wait, int | str) and str(wait).isdigit() and 0 < int(wait) <= 25:
        case.query["wait"] = 0


@schema.parametrize()
@hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_api_conforms(case: schemathesis.Case, seeded: Seeded) -> None:
    excluded = []
    key = (case.method.upper(), case.path)
    if key == ("GET", "/health"):
        # 503 is /health's documented answer when no RQ worker runs (none does here); its body is still checked.
        excluded.append(schemathesis.checks.not_a_server_error)
    if key in CROSS_FIELD:
        excluded.append(schemathesis.specs.openapi.checks.positive_data_acceptance)
    if case.media_type == "multipart/form-data":
        # Form fields are text on the wire: a "wrong type" (integer -1 for a string) cannot be told apart.
        excluded.append(schemathesis.specs.openapi.checks.negative_data_rejection)
    _no_long_poll(case)
    response = case.call_and_validate(headers=seeded.headers_for(case), excluded_checks=excluded)
    if key == ("GET", "/health"):
        assert response.status_code in (200, 503), response.status_code
    else:
        assert response.status_code < 500, response.status_code


def test_openapi_json_served_without_token(api: Api) -> None:
    res = api.client.simulate_get("/openapi.json")
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("application/json")
    assert res.json == load_spec()
    assert res.json["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_spec_covers_every_route(api: Api) -> None:
    """Every route the app registers is described, and every described path reaches a route (the two callback
    scripts are spelled out; the app serves them through /cgi-bin/{script})."""
    routes = set()

    def walk(nodes: list) -> None:
        for node in nodes:
            if node.resource is not None:
                routes.add(node.uri_template)
            walk(node.children)

    router = api.client.app._router
    walk(router._roots)
    paths = set(load_spec()["paths"])
    assert routes <= paths
    assert paths - routes == {"/cgi-bin/updatevmstatus.sh", "/cgi-bin/updateappstatus.sh"}
    assert all(router.find(p) is not None for p in paths - routes)


def test_load_spec_refuses_a_non_openapi_file(tmp_path: Path) -> None:
    bad = tmp_path / "openapi.yaml"
    bad.write_text("swagger: '2.0'\n")
    with pytest.raises(ValueError, match="openapi.yaml: not an OpenAPI 3 document"):
        load_spec(bad)


def test_bad_query_name_refused_even_with_a_form_name(api: Api) -> None:
    """Found by the fuzzer: a multipart upload whose form `name` is valid used to ignore an invalid `?name=`."""
    token = api.service(SERVICE)
    body, ctype = multipart({"name": (None, b"x.sh"), "upload": ("x.sh", b"echo hi\n")})
    headers = bearer(token, **{"Content-Type": ctype})
    res = api.client.simulate_post("/configs", params={"name": "bad/name"}, body=body, headers=headers)
    assert res.status_code == 400
    assert res.json["description"].startswith("name: a file name is")
    ok = api.client.simulate_post("/configs", body=body, headers=headers)
    assert ok.status_code == 200 and ok.json["file"] == "x.sh"
