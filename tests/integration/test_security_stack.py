"""Issue #11 on the whole real stack (redis-server, the simulator with process guests, the gunicorn gateway, two RQ
workers, rq-scheduler): with a healthy environment of service A running (master + slave announced), seven attacks
happen side by side (one thread each) and each is refused with a clear answer, and nothing else is disturbed.

The attacks: an unauthenticated Redis client (NOAUTH); a curious guest (a new environment whose master's context
script reads the controller's files and talks to Redis: refused, where guests run as carina-guest); a flooding VM
(a valid token, callbacks as fast as it can: 429 beyond the burst); a service filling its upload quota (413
stating the usage); a hostile configuration (a capped error list, a small answer); a spoofed legacy callback (no
token, from an address that is not the VM's: 403); an outsider browsing the public context repo for what it
must not serve (one 404). Afterwards the healthy environment is unchanged, service B still creates an
environment, Redis takes writes, every worker is alive with no FAILED job, and the scheduler still ticks.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.exceptions import NoSuchJobError
from rq.registry import FailedJobRegistry

from functions.model.tokens import vm_token
from functions.schedule import TICK_ID
from functions.store import envstore, install, runtime, tenants
from onesim.sandbox import GUEST_USER
from tests.stack import Stack, wait_for
from tests.unit.test_confschema_limits import hostile_rb

RATE, BURST = 6, 10             # callbacks a minute per VM, and at once (a flood's refill is one per 10 s)
QUOTA = 96 * 1024               # upload bytes per service (the example files are about 26 KiB)
FILL = 16 * 1024                # bytes of each file the quota filler uploads (context files are stored base64)
FILL_STORED = 4 * -(-FILL // 3)
FLOOD = 60                      # callbacks the flooding VM sends as fast as it can
SPOOF_FROM = "127.0.0.66"       # a loopback address no VM has (the simulator's guests are 127.0.1.x)
PAIR = """
  'pair' => {
    :type => "compute", :endpoint => "onesim", :description => "a master and one slave",
    :master_template => "example", :master_context_script => "tomcat-master.sh",
    :master_context_var => "BALANCE_PORT=8080",
    :slave_template => "example", :slave_context_script => "tomcat-slave.sh", :num_slaves => 1,
    :slavedata => "8080", :adminuser => "root", :drain_time => 0, :app_url => "http://%MASTER%:8080/gwt-petstore",
  },
"""
PROBE_ENV = """
  'probe' => {
    :type => "compute", :endpoint => "onesim", :description => "a curious master",
    :master_template => "example", :master_context_script => "probe.sh",
    :master_context_var => "\\"PROBE_REDIS=@REDIS@, PROBE_HOME=@HOME@, PROBE_PORT=@PORT@\\"",
    :adminuser => "root", :drain_time => 0,
  },
  'lone' => {
    :type => "compute", :endpoint => "onesim", :description => "a master alone (it will flood)",
    :master_template => "example", :master_context_script => "tomcat-master.sh",
    :master_context_var => "BALANCE_PORT=8080", :adminuser => "root", :drain_time => 0,
  },
"""
PROBE = b"""#!/bin/sh
# A curious tenant's master: what can it reach of the controller? It writes what it saw to $HOME/observed,
# then reports MASTER_INIT_DONE like any master.
. "$(dirname "$0")/carina-lib.sh"
case "${1:-init}" in init) ;; *) exit 0 ;; esac
try() { if "$@" >/dev/null 2>&1; then echo allowed; else echo refused; fi; }
tcp=$(bash -c 'exec 3<>/dev/tcp/127.0.0.1/'"$PROBE_PORT"' || exit 1
printf "PING\\r\\n" >&3; IFS= read -r -t 5 line <&3; printf "%s" "$line"' 2>&1 | tr -d '\\r')
{
  echo "user=$(id -un)"
  echo "password=$(try cat "$PROBE_REDIS/redis.pass")"
  echo "authconf=$(try cat "$PROBE_REDIS/redis-auth.conf")"
  echo "aof=$(try ls "$PROBE_REDIS/appendonlydir")"
  echo "admintoken=$(try cat "$PROBE_HOME/admin.token")"
  echo "redis=$tcp"
} > "$HOME/observed.part"
mv "$HOME/observed.part" "$HOME/observed"
appstatus MASTER_INIT_DONE
"""


def _isolation_missing() -> str:
    """Why guests cannot run as the guest user here ('' when they do)."""
    if os.geteuid() != 0:
        return f"guests run as {GUEST_USER} only when the simulator is root (this test runs as uid {os.geteuid()})"
    try:
        pwd.getpwnam(GUEST_USER)
    except KeyError:
        return f"no user {GUEST_USER} on this machine (`make setup` as root creates it)"
    return ""


@dataclass
class Attacked:
    """The stack after the attacks, with what each attack saw."""

    st: Stack
    tokens: dict[str, str]
    healthy: str                                 # service A's environment
    flooder: str                                 # the flooding tenant's environment (its master floods)
    before: dict[str, Any]                       # the healthy env's state before the attacks
    seen: dict[str, Any] = field(default_factory=dict)


def _send(st: Stack, method: str, path: str, token: str = "", data: bytes | None = None,
          source: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one HTTP request, errors included; `source` binds the client address."""
    conn = http.client.HTTPConnection("127.0.0.1", st.port, timeout=30,
                                      source_address=(source, 0) if source else None)
    headers = {"Accept": "application/json", "Content-Type": "application/octet-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _create(st: Stack, token: str, name: str) -> tuple[str, str]:
    out = st.oneenv(token, "--create", name).stdout
    answer = json.loads(out[out.index("{"):])
    return str(answer["envid"]), str(answer["jobid"])


def _done(st: Stack, jobid: str, timeout: float = 120) -> None:
    job = wait_for(lambda: (j := st.job(jobid)).get("status") in ("DONE", "FAIL", "ABORT") and j, timeout,
                   f"job {jobid}", stack=st)
    assert job["status"] == "DONE", job


# ------------------------------------------------------------------ the attacks (each returns what it saw)

def _noauth(st: Stack) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", st.redis.port), timeout=5) as s:
        s.sendall(b"PING\r\nKEYS *\r\nCONFIG GET requirepass\r\n")
        answer = b""
        while answer.count(b"\r\n") < 3:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    try:
        redis.Redis.from_url(st.redis.anonymous_url).set("carina:attacker", "x")
        client = "accepted"
    except redis.AuthenticationError as exc:
        client = f"refused: {exc}"
    return {"raw": answer.decode(errors="replace"), "client": client}


def _flood(st: Stack, envid: str) -> dict[str, Any]:
    rec = envstore.get_vms(st.r, envid)["m"]
    token = vm_token(install.callback_secret(st.r), envid, "m", rec.nonce)
    codes: list[int] = []
    refusal: tuple[dict[str, str], bytes] | None = None
    started = time.monotonic()
    for i in range(FLOOD):
        code, headers, body = _send(st, "GET", f"/cgi-bin/updateappstatus.sh?service=mallory&vmid={rec.vmid}"
                                                f"&envid={envid}&status=APP_FLOOD_{i}&token={token}")
        codes.append(code)
        if code == 429 and refusal is None:
            refusal = (headers, body)
    return {"codes": codes, "refusal": refusal, "seconds": time.monotonic() - started, "vmid": rec.vmid}


def _fill_quota(st: Stack, token: str) -> dict[str, Any]:
    stored: list[str] = []
    for i in range(20):
        name = f"fill{i}.sh"
        code, _, body = _send(st, "POST", f"/configs?name={name}", token, b"#" * FILL)
        if code != 200:
            return {"code": code, "body": json.loads(body), "stored": stored, "refused": name}
        stored.append(name)
    return {"code": 200, "stored": stored}


def _hostile_config(st: Stack, token: str) -> dict[str, Any]:
    code, _, body = _send(st, "POST", "/configs?name=config.rb", token, hostile_rb(2000).encode())
    return {"code": code, "size": len(body), "body": json.loads(body)}


def _curious_guest(st: Stack, token: str) -> dict[str, Any]:
    """A tenant's new environment whose master's context script probes the controller (see PROBE)."""
    envid, jobid = _create(st, token, "probe")
    _done(st, jobid)
    return {"envid": envid}


def _repo(st: Stack) -> dict[str, Any]:
    """An outsider browsing the public context repo for what it must not serve."""
    paths = ["/repo/oneenv1/context/config.rb", "/repo/oneenv1/context/example.vm", "/repo/nosuch/context/init.sh",
             "/repo/oneenv1/context/.hidden", "/repo/oneenv1/context/missing.sh"]
    answers = {p: _send(st, "GET", p) for p in paths}
    unrouted = [_send(st, "GET", f"/repo/{svc}/context/..%2Fconfig.rb") for svc in ("oneenv1", "nosuch")]
    public = _send(st, "GET", "/repo/oneenv1/context/init.sh")
    return {"refused": {p: (code, body) for p, (code, _, body) in answers.items()}, "public": public[0],
            "unrouted": [(code, body) for code, _, body in unrouted]}


def _spoof(st: Stack, envid: str) -> dict[str, Any]:
    master = envstore.get_vms(st.r, envid)["m"]
    code, _, body = _send(st, "GET", f"/cgi-bin/updateappstatus.sh?service=oneenv1&vmid={master.vmid}"
                                     f"&envid={envid}&status=MASTER_INIT_FAIL", source=SPOOF_FROM)
    return {"code": code, "body": json.loads(body), "one_ip": master.one_ip}


# ------------------------------------------------------------------ the stack, attacked once for the module

def _snapshot(st: Stack, token: str, envid: str) -> dict[str, Any]:
    env = st.env_state(envid) or {}
    return {"status": env.get("status"), "policy_status": env.get("policy_status"),
            "vms": {s: (v.vmid, v.nonce, v.state) for s, v in envstore.get_vms(st.r, envid).items()},
            "events": [e["id"] for e in envstore.list_events(st.r, envid)],
            "jobs": sorted(j["jobid"] for j in st.http("GET", "/jobs", token) if str(j.get("envid")) == envid)}


def _traversable_workdir() -> Path:
    """A stack directory everybody may traverse (unlike pytest's 0700 ones), so a guest is stopped by the
    controller's own modes (Redis' directory 0700, its files 0600), not by a parent the test happens to use."""
    base = Path(tempfile.mkdtemp(prefix="carina-security-", dir="/var/tmp")).resolve()
    base.chmod(0o755)
    return base


@pytest.fixture(scope="module")
def attacked() -> Iterator[Attacked]:
    base = _traversable_workdir()
    env = {"CARINA_CREATE_DEADLINE": "120", "CARINA_LEGACY_CALLBACKS": "yes", "CARINA_CALLBACK_RATE": str(RATE),
           "CARINA_CALLBACK_BURST": str(BURST), "CARINA_UPLOAD_QUOTA": str(QUOTA)}
    try:
        with Stack(base / "stack", workers=2, env=env) as st:
            st.start_scheduler(tick_every=1)
            yield _attack(st)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _attack(st: Stack) -> Attacked:
    tokens = {name: st.add_service(name) for name in ("oneenv1", "other", "mallory", "hostile")}
    tenants.ensure_admin_token(st.r, st.workdir / "home")         # CARINA_HOME holds the admin token
    st.upload_example(tokens["oneenv1"], PAIR)
    st.upload_example(tokens["other"], PAIR)
    probe_env = PROBE_ENV.replace("@REDIS@", str(st.redis.workdir)).replace("@HOME@", str(st.workdir / "home"))
    probe_env = probe_env.replace("@PORT@", str(st.redis.port))
    st.upload_example(tokens["mallory"], probe_env, files={"probe.sh": PROBE})
    healthy, healthy_job = _create(st, tokens["oneenv1"], "pair")
    flooder, flooder_job = _create(st, tokens["mallory"], "lone")
    _done(st, healthy_job)
    _done(st, flooder_job)
    wait_for(lambda: all(v.one_ip and v.init == "done" for v in envstore.get_vms(st.r, healthy).values()), 90,
             "every healthy VM's init report applied and OpenNebula's address recorded", stack=st)
    out = Attacked(st, tokens, healthy, flooder, _snapshot(st, tokens["oneenv1"], healthy))
    attacks: dict[str, Callable[[], dict[str, Any]]] = {
        "noauth": lambda: _noauth(st), "flood": lambda: _flood(st, flooder),
        "guest": lambda: _curious_guest(st, tokens["mallory"]),
        "quota": lambda: _fill_quota(st, tokens["mallory"]), "hostile": lambda: _hostile_config(st, tokens["hostile"]),
        "spoof": lambda: _spoof(st, healthy), "repo": lambda: _repo(st)}
    with ThreadPoolExecutor(len(attacks)) as pool:
        futures = {name: pool.submit(fn) for name, fn in attacks.items()}
        out.seen = {name: f.result(timeout=120) for name, f in futures.items()}
    return out


# ------------------------------------------------------------------ each attack is refused

def test_an_unauthenticated_redis_client_gets_noauth(attacked: Attacked) -> None:
    seen = attacked.seen["noauth"]
    assert seen["raw"].count("-NOAUTH") == 3, seen["raw"]
    assert seen["client"].startswith("refused: "), seen["client"]              # redis-py: AuthenticationError
    assert attacked.st.r.get("carina:attacker") is None


@pytest.mark.skipif(bool(_isolation_missing()), reason=_isolation_missing() or "-")
def test_a_curious_guest_reads_nothing_of_the_controller(attacked: Attacked) -> None:
    st = attacked.st
    vmid = envstore.get_vms(st.r, attacked.seen["guest"]["envid"])["m"].vmid
    found = list(st.guest_root.glob(f"vm-{vmid}/home/*/observed"))
    assert len(found) == 1, list(st.guest_root.glob("*/home/*"))
    seen = dict(line.split("=", 1) for line in found[0].read_text().splitlines())
    assert seen["user"] == GUEST_USER
    assert (seen["password"], seen["authconf"], seen["aof"], seen["admintoken"]) == ("refused",) * 4, seen
    assert (st.redis.workdir / "redis.pass").is_file() and (st.workdir / "home" / "admin.token").is_file()
    assert seen["redis"].startswith("-NOAUTH"), seen["redis"]
    assert st.redis.password not in found[0].read_text()


def test_a_flooding_vm_gets_429_and_queues_at_most_its_burst(attacked: Attacked) -> None:
    st, seen = attacked.st, attacked.seen["flood"]
    codes = seen["codes"]
    accepted = codes.count(200)
    assert codes[0] == 200 and codes[-1] == 429                                  # the burst, then 429s
    assert accepted <= BURST + 1 + int(seen["seconds"] * RATE / 60)            # refill: one per 10 s
    headers, body = seen["refusal"]
    doc = json.loads(body)
    assert headers["content-type"].startswith("application/json") and 1 <= int(headers["retry-after"]) <= 10
    assert doc["title"] == "Too many callbacks" and doc["description"].startswith(f"vmid: VM {seen['vmid']} ")

    def flood_events() -> list[dict[str, str]]:
        return [e for e in envstore.list_events(st.r, attacked.flooder) if "APP_FLOOD_" in e.get("msg", "")]
    wait_for(lambda: len(flood_events()) == accepted, 60, "the accepted callbacks applied", stack=st)
    throttled = [e for e in envstore.list_events(st.r, attacked.flooder) if e["type"] == "callback_throttled"]
    assert len(throttled) == 1 and throttled[0]["vmid"] == str(seen["vmid"])


def test_a_service_filling_its_quota_gets_413_with_its_usage(attacked: Attacked) -> None:
    st, seen = attacked.st, attacked.seen["quota"]
    assert seen["code"] == 413, seen
    doc = seen["body"]
    assert doc["title"] == "Upload quota exceeded" and (doc["quota"], doc["size"]) == (QUOTA, FILL_STORED)
    assert doc["usage"] <= QUOTA < doc["usage"] + doc["size"]
    assert f"{doc['usage']} of its {QUOTA} bytes" in doc["description"]
    files = st.http("GET", "/files", attacked.tokens["mallory"])["context"]
    assert set(seen["stored"]) <= set(files) and seen["refused"] not in files
    assert "fill0.sh" not in st.http("GET", "/files", attacked.tokens["oneenv1"])["context"]


def test_a_hostile_config_gets_a_capped_error_list(attacked: Attacked) -> None:
    seen = attacked.seen["hostile"]
    assert seen["code"] == 422 and seen["size"] < 20_000
    errors = seen["body"]["errors"]
    total = int(seen["body"]["description"].split("(")[1].split()[0])
    assert total > 4000 and len(errors) <= 51
    assert errors[-1] == f"... and {total - len(errors) + 1} more errors"


def test_a_spoofed_legacy_callback_is_refused(attacked: Attacked) -> None:
    seen = attacked.seen["spoof"]
    assert seen["one_ip"] and seen["one_ip"] != SPOOF_FROM
    assert seen["code"] == 403
    assert seen["body"]["description"] == ("address: a callback without a token is accepted only from the VM's "
                                           "own address (as OpenNebula reports it)")


def test_the_context_repo_serves_context_files_only_with_one_404(attacked: Attacked) -> None:
    seen = attacked.seen["repo"]
    assert seen["public"] == 200                                     # context files are public, by design
    bodies = {body for _, body in seen["refused"].values()}
    assert {code for code, _ in seen["refused"].values()} == {404} and len(bodies) == 1, seen["refused"]
    assert json.loads(bodies.pop())["description"] == "no such context file"
    (known, unknown) = seen["unrouted"]                             # an encoded "/" matches no route: the
    assert known == unknown and known[0] == 404                     # gateway's 404, whatever the service


# ------------------------------------------------------------------ nothing else was disturbed

def test_the_healthy_environment_and_the_rest_of_the_stack_are_undisturbed(attacked: Attacked) -> None:
    st, envid, before = attacked.st, attacked.healthy, attacked.before
    after = _snapshot(st, attacked.tokens["oneenv1"], envid)
    assert (after["status"], after["policy_status"], after["vms"]) == (
        before["status"], before["policy_status"], before["vms"]), (before, after, st.events(envid))
    assert after["policy_status"] == "ACTIVE"
    assert after["jobs"] == before["jobs"]                                         # the create, nothing more
    new = [e for e in envstore.list_events(st.r, envid) if e["id"] not in set(before["events"])]
    assert [(e["type"], e["msg"].split(":")[0]) for e in new] == [("callback_refused", "callback refused")]
    assert "address" in new[0]["msg"]
    assert st.slots_of(envid) == ["m", "s0"]
    assert {v.short_status() for v in st.vms_of(envid)} == {"runn"}
    vms = envstore.get_vms(st.r, envid)
    assert st.ssh_show("oneenv1", envid) == [f"{vms['s0'].ip}:8080"]              # still announced

    other, jobid = _create(st, attacked.tokens["other"], "pair")                  # service B is served
    _done(st, jobid)
    assert (st.env_state(other) or {}).get("policy_status") == "ACTIVE"

    st.r.set("carina:test:writable", "yes")                                         # Redis takes writes
    assert st.r.get("carina:test:writable") == "yes"
    assert st.r.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    assert st.workers and all(w.poll() is None for w in st.workers)                # no worker died
    raw = redis.Redis.from_url(st.redis.url)
    queues = runtime.worker_queues(runtime.JsonQueue("carina", connection=raw))
    assert {q.name: FailedJobRegistry(queue=q).count for q in queues} == {q.name: 0 for q in queues}
    _assert_the_scheduler_ticks(st, raw)


def _assert_the_scheduler_ticks(st: Stack, raw: redis.Redis) -> None:
    assert st.procs["scheduler"].poll() is None

    def ended() -> Any:
        try:
            return runtime.JsonJob.fetch(TICK_ID, connection=raw).ended_at
        except NoSuchJobError:                       # between two runs the job may be briefly absent
            return None
    first = wait_for(ended, 30, "a finished tick job", stack=st)
    wait_for(lambda: (now := ended()) is not None and now > first, 30, "the next tick job", stack=st)

