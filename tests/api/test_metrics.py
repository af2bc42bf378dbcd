"""GET /metrics on the real app and redis-server, parsed with prometheus-client's own parser; the
multiprocess mode of the worker (sequential forked horses share one file set) in a real subprocess."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import falcon.testing
import pytest
from prometheus_client.parser import text_string_to_metric_families

from config import metrics
from config.settings import Settings
from functions.cloud import sshexec
from functions.cloud.one import OneClient, OneUnavailable
from functions.store import envstore
from functions.store.envstore import VmRecord
from gateway import create_app
from tests.api.conftest import bearer
from tests.api.test_env_routes import _create, _setup
from tests.harness import free_port, project_env


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a text exposition (raises on anything unparseable)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(client: falcon.testing.TestClient, token: str) -> dict:
    res = client.simulate_get("/metrics", headers=bearer(token))
    assert res.status_code == 200, res.text
    assert res.headers["content-type"].startswith("text/plain; version=")
    return samples(res.text)


def test_metrics_need_the_admin_or_the_scrape_token(api, redis_server, tmp_path):
    token = _setup(api)
    assert api.client.simulate_get("/metrics").status_code == 401
    assert api.client.simulate_get("/metrics", headers=bearer("nope")).status_code == 401
    assert api.client.simulate_get("/metrics", headers=bearer(token)).status_code == 403
    scrape(api.client, api.admin)
    app = create_app(Settings(redis_url=redis_server.url, home=tmp_path, metrics_token="scrape-me"))
    client = falcon.testing.TestClient(app)
    scrape(client, "scrape-me")
    assert client.simulate_get("/metrics", headers=bearer("scrape-mf")).status_code == 401
    assert "scrape-me" not in repr(Settings(metrics_token="scrape-me"))


def test_state_gauges_count_what_redis_holds(api):
    token = _setup(api)
    envid, jobid = _create(api, token)
    _create(api, token)
    envstore.put_vm(api.r, envid, VmRecord(slot="m", role="master", index=0, endpoint="onesim", state="running"))
    envstore.put_vm(api.r, envid, VmRecord(slot="s0", role="slave", index=0, endpoint="onesim"))
    envstore.finish_job(api.r, jobid, "DONE", api.clock)
    envstore.update_env(api.r, envid, policy_status="ACTIVE")
    got = scrape(api.client, api.admin)
    assert got[("carina_environments", (("policy_status", "ACTIVE"),))] == 1
    assert got[("carina_environments", (("policy_status", "INIT"),))] == 1
    assert got[("carina_vms", (("state", "running"),))] == 1
    assert got[("carina_vms", (("state", "allocating"),))] == 1
    assert got[("carina_jobs", (("status", "DONE"), ("type", "CREATE")))] == 1
    assert got[("carina_jobs", (("status", "RUNNING"), ("type", "CREATE")))] == 1
    assert got[("carina_queue_depth", (("queue", "carina"),))] == 2      # one drive per create, no worker here


def test_callbacks_xmlrpc_and_ssh_are_counted(api):
    token = _setup(api)
    envid, _ = _create(api, token)
    before = scrape(api.client, api.admin)
    path = f"/cgi-bin/updateappstatus.sh?service=svc1&vmid=5&envid={envid}&status=X&token=forged"
    assert api.client.simulate_get(path).status_code in (403, 404)
    assert api.client.simulate_get("/cgi-bin/updateappstatus.sh?vmid=x").status_code == 400
    port = free_port()                                  # nothing listens there: real connection failures
    with pytest.raises(OneUnavailable):
        OneClient(f"http://user:pw@127.0.0.1:{port}/RPC2", "oneadmin:x", timeout=2).version()
    with pytest.raises(sshexec.SshFailed):
        sshexec.run_remote("127.0.0.1", port, "root", "not a key", "true", known_key=None, timeout=2)
    after = scrape(api.client, api.admin)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("carina_callbacks_total", outcome="refused") == 1
    assert delta("carina_callbacks_total", outcome="invalid") == 1
    endpoint = {"endpoint": f"127.0.0.1:{port}", "method": "system.version"}
    assert delta("carina_xmlrpc_errors_total", kind="unavailable", **endpoint) == 1
    assert delta("carina_xmlrpc_request_seconds_count", **endpoint) == 1
    assert delta("carina_ssh_failures_total", reason="failed") == 1
    assert delta("carina_ssh_command_seconds_count", outcome="failed") == 1
    assert not any("pw" in k[0] or any("pw" in v for _, v in k[1]) for k in after)


def test_endpoint_label_keeps_host_and_port_only():
    assert metrics.endpoint_label("http://u:secret@one.example:2633/RPC2") == "one.example:2633"
    assert metrics.endpoint_label("https://one.example/RPC2") == "one.example"


FORKING = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from config import metrics
    path = metrics.init_process(Path(sys.argv[1]), forking=True)
    metrics.callback("accepted")                       # the parent's own file set
    for _ in range(3):                                 # three work horses, one after another
        pid = os.fork()
        if pid == 0:
            metrics.callback("accepted")
            metrics.rpc_call("one:2633", "vm.info", 0.01)
            os._exit(0)
        os.waitpid(pid, 0)
    print(os.getpid())
""")


def test_forked_horses_share_one_file_set_and_every_count_is_kept(tmp_path: Path):
    home = tmp_path / "home"
    res = subprocess.run([sys.executable, "-c", FORKING, str(home)], env=project_env(PROMETHEUS_MULTIPROC_DIR=""),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    pid = res.stdout.strip()
    files = sorted(p.name for p in (home / "metrics").iterdir())
    # one file set for the parent, one shared by its three horses (not one per horse)
    assert files == [f"counter_{pid}.db", f"counter_{pid}h.db", f"histogram_{pid}.db", f"histogram_{pid}h.db"]
    check = textwrap.dedent(f"""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector
        reg = CollectorRegistry()
        MultiProcessCollector(reg, path={str(home / 'metrics')!r})
        print(generate_latest(reg).decode())
    """)
    out = subprocess.run([sys.executable, "-c", check], env=project_env(), capture_output=True, text=True, timeout=60)
    got = samples(out.stdout)
    assert got[("carina_callbacks_total", (("outcome", "accepted"),))] == 4
    assert got[("carina_xmlrpc_request_seconds_count", (("endpoint", "one:2633"), ("method", "vm.info")))] == 3
