"""Bearer auth middleware and the admin /services routes on the real gateway app."""

from __future__ import annotations

import pytest

from functions.store import keys, tenants
from tests.api.conftest import bearer


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer "}, {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "Bearer not-a-token"}, {"Authorization": "Bearer " + "x" * 300},
])
def test_missing_or_bad_token_is_401_json(api, headers):
    api.service("a")
    for path in ("/configs", "/services", "/files"):
        res = api.client.simulate_get(path, headers=headers)
        assert res.status_code == 401, path
        assert res.json["title"] == "Authentication required"
        assert res.json["description"]
        assert res.headers["WWW-Authenticate"] == "Bearer"


def test_exempt_routes_need_no_token(api):
    api.service("a")
    assert api.client.simulate_get("/health").status_code in (200, 503)
    assert api.client.simulate_get("/repo/a/context/authorized_keys").status_code == 200


def test_unknown_route_stays_404(api):
    assert api.client.simulate_get("/nowhere").status_code == 404


def test_rotated_and_removed_tokens_stop_working(api):
    token = api.service("a")
    assert api.client.simulate_get("/configs", headers=bearer(token)).status_code == 200
    res = api.client.simulate_post("/services/a/token", headers=bearer(api.admin))
    assert res.status_code == 200
    new = res.json["token"]
    assert api.client.simulate_get("/configs", headers=bearer(token)).status_code == 401
    assert api.client.simulate_get("/configs", headers=bearer(new)).status_code == 200
    assert api.client.simulate_delete("/services/a", headers=bearer(api.admin)).status_code == 200
    assert api.client.simulate_get("/configs", headers=bearer(new)).status_code == 401


def test_admin_creates_lists_and_removes_services(api):
    res = api.client.simulate_post("/services", json={"name": "oneenv1", "class": "gold", "max_memory": 128000,
                                                      "max_vcpus": 12}, headers=bearer(api.admin))
    assert res.status_code == 201
    assert res.json["name"] == "oneenv1" and res.json["class"] == "gold"
    token = res.json["token"]
    assert tenants.service_for_token(api.r, token) == "oneenv1"
    api.client.simulate_post("/services", json={"name": "arch"}, headers=bearer(api.admin))
    res = api.client.simulate_get("/services", headers=bearer(api.admin))
    assert [(row["name"], row["class"]) for row in res.json] == [("arch", "silver"), ("oneenv1", "gold")]
    assert "token" not in res.text and "token_hash" not in res.text
    # a service sees only itself, as a table too
    res = api.client.simulate_get("/services", headers=bearer(token, Accept="text/plain"))
    assert res.headers["content-type"].startswith("text/plain")
    assert res.text == (
        "   NAME PRIORITY_CLASS MEM(ALLOC/MAX) VCPUS(ALLOC/MAX) CLIENT\n"
        "   ---- -------------- -------------- ---------------- ------\n"
        "oneenv1           gold       0/128000             0/12 NONE\n"   # the guide: no client is NONE
    )
    assert api.client.simulate_get("/services/oneenv1", headers=bearer(token)).json["mem_max"] == 128000
    assert api.client.simulate_get("/services/arch", headers=bearer(token)).status_code == 404
    res = api.client.simulate_delete("/services/arch", headers=bearer(api.admin))
    assert res.json == {"name": "arch", "status": "removed"}
    assert api.client.simulate_delete("/services/arch", headers=bearer(api.admin)).status_code == 404


def test_service_tokens_cannot_administer(api):
    token = api.service("a")
    api.service("b")
    h = bearer(token)
    assert api.client.simulate_post("/services", json={"name": "c"}, headers=h).status_code == 403
    assert api.client.simulate_delete("/services/b", headers=h).status_code == 403
    assert api.client.simulate_post("/services/b/token", headers=h).status_code == 403
    assert tenants.get_service(api.r, "b") is not None


def test_admin_token_has_no_service_routes(api):
    res = api.client.simulate_get("/configs", headers=bearer(api.admin))
    assert res.status_code == 403
    assert "service" in res.json["description"]


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"name": "bad name"}, 400, "name"), ({"name": "x", "class": "tin"}, 400, "class"),
    ({"name": "x", "colour": "red"}, 400, "colour"), ({}, 400, "name"), (["x"], 400, "body"),
    ({"name": "x", "max_memory": "lots"}, 400, "max_memory"),
])
def test_bad_service_input_is_400_naming_the_field(api, body, status, field):
    res = api.client.simulate_post("/services", json=body, headers=bearer(api.admin))
    assert res.status_code == status
    assert res.json["description"].startswith(f"{field}:")
    assert api.r.scard(keys.services()) == 0


def test_malformed_json_duplicate_and_busy_service(api):
    res = api.client.simulate_post("/services", body="{nope", headers=bearer(api.admin, **{
        "Content-Type": "application/json"}))
    assert res.status_code == 400
    api.service("a")
    res = api.client.simulate_post("/services", json={"name": "a"}, headers=bearer(api.admin))
    assert res.status_code == 409
    api.r.zadd(keys.service_envs("a"), {"5": 5})
    res = api.client.simulate_delete("/services/a", headers=bearer(api.admin))
    assert res.status_code == 409 and "environments" in res.json["description"]
    assert api.client.simulate_post("/services/zz/token", headers=bearer(api.admin)).status_code == 404
