"""The dashboard (/ui): its files and headers on the real app, then the page itself in headless Chromium
against a real gunicorn gateway and redis-server: log in with a service token, see environments, VMs, jobs
and events, and a live update (an event and a VM written after the page loaded) show up without a reload.
A screenshot is written under the test's tmp dir (and to docs/ui.png when CARINA_UI_SCREENSHOT=1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from functions.model.clock import system_clock
from functions.store import envstore, guards, tenants
from functions.store.envstore import VmRecord
from tests.api.conftest import bearer
from tests.cdp import Browser, chromium_path
from tests.harness import RedisServer, free_port, project_env, wait_port

ROOT = Path(__file__).resolve().parents[2]


def test_ui_files_are_served_with_a_strict_policy(api):
    page = api.client.simulate_get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff" and '<script src="/ui/app.js"' in page.text
    assert api.client.simulate_get("/ui/").status_code == 200
    script = api.client.simulate_get("/ui/app.js")
    assert script.headers["content-type"].startswith("text/javascript") and "sessionStorage" in script.text
    assert "localStorage" not in script.text and "innerHTML" not in script.text
    assert api.client.simulate_get("/ui/style.css").headers["content-type"].startswith("text/css")
    for name in ("nothing.js", "..", "index.htm"):
        assert api.client.simulate_get(f"/ui/{name}").status_code == 404, name


@pytest.fixture
def gateway(redis_server: RedisServer, tmp_path: Path) -> Iterator[str]:
    """A real gunicorn (threads: the page long-polls while it refreshes its tables); yields its base URL."""
    port = free_port()
    env = project_env(REDIS_URL=redis_server.url, CARINA_HOME=str(tmp_path / "home"))
    with open(tmp_path / "gateway.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py", "--bind",
                                 f"127.0.0.1:{port}", "--workers", "1", "--threads", "4", "--no-control-socket",
                                 "gateway:get_app()"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()             # graceful: an open long poll may hold it up to its wait
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _vm(slot: str, ip: str, cpu: float, status: str, vmid: int, state: str = "announced") -> VmRecord:
    role = "master" if slot == "m" else "slave"
    index = 0 if slot == "m" else int(slot[1:])
    return VmRecord(slot=slot, role=role, index=index, endpoint="onesim", vmid=vmid, state=state, status=status,
                    ip=ip, hostname=f"vm-{vmid}", cpu=cpu, one_state="runn")


def seed(r: redis.Redis) -> tuple[str, str]:
    """A service with three environments in different states, their VMs, jobs and events; (token, envid)."""
    token = tenants.add_service(r, "oneenv1", "gold")
    c = system_clock

    def env(name: str, vms: list[VmRecord], end: tuple[str, str] | None, **fields: str) -> str:
        envid, jobid = envstore.create_env(r, "oneenv1", name, {"endpoint": "onesim"}, "CREATE", c)
        envstore.add_event(r, envid, "oneenv1", "request", f"create of {name!r} requested (job {jobid})", c,
                           jobid=jobid)
        for rec in vms:
            envstore.put_vm(r, envid, rec)
            envstore.add_event(r, envid, "oneenv1", "step", f"{rec.role} {rec.slot}: VM {rec.vmid} allocated", c)
        if end is not None:
            envstore.finish_job(r, jobid, end[0], c, end[1])
            guards.release_op(r, envid, jobid)
            envstore.add_event(r, envid, "oneenv1", "step" if end[0] == "DONE" else "error",
                               f"CREATE job {jobid} {end[0]}: {end[1]}", c, job=jobid)
        envstore.update_env(r, envid, **fields)
        return envid

    tomcat = env("tomcat", [_vm("m", "10.0.0.11", 23.5, "MASTER_INIT_DONE", 0),
                            _vm("s0", "10.0.0.12", 61, "SLAVE_0_INIT_DONE", 1),
                            _vm("s1", "10.0.0.13", 7.2, "SLAVE_1_INIT_DONE", 2)],
                 ("DONE", "created: 1 master + 2 slaves"), policy_status="ACTIVE", status="MASTER_INIT_DONE",
                 app_url="http://10.0.0.11:8080/gwt-petstore")
    env("failing", [_vm("m", "10.0.0.21", 0, "MASTER_INIT_FAIL:DEMO_FAILURE", 3, "running")],
        ("FAIL", "master reported MASTER_INIT_FAIL:DEMO_FAILURE"), policy_status="INIT",
        status="MASTER_INIT_FAIL:DEMO_FAILURE")
    env("cassandra", [_vm("m", "", -1, "VM_CREATE", 4, "allocated")], None, status="VM_CREATE")
    return token, tomcat


def _answers_200(base: str, path: str, token: str) -> bool:
    req = urllib.request.Request(base + path, headers=bearer(token))
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status == 200
    except urllib.error.HTTPError:
        return False


ROWS = "document.querySelectorAll('#{} tbody tr').length"
TEXT = "document.getElementById('{}').innerText"


@pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (make setup installs it)")
def test_the_page_in_headless_chromium_shows_the_service_and_updates_live(rdb, gateway, tmp_path):
    token, tomcat = seed(rdb)
    with Browser(tmp_path / "chromium") as page:
        page.open(gateway + "/ui")
        page.wait_until("!!document.getElementById('token') && document.readyState === 'complete'", what="the page")
        page.evaluate("document.getElementById('token').value = 'not-a-token';"
                      "document.getElementById('login').requestSubmit(); true")
        page.wait_until(f"{TEXT.format('login-error')}.includes('Unknown token')", what="the refusal")
        page.evaluate(f"document.getElementById('token').value = {json.dumps(token)};"
                      "document.getElementById('login').requestSubmit(); true")
        page.wait_until(f"{ROWS.format('envs')} === 3 && {ROWS.format('vms')} === 5 && {ROWS.format('jobs')} === 3"
                        " && document.querySelectorAll('#events li').length > 0", what="the tables")
        envs = page.evaluate(TEXT.format("envs"))
        assert "tomcat" in envs and "ACTIVE" in envs and "MASTER_INIT_FAIL:DEMO_FAILURE" in envs
        assert "http://10.0.0.11:8080/gwt-petstore" in envs
        vms = page.evaluate(TEXT.format("vms"))
        assert "10.0.0.12" in vms and "61%" in vms and "23.5%" in vms
        jobs = page.evaluate(TEXT.format("jobs"))
        assert "DONE" in jobs and "FAIL" in jobs and "RUNNING" in jobs
        assert "created: 1 master + 2 slaves" in page.evaluate(TEXT.format("events"))
        assert page.evaluate(TEXT.format("service")) == "service oneenv1"
        # pools and requests: shown only when those routes answer 200 (they belong to the global scheduler)
        for name in ("pools", "requests"):
            shown = _answers_200(gateway, f"/{name}", token)
            page.wait_until(f"document.getElementById('{name}-card').hidden === {json.dumps(not shown)}",
                            what=f"the {name} panel {'shown' if shown else 'hidden'}")

        # live: an event and a new VM written after the page loaded show up without a reload
        envstore.put_vm(rdb, tomcat, _vm("s2", "10.0.0.14", 3, "SLAVE_2_INIT_DONE", 5))
        envstore.add_event(rdb, tomcat, "oneenv1", "step", "master: add 10.0.0.14 8080 (written by the test)",
                           system_clock)
        page.wait_until(f"{TEXT.format('events')}.includes('written by the test')", what="the live event")
        page.wait_until(f"{ROWS.format('vms')} === 6 && {TEXT.format('vms')}.includes('10.0.0.14')",
                        what="the VM table refreshed by that event")
        assert page.evaluate("document.querySelector('#events li').innerText").endswith("(written by the test)")
        assert page.evaluate(TEXT.format("live")) == "live"

        # a laptop screen: nothing wider than the window; the token only in this tab's session storage
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert page.evaluate("sessionStorage.getItem('carina.token')") == token
        assert page.evaluate("localStorage.length") == 0
        assert token not in page.evaluate("location.href + document.cookie")
        png = page.screenshot(tmp_path / "ui.png")
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20000
        if os.environ.get("CARINA_UI_SCREENSHOT") == "1":
            shutil.copyfile(tmp_path / "ui.png", ROOT / "docs" / "ui.png")

        page.evaluate("document.getElementById('logout').click(); true")
        page.wait_until("!document.getElementById('login-view').hidden", what="the login form again")
        assert page.evaluate("sessionStorage.getItem('carina.token')") is None
    assert token not in (tmp_path / "gateway.log").read_text()
