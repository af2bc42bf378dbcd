"""POST/GET /configs and /files on the real gateway: the guide's examples, bad configs refused, tenants isolated."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from functions.store import keys
from tests.api.conftest import bearer

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"
SECRET = "S3cr3t-Pa55w0rd"

SMALL = f"""
ENDPOINT = {{ 'flm01' => {{ :proxy => 'http://127.0.0.1:2633/RPC2', :oneauth => 'oneenv1:{SECRET}' }} }}
TEMPLATE = {{ 'example' => {{ :file => '/home/x/vm/example.vm', :cpu => 1, :memory => 1024,
                              :network_id => {{ 'flm01' => 0 }}, :image_id => {{ 'flm01' => 0 }} }} }}
ENVIRONMENT = {{
  'tomcat_flm01' => {{ :type => "compute", :endpoint => "flm01", :description => "Load-balanced Tomcat cluster",
                      :master_template => "example", :slave_template => "example", :num_slaves => 1 }},
  'tomcat_ha_pair' => {{ :type => "group", :description => "HA Active-Passive pair of Tomcat clusters",
                        :members => ['tomcat_flm01'] }},
}}
"""


def multipart(fields: dict[str, tuple[str | None, bytes]], boundary: str = "XyZ123boundary") -> tuple[bytes, str]:
    """A multipart/form-data body like `curl -F`: {field: (filename or None, data)}."""
    out = b""
    for field, (filename, data) in fields.items():
        disp = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if filename:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def upload(api, token, name, data, form=False, accept="application/json"):
    if form:
        body, ctype = multipart({"type": (None, b"config"), "name": (None, name.encode()), "upload": (name, data)})
        return api.client.simulate_post("/configs", body=body, headers=bearer(token, **{
            "Content-Type": ctype, "Accept": accept}))
    return api.client.simulate_post("/configs", params={"name": name}, body=data,
                                    headers=bearer(token, Accept=accept))


def upload_examples(api, token):
    for vm in ("example.vm", "cassandra.vm"):
        res = upload(api, token, vm, (EXAMPLES / vm).read_bytes(), form=True)
        assert res.status_code == 200, res.text
        assert res.json == {"status": "OK", "file": vm, "type": "vm"}
    return upload(api, token, "config.rb", (EXAMPLES / "config.rb").read_bytes(), form=True)


def test_example_config_uploads_after_its_vm_files_and_lists(api):
    token = api.service("oneenv1")
    res = upload(api, token, "config.rb", (EXAMPLES / "config.rb").read_bytes())
    assert res.status_code == 422
    assert any("example.vm" in err for err in res.json["errors"])
    assert api.r.exists(keys.config("oneenv1")) == 0
    res = upload_examples(api, token)
    assert res.status_code == 200, res.text
    assert res.json["status"] == "OK" and res.json["environments"] >= 5
    rows = {row["name"]: row for row in api.client.simulate_get("/configs", headers=bearer(token)).json}
    assert rows["tomcat"] == {"name": "tomcat", "type": "compute", "endpoint": "onesim",
                              "description": "Load-balanced Tomcat cluster"}
    assert rows["analytics"]["type"] == "group" and rows["analytics"]["endpoint"] is None
    assert {"e-tomcat", "cassandra", "tomcat_ha_active", "tomcat_ha_passive"} <= set(rows)
    text = api.client.simulate_get("/configs", headers=bearer(token, Accept="text/plain")).text
    assert text.splitlines()[0].split() == ["NAME", "TYPE", "ENDPOINT", "DESCRIPTION"]
    assert '    analytics   group        - "BI Analytics environment with Hbase data' in text
    files = api.client.simulate_get("/files", headers=bearer(token)).json
    assert files == {"vm": ["cassandra.vm", "example.vm"], "context": []}


def test_yaml_example_uploads(api):
    token = api.service("a")
    upload_examples(api, token)
    res = upload(api, token, "config.yaml", (EXAMPLES / "config.yaml").read_bytes())
    assert res.status_code == 200, res.text
    assert api.r.hget(keys.config("a"), "kind") == "yaml"


def test_configs_table_quotes_and_cuts_descriptions(api):
    token = api.service("a")
    upload(api, token, "example.vm", b"CPU = %CPU%\n")
    res = upload(api, token, "config.rb", SMALL.encode(), accept="text/plain, application/json;q=0.9")
    assert res.status_code == 200 and res.text == "OK (2 environments)\n"
    res = api.client.simulate_get("/configs", headers=bearer(token, Accept="text/plain"))
    assert res.text == (
        "          NAME    TYPE ENDPOINT DESCRIPTION\n"
        "          ----    ---- -------- -----------\n"
        '  tomcat_flm01 compute    flm01 "Load-balanced Tomcat cluster"\n'
        'tomcat_ha_pair   group        - "HA Active-Passive pair of Tomcat cluster\n'  # 41 characters, as the guide
    )


BAD = {
    "syntax": "ENDPOINT = { 'x' => `id` }",
    "interpolation": 'ENDPOINT = { "a#{1}" => 1 }',
    "method call": "ENDPOINT = File.read('/etc/passwd')",
    "unknown key": SMALL.replace(":num_slaves", ":num_slave"),
    "unknown endpoint": SMALL.replace(':endpoint => "flm01"', ':endpoint => "nowhere"'),
    "missing template file": SMALL.replace("example.vm", "other.vm"),
    "bad expression": SMALL.replace(":num_slaves => 1",
                                    ":num_slaves => 1, :elasticity_policy => {:mode => 'auto', :min => 1, :max => 2,"
                                    " :period => 1, :scaleup_expr => '__import__(1)', :scaledown_expr => 'avgcpu<1'}"),
    "bad window": SMALL.replace(":num_slaves => 1",
                                ":num_slaves => 1, :elasticity_policy => {:mode => 'time-based', :windows => "
                                "{'w' => {:spec => 'Someday 9-5', :min => 1}}}"),
    "bad type": SMALL.replace(":num_slaves => 1", ":num_slaves => 'many'"),
    "secret beside a bad proxy": SMALL.replace("'http://127.0.0.1:2633/RPC2'", "5"),
    "secret of the wrong type": SMALL.replace(f"'oneenv1:{SECRET}'", f"['{SECRET}']"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_is_422_and_keeps_the_old_one(api, case, caplog):
    caplog.set_level(logging.DEBUG)
    token = api.service("a")
    upload(api, token, "example.vm", b"CPU = %CPU%\n")
    assert upload(api, token, "config.rb", SMALL.encode()).status_code == 200
    before = api.r.hgetall(keys.config("a"))
    res = upload(api, token, "config.rb", BAD[case].encode(), form=True)
    assert res.status_code == 422, res.text
    assert res.json["title"] == "Invalid configuration"
    assert res.json["errors"] and all(isinstance(e, str) and e for e in res.json["errors"])
    assert "unchanged" in res.json["description"]
    assert api.r.hgetall(keys.config("a")) == before
    assert SECRET not in res.text
    assert SECRET not in caplog.text


def test_error_messages_name_the_problem(api):
    token = api.service("a")
    upload(api, token, "example.vm", b"CPU = %CPU%\n")
    errors = upload(api, token, "config.rb", BAD["unknown key"].encode()).json["errors"]
    assert any("num_slave" in e and "tomcat_flm01" in e for e in errors)
    errors = upload(api, token, "config.rb", BAD["syntax"].encode()).json["errors"]
    assert any("line 1" in e for e in errors)


def test_no_route_returns_the_oneauth_secret(api, caplog):
    caplog.set_level(logging.DEBUG)
    token = api.service("a")
    upload(api, token, "example.vm", b"CPU = %CPU%\n")
    bodies = [upload(api, token, "config.rb", SMALL.encode(), form=True).text]
    for path in ("/configs", "/files", "/files/example.vm", "/services", "/services/a", "/repo/a/context/config.rb"):
        for accept in ("application/json", "text/plain"):
            bodies.append(api.client.simulate_get(path, headers=bearer(token, Accept=accept)).text)
    bodies.append(api.client.simulate_get("/services", headers=bearer(api.admin)).text)
    assert SECRET in api.r.hget(keys.config("a"), "source")  # stored, never served
    assert all(SECRET not in body for body in bodies)
    assert SECRET not in caplog.text


def test_tenants_are_isolated(api):
    a = api.service("a")
    b = api.service("b")
    upload(api, a, "example.vm", b"CPU = %CPU%\n")
    upload(api, a, "init.sh", b"echo a\n")
    assert upload(api, a, "config.rb", SMALL.encode()).status_code == 200
    assert api.client.simulate_get("/configs", headers=bearer(b)).json == []
    assert api.client.simulate_get("/files", headers=bearer(b)).json == {"vm": [], "context": []}
    for path in ("/files/example.vm", "/files/init.sh", "/files/config.rb"):
        assert api.client.simulate_get(path, headers=bearer(b)).status_code == 404
    assert api.client.simulate_get("/files/init.sh", headers=bearer(a)).content == b"echo a\n"
    # B's upload cannot see A's templates and does not touch A's configuration
    res = upload(api, b, "config.rb", SMALL.encode())
    assert res.status_code == 422 and any("example.vm" in e for e in res.json["errors"])
    assert len(api.client.simulate_get("/configs", headers=bearer(a)).json) == 2


@pytest.mark.parametrize(("params", "body", "field"), [
    ({"name": "../x.sh"}, b"x", "name"), ({"name": ".profile"}, b"x", "name"), ({}, b"x", "name"),
    ({"name": "a b.sh"}, b"x", "name"), ({"name": "authorized_keys"}, b"ssh-ed25519 AAAA", "name"),
    ({"name": "x.sh"}, b"", "upload"), ({"name": "x.vm"}, b"\xff\xfe", "upload"),
    ({"name": "config.rb"}, b"\xff", "upload"),
])
def test_bad_upload_is_400_naming_the_field(api, params, body, field):
    token = api.service("a")
    res = api.client.simulate_post("/configs", params=params, body=body, headers=bearer(token))
    assert res.status_code == 400, res.text
    assert res.json["description"].startswith(f"{field}:")
    assert api.client.simulate_get("/files", headers=bearer(token)).json == {"vm": [], "context": []}


def test_bad_forms(api):
    token = api.service("a")
    body, ctype = multipart({"colour": (None, b"red"), "upload": ("x.sh", b"x")})
    res = api.client.simulate_post("/configs", body=body, headers=bearer(token, **{"Content-Type": ctype}))
    assert res.status_code == 400 and res.json["description"].startswith("colour:")
    body, ctype = multipart({"name": (None, b"x.sh")})
    res = api.client.simulate_post("/configs", body=body, headers=bearer(token, **{"Content-Type": ctype}))
    assert res.status_code == 400 and res.json["description"].startswith("upload:")
    body, ctype = multipart({"upload": ("from-filename.sh", b"echo")})  # no name field: the part's filename
    res = api.client.simulate_post("/configs", body=body, headers=bearer(token, **{"Content-Type": ctype}))
    assert res.status_code == 200 and res.json["file"] == "from-filename.sh"
    res = api.client.simulate_post("/configs", body=b"--nope", headers=bearer(token, **{
        "Content-Type": "multipart/form-data; boundary=zz"}))
    assert res.status_code == 400


def test_body_over_one_mib_is_413(api):
    token = api.service("a")
    big = b"x" * (1024 * 1024 + 1)
    res = api.client.simulate_post("/configs", params={"name": "big.bin"}, body=big, headers=bearer(token))
    assert res.status_code == 413
    assert res.json["description"].startswith("upload:")
    body, ctype = multipart({"upload": ("big.bin", big)})
    res = api.client.simulate_post("/configs", body=body, headers=bearer(token, **{"Content-Type": ctype}))
    assert res.status_code == 413
    ok = b"y" * (1024 * 1024)
    res = api.client.simulate_post("/configs", params={"name": "max.bin"}, body=ok, headers=bearer(token))
    assert res.status_code == 200
    assert api.client.simulate_get("/repo/a/context/max.bin").content == ok


def test_an_upload_that_drops_an_endpoint_in_use_is_refused_naming_the_environments(api):
    token = api.service("a")
    upload(api, token, "example.vm", b"CPU = %CPU%\n")
    assert upload(api, token, "config.rb", SMALL.encode()).status_code == 200
    created = api.client.simulate_post("/configs/tomcat_flm01", headers=bearer(token))
    assert created.status_code == 202, created.text
    envid = created.json["envid"]
    before = api.r.hgetall(keys.config("a"))
    renamed = SMALL.replace("'flm01'", "'flm02'").replace('"flm01"', '"flm02"')
    res = upload(api, token, "config.rb", renamed.encode())
    assert res.status_code == 422, res.text
    assert res.json["errors"] == [f"ENDPOINT.flm01: still used by environment(s) {envid}; remove them first or "
                                  "keep the endpoint"]
    assert api.r.hgetall(keys.config("a")) == before
    assert upload(api, token, "config.rb", SMALL.replace("Tomcat cluster", "Tomcat").encode()).status_code == 200


def test_a_hostile_config_gets_a_small_422(api):
    """Thousands of environments naming missing endpoints and templates: the answer counts every error but
    lists the first few, and no message lists every defined name."""
    from tests.unit.test_confschema_limits import hostile_rb
    token = api.service("a")
    upload(api, token, "x.vm", b"CPU = %CPU%\n")
    res = upload(api, token, "config.rb", hostile_rb(2000).encode())
    assert res.status_code == 422
    assert len(res.content) < 20_000
    assert res.json["description"].startswith("config.rb was refused (") and "unchanged" in res.json["description"]
    total = int(res.json["description"].split("(")[1].split()[0])
    assert total > 4000 and res.json["errors"][-1] == f"... and {total - len(res.json['errors']) + 1} more errors"
    assert api.r.hgetall(keys.config("a")) == {}


def test_upload_quota_is_413_stating_usage_and_quota(api, redis_server, tmp_path):
    import falcon.testing

    from config.settings import Settings
    from gateway import create_app
    app = create_app(Settings(redis_url=redis_server.url, home=tmp_path, upload_quota=3000), clock=api.clock)
    client = falcon.testing.TestClient(app)
    token = api.service("a")
    first = client.simulate_post("/configs", params={"name": "a.vm"}, body=b"x" * 2000, headers=bearer(token))
    assert first.status_code == 200
    res = client.simulate_post("/configs", params={"name": "b.vm"}, body=b"y" * 1500, headers=bearer(token))
    assert res.status_code == 413 and res.headers["content-type"].startswith("application/json")
    assert res.json["title"] == "Upload quota exceeded"
    assert (res.json["usage"], res.json["quota"], res.json["size"]) == (2000, 3000, 1500)
    assert res.json["description"].startswith("upload: ") and "2000 of its 3000 bytes" in res.json["description"]
    body, ctype = multipart({"upload": ("c.sh", b"z" * 1200)})                     # base64: 1600 bytes stored
    res = client.simulate_post("/configs", body=body, headers=bearer(token, **{"Content-Type": ctype}))
    assert res.status_code == 413 and res.json["size"] == 1600
    assert client.simulate_get("/files", headers=bearer(token)).json == {"vm": ["a.vm"], "context": []}
    other = client.simulate_post("/configs", params={"name": "b.vm"}, body=b"y" * 1500,
                                 headers=bearer(api.service("c")))
    assert other.status_code == 200                                                 # per service
