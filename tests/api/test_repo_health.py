"""The context repo (public, for VMs) and GET /health on the real gateway app."""

from __future__ import annotations

from pathlib import Path

import falcon.testing
import pytest
import redis
from rq import Queue, Worker

from config.settings import Settings
from functions.store import tenants
from gateway import create_app
from tests.api.conftest import bearer
from tests.harness import free_port


def test_repo_serves_uploaded_files_and_authorized_keys(api):
    token = api.service("a")
    api.service("b")
    script = b"#!/bin/sh\nwget -q \"http://$CARINA_IP/cgi-bin/x\"\n\x00\xff"
    res = api.client.simulate_post("/configs", params={"name": "tomcat.sh"}, body=script, headers=bearer(token))
    assert res.status_code == 200
    assert res.json == {"status": "OK", "file": "tomcat.sh", "type": "context", "url": "/repo/a/context/tomcat.sh"}
    res = api.client.simulate_get("/repo/a/context/tomcat.sh")
    assert res.status_code == 200 and res.content == script
    res = api.client.simulate_get("/repo/a/context/authorized_keys")
    assert res.status_code == 200
    assert res.text == tenants.service_keypair(api.r, "a")[1] + "\n"
    assert res.text.startswith("ssh-ed25519 ")
    assert "PRIVATE" not in res.text
    assert api.client.simulate_get("/repo/b/context/authorized_keys").text != res.text


@pytest.mark.parametrize("path", [
    "/repo/b/context/tomcat.sh", "/repo/a/context/missing.sh", "/repo/nobody/context/authorized_keys",
    "/repo/a/context/..%2Fx", "/repo/a/context/.hidden", "/repo/bad%20name/context/x.sh",
])
def test_repo_unknown_is_404(api, path):
    token = api.service("a")
    api.service("b")
    api.client.simulate_post("/configs", params={"name": "tomcat.sh"}, body=b"echo", headers=bearer(token))
    res = api.client.simulate_get(path)
    assert res.status_code == 404
    assert "not found" in res.json["title"].lower()


def test_repo_answers_one_404_and_serves_only_context_files(api):
    """An unknown service, an unknown file, another service's file, a malformed name, the service's .vm
    template and its configuration all get the very same 404 body: it echoes nothing and tells nothing apart."""
    token = api.service("a")
    api.service("b")
    for name, data in (("tomcat.sh", b"echo"), ("example.vm", b"CPU = 1\n")):
        api.client.simulate_post("/configs", params={"name": name}, body=data, headers=bearer(token))
    paths = ["/repo/nobody/context/tomcat.sh", "/repo/a/context/missing.sh", "/repo/b/context/tomcat.sh",
             "/repo/nobody/context/authorized_keys", "/repo/a/context/example.vm", "/repo/a/context/config.rb",
             "/repo/a/context/.hidden", "/repo/bad%20name/context/x.sh", "/repo/a/context/" + "x" * 300]
    answers = {(res.status_code, res.headers.get("content-type"), res.text)
               for res in (api.client.simulate_get(p) for p in paths)}
    assert answers == {(404, "application/json", '{"title": "Not found", "description": "no such context file"}')}
    assert api.client.simulate_get("/repo/a/context/tomcat.sh").content == b"echo"


def test_health_503_without_worker_then_200_with_a_live_worker(api, redis_server):
    res = api.client.simulate_get("/health")
    assert res.status_code == 503
    assert res.json["redis"] == "ok" and res.json["workers"] == 0
    assert "worker" in res.json["description"]
    raw = redis.Redis.from_url(redis_server.url)
    other = Worker([Queue("elsewhere", connection=raw)], connection=raw, name="w-other")
    other.register_birth()
    assert api.client.simulate_get("/health").status_code == 503  # a worker of another queue does not count
    worker = Worker([Queue("carina", connection=raw)], connection=raw, name="w-test")
    worker.register_birth()
    try:
        beat = Worker.find_by_key(worker.key, connection=raw).last_heartbeat.timestamp()
        api.clock.now = beat + 10
        res = api.client.simulate_get("/health")
        assert res.status_code == 200
        assert res.json == {"redis": "ok", "workers": 1}
        api.clock.now = beat + 10_000  # heartbeat gone stale
        assert api.client.simulate_get("/health").status_code == 503
        api.clock.now = beat + 10
        worker.register_death()
        assert api.client.simulate_get("/health").status_code == 503
    finally:
        raw.close()


def test_health_503_when_redis_is_down(tmp_path: Path):
    app = create_app(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", home=tmp_path))
    res = falcon.testing.TestClient(app).simulate_get("/health")
    assert res.status_code == 503
    assert res.json["redis"] == "unreachable"
    assert "Redis" in res.json["description"]
