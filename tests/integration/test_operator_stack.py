"""Operator experience end to end, on the real stack (gunicorn gateway, RQ workers, scheduler, Redis, the
simulator with process guests): `oneenv --wait` through a whole create / scale-up / remove and on a failing
master, `--follow` seeing an event that arrives after it started, /metrics gathered from every process and
parsed with prometheus-client's parser, and every log line of a real run parsed as JSON with no secret in it.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from functions.model.tokens import vm_token
from functions.store import envstore, install, tenants
from tests.integration.test_lifecycle_stack import EXTRA_ENVS, SILENT
from tests.stack import ROOT, SIM_AUTH, Stack, wait_for

pytestmark = pytest.mark.slow

SERVICE = "oneenv1"
SCRAPE = "scrape-token-for-tests-0123456789"


@dataclass
class Cycle:
    """A create, scale-up and remove of a tomcat environment, each run with `oneenv ... --wait`."""

    st: Stack
    token: str
    envid: str = ""
    runs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    vm_tokens: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    with Stack(Path(tmp_path_factory.mktemp("stack")), workers=2,
               env={"CARINA_CREATE_DEADLINE": "120", "CARINA_METRICS_TOKEN": SCRAPE}) as st:
        st.start_scheduler()
        token = st.add_service(SERVICE)
        st.upload_example(token, EXTRA_ENVS, files={"silent-master.sh": SILENT})
        yield st, token


@pytest.fixture(scope="module")
def cycle(stack: tuple[Stack, str]) -> Cycle:
    st, token = stack
    c = Cycle(st, token)
    c.runs["create"] = st.oneenv(token, "--create", "tomcat", "--wait", "--timeout", "50", check=False)
    c.envid = json.loads(c.runs["create"].stdout.splitlines()[0])["envid"]
    secret = install.callback_secret(st.r)
    c.vm_tokens = [vm_token(secret, c.envid, v.slot, v.nonce) for v in envstore.get_vms(st.r, c.envid).values()]
    c.runs["scaleup"] = st.oneenv(token, "--scaleup", c.envid, "--wait", check=False)
    c.runs["remove"] = st.oneenv(token, "--remove", c.envid, "--wait", check=False)
    return c


def test_wait_prints_each_step_and_exits_0(cycle: Cycle) -> None:
    create = cycle.runs["create"]
    assert create.returncode == 0, create.stderr + create.stdout
    out = create.stdout
    steps = ["create of 'tomcat' requested", "master m: VM 0 allocated", "master initialised (MASTER_INIT_DONE)",
             "slave s0: VM", "master: add", "environment READY", f"CREATE job {cycle.envid} DONE"]
    positions = [out.find(s) for s in steps]
    assert -1 not in positions and positions == sorted(positions), out
    assert out.splitlines()[-1].startswith("job ") and out.splitlines()[-1].endswith(" DONE")
    for name, word in (("scaleup", "scale up requested"), ("remove", "remove requested")):
        run = cycle.runs[name]
        assert run.returncode == 0 and word in run.stdout, run.stderr + run.stdout
    assert "master: add" in cycle.runs["scaleup"].stdout
    assert "environment removed" in cycle.runs["remove"].stdout
    assert cycle.st.env_state(cycle.envid) is None


def test_wait_exits_non_zero_with_the_reason_when_the_master_fails(stack: tuple[Stack, str]) -> None:
    st, token = stack
    run = st.oneenv(token, "--create", "failing", "--wait", "--timeout", "50", check=False)
    assert run.returncode == 4, run.stderr + run.stdout
    assert "FAIL" in run.stderr and "MASTER_INIT_FAIL:DEMO_FAILURE" in run.stderr
    assert "MASTER_INIT_FAIL:DEMO_FAILURE" in run.stdout          # the callback, as it happened
    envid = json.loads(run.stdout.splitlines()[0])["envid"]
    assert st.oneenv(token, "--remove", envid, "--wait", check=False).returncode == 0


def test_follow_shows_an_event_that_arrives_after_it_started(stack: tuple[Stack, str]) -> None:
    st, token = stack
    created = json.loads(st.oneenv(token, "--json", "--create", "tomcat", "--wait").stdout.split("\n}")[0] + "}")
    envid = created["envid"]
    env = st.env()
    env.update(CARINA_TOKEN=token, HOME=str(st.workdir))
    follow = subprocess.Popen([str(ROOT / "bin" / "oneenv"), "--events", envid, "--follow", "--timeout", "60"],
                              cwd=st.workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in follow.stdout], daemon=True).start()
    try:
        seen = [lines.get(timeout=30)]
        while "environment READY" not in seen[-1] and "DONE" not in seen[-1]:
            seen.append(lines.get(timeout=30))       # the history first
        up = st.http("PUT", f"/envs/{envid}/scaleup", token)["jobid"]
        while f"scale up requested (job {up})" not in seen[-1]:
            seen.append(lines.get(timeout=30))       # then what happens after it started
        while "master: add" not in seen[-1]:
            seen.append(lines.get(timeout=60))
    finally:
        follow.terminate()
        follow.wait(10)
    wait_for(lambda: st.job(up).get("status") == "DONE", 60, "the scale-up", stack=st)
    assert st.oneenv(token, "--remove", envid, "--wait", check=False).returncode == 0


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _scrape(st: Stack, token: str) -> str:
    req = urllib.request.Request(st.base_url + "/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        return resp.read().decode()


def _total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in samples.items() if n == name and set(labels.items()) <= set(lab))


def test_metrics_gather_every_process(cycle: Cycle) -> None:
    st = cycle.st
    admin = tenants.ensure_admin_token(st.r, st.workdir / "home")
    status, _ = st.request("GET", "/metrics", cycle.token)
    assert status == 403
    text = _scrape(st, admin)
    got = _samples(text)
    families = {f.name for f in text_string_to_metric_families(text)}
    assert {"carina_environments", "carina_vms", "carina_jobs", "carina_queue_depth", "carina_callbacks",
            "carina_xmlrpc_request_seconds", "carina_ssh_command_seconds"} <= families
    assert _samples(_scrape(st, SCRAPE))  # the scrape token works too
    assert _total(got, "carina_callbacks_total", outcome="accepted") >= 6           # gateway processes
    assert _total(got, "carina_xmlrpc_request_seconds_count", method="vm.allocate") >= 4   # worker horses
    assert _total(got, "carina_xmlrpc_request_seconds_count", method="vm.info") >= 1
    assert _total(got, "carina_ssh_command_seconds_count", outcome="ok") >= 3        # add s0, s1, s2
    wait_for(lambda: _total(_samples(_scrape(st, SCRAPE)), "carina_tick_seconds_count") >= 1, 60,
             "a minute tick", stack=st)
    assert _total(got, "carina_jobs", type="REMOVE", status="DONE") >= 1
    assert ("carina_queue_depth", (("queue", "carina"),)) in got


def test_every_log_line_is_json_and_holds_no_secret(cycle: Cycle) -> None:
    st = cycle.st
    admin = tenants.ensure_admin_token(st.r, st.workdir / "home")
    private, _ = tenants.service_keypair(st.r, SERVICE)
    secrets = [cycle.token, admin, SCRAPE, SIM_AUTH, *cycle.vm_tokens,
               "".join(private.splitlines()[1:3])]
    docs = []
    for path in sorted(st.workdir.glob("*.log")):
        if path.name.startswith(("onesim", "redis")):
            continue                                   # the simulated cloud is not Carina
        text = path.read_text()
        for secret in secrets:
            assert secret not in text, (path.name, secret[:6])
        assert "PRIVATE KEY" not in text, path.name
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    docs.append(json.loads(line))
                except ValueError:
                    raise AssertionError(f"{path.name}:{number} is not JSON: {line[:200]}") from None
    processes = {d.get("process") for d in docs}
    assert {"gateway", "worker", "scheduler"} <= processes
    steps = [d for d in docs if d.get("process") == "worker" and d.get("envid") == cycle.envid]
    assert any(d.get("jobid") and d.get("service") == SERVICE and "VM" in d["msg"] for d in steps)
    access = [d for d in docs if d.get("logger") == "gunicorn.access" and d.get("service") == SERVICE]
    assert access and all(isinstance(d["status"], str) and d["path"].startswith("/") for d in access)
