"""bin/carina-admin against the real Redis and bin/oneenv against a real gunicorn gateway subprocess."""

from __future__ import annotations

import json
import os
import queue
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from functions.model.clock import system_clock
from functions.store import envstore, guards, tenants
from tests.api.test_configs import EXAMPLES, SECRET, SMALL
from tests.harness import RedisServer, free_port, project_env, wait_port

ROOT = Path(__file__).resolve().parents[2]
ONEENV = ROOT / "bin" / "oneenv"
ADMIN = ROOT / "bin" / "carina-admin"


def admin(redis_server: RedisServer, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = project_env(REDIS_URL=redis_server.url, CARINA_HOME=str(home))
    return subprocess.run([sys.executable, str(ADMIN), *args], env=env, capture_output=True, text=True, timeout=60)


def test_carina_admin_manages_services(rdb, redis_server, tmp_path):
    res = admin(redis_server, tmp_path, "service", "add", "oneenv1", "--class", "gold")
    assert res.returncode == 0, res.stderr
    token = res.stdout.strip().splitlines()[-1]
    assert tenants.service_for_token(rdb, token) == "oneenv1"
    res = admin(redis_server, tmp_path, "service", "add", "oneenv1")
    assert res.returncode == 1 and "already exists" in res.stderr
    res = admin(redis_server, tmp_path, "service", "add", "bad/name")
    assert res.returncode == 1 and "name:" in res.stderr
    res = admin(redis_server, tmp_path, "service", "list")
    assert res.stdout.splitlines()[0].split() == ["NAME", "PRIORITY_CLASS", "MAX_MEMORY", "MAX_VCPUS"]
    assert res.stdout.splitlines()[2].split() == ["oneenv1", "gold", "0", "0"]
    res = admin(redis_server, tmp_path, "token", "rotate", "oneenv1")
    new = res.stdout.strip().splitlines()[-1]
    assert res.returncode == 0 and tenants.service_for_token(rdb, new) == "oneenv1"
    assert tenants.service_for_token(rdb, token) is None
    assert admin(redis_server, tmp_path, "service", "remove", "oneenv1").returncode == 0
    res = admin(redis_server, tmp_path, "service", "remove", "oneenv1")
    assert res.returncode == 1 and "no service" in res.stderr
    assert admin(redis_server, tmp_path, "service", "add", "x", "--class", "tin").returncode == 2


def test_carina_admin_admin_token(rdb, redis_server, tmp_path):
    first = admin(redis_server, tmp_path, "admin-token").stdout.strip()
    assert admin(redis_server, tmp_path, "admin-token").stdout.strip() == first
    assert stat.S_IMODE(os.stat(tmp_path / "admin.token").st_mode) == 0o600
    assert tenants.is_admin(rdb, first)


def test_carina_admin_reports_unreachable_redis(tmp_path):
    env = project_env(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", CARINA_HOME=str(tmp_path))
    res = subprocess.run([sys.executable, str(ADMIN), "service", "list"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 1 and "ConnectionError" in res.stderr


@pytest.fixture(scope="module")
def gateway(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real gunicorn serving the gateway; yields host:port."""
    port = free_port()
    home = tmp_path_factory.mktemp("carina-home")
    env = project_env(REDIS_URL=redis_server.url, CARINA_HOME=str(home))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py", "--bind", f"127.0.0.1:{port}",
         "--workers", "1", "--no-control-socket", "gateway:get_app()"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=30)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def oneenv(gateway: str, home: Path, *args: str, token: str | None = None, cwd: Path | None = None,
           **env: str) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ["PATH"], "HOME": str(home), "CARINA_IP": gateway, **env}
    if token is not None:
        full["CARINA_TOKEN"] = token
    sh = shutil.which("dash") or "/bin/sh"  # the strictest POSIX shell at hand
    return subprocess.run([sh, str(ONEENV), *args], env=full, cwd=cwd or home, capture_output=True, text=True,
                          timeout=60)


def test_oneenv_uploads_the_examples_and_lists_configs(rdb, gateway, tmp_path):
    token = tenants.add_service(rdb, "oneenv1")
    (tmp_path / "vm").mkdir()
    for vm in ("example.vm", "cassandra.vm"):
        shutil.copy(EXAMPLES / vm, tmp_path / "vm" / vm)
    shutil.copy(EXAMPLES / "config.rb", tmp_path / "config.rb")
    work = tmp_path / "work"
    work.mkdir()
    (work / "tomcat-master.sh").write_text("#!/bin/sh\necho master \"$@\"\n")
    # bare names are looked up in ~/config.rb and ~/vm/; templates go first whatever the order given
    res = oneenv(gateway, tmp_path, "--upload", "config.rb", "example.vm", "cassandra.vm", "tomcat-master.sh",
                 token=token, cwd=work)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[:3] == ["example.vm: OK", "cassandra.vm: OK", "tomcat-master.sh: OK"]
    assert lines[3].startswith("config.rb: OK (")
    res = oneenv(gateway, tmp_path, "--configs", token=token)
    assert res.returncode == 0
    out = res.stdout.splitlines()
    assert out[0].split() == ["NAME", "TYPE", "ENDPOINT", "DESCRIPTION"]
    assert set(out[1].split()) == {"-" * n for n in (4, 4, 8, 11)}
    assert any(line.split()[:3] == ["analytics", "group", "-"] for line in out[2:])
    res = oneenv(gateway, tmp_path, "-o", "-j", token=token)
    rows = json.loads(res.stdout)
    assert {"name": "tomcat", "type": "compute", "endpoint": "onesim",
            "description": "Load-balanced Tomcat cluster"} in rows
    assert res.stdout.startswith("[\n")  # pretty-printed


def test_oneenv_reads_the_token_file(rdb, gateway, tmp_path):
    token = tenants.add_service(rdb, "a")
    (tmp_path / ".carina_token").write_text(token + "\n")
    res = oneenv(gateway, tmp_path, "--services")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[2].split() == ["a", "silver", "0/0", "0/0", "NONE"]


def test_oneenv_exit_codes_and_messages(rdb, gateway, tmp_path):
    token = tenants.add_service(rdb, "a")
    res = oneenv(gateway, tmp_path, "--configs", token="wrong-token")
    assert res.returncode == 1
    assert "HTTP 401" in res.stderr and "Authentication required" in res.stderr
    (tmp_path / "example.vm").write_text("CPU = %CPU%\n")
    (tmp_path / "config.rb").write_text(SMALL.replace(":num_slaves", ":num_slave"))
    res = oneenv(gateway, tmp_path, "-U", "example.vm", "config.rb", token=token)
    assert res.returncode == 1
    assert "HTTP 422" in res.stderr and "num_slave: unknown key" in res.stderr
    assert SECRET not in res.stderr + res.stdout
    res = oneenv(gateway, tmp_path, "--configs", token=token, CARINA_IP=f"127.0.0.1:{free_port()}")
    assert res.returncode == 3 and "cannot reach the Carina gateway" in res.stderr
    res = oneenv(gateway, tmp_path, "--configs", token=token, CARINA_IP="127.0.0.1", CARINA_PORT=gateway.split(":")[1])
    assert res.returncode == 0
    assert oneenv(gateway, tmp_path, "--bogus", token=token).returncode == 2
    assert oneenv(gateway, tmp_path, "--scaleup", "12x", token=token).returncode == 2
    assert oneenv(gateway, tmp_path, "--scaleup", "-3", token=token).returncode == 2
    assert oneenv(gateway, tmp_path, "--create", token=token).returncode == 2
    res = oneenv(gateway, tmp_path, "--upload", "missing.vm", token=token)
    assert res.returncode == 2 and "missing.vm" in res.stderr
    res = oneenv(gateway, tmp_path, "--configs", token=token, CARINA_IP="")
    assert res.returncode == 2 and "CARINA_IP" in res.stderr
    res = oneenv(gateway, tmp_path, "--help")
    assert res.returncode == 0 and "--upload" in res.stdout


# ---------------------------------------------------------------- following operations (--wait, --follow)


class Lines:
    """A running `oneenv` whose stdout lines are read by a thread, to wait for a given line."""

    def __init__(self, gateway: str, home: Path, *args: str, token: str) -> None:
        env = {"PATH": os.environ["PATH"], "HOME": str(home), "CARINA_IP": gateway, "CARINA_TOKEN": token}
        sh = shutil.which("dash") or "/bin/sh"
        self.proc = subprocess.Popen([sh, str(ONEENV), *args], env=env, cwd=home, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, text: str, timeout: float = 30) -> str:
        """The first line containing `text` (lines before it are kept in `seen`); fails after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                err = self.proc.stderr.read() if self.proc.poll() is not None else "(still running)"
                raise AssertionError(f"no line with {text!r} after {timeout}s; seen: {self.seen}; "
                                     f"stderr: {err}") from None
            self.seen.append(line)
            if text in line:
                return line

    def finish(self, timeout: float = 40) -> tuple[int, str]:
        """(exit status, stderr) once it ends; the remaining stdout lines go to `seen`."""
        rc = self.proc.wait(timeout)
        err = self.proc.stderr.read()
        time.sleep(0)  # let the reader thread drain what is left
        while True:
            try:
                self.seen.append(self.lines.get(timeout=2))
            except queue.Empty:
                return rc, err


def _service_with_env(rdb) -> tuple[str, str, str]:
    """A service with a configuration and one environment whose create is recorded; (token, envid, jobid)."""
    from tests.api.test_env_routes import CONFIG

    token = tenants.add_service(rdb, "a")
    tenants.save_config(rdb, "a", CONFIG, "# source", "rb")
    tenants.save_vm_file(rdb, "a", "example.vm", 'NAME = "%NAME%"\n')
    envid, jobid = envstore.create_env(rdb, "a", "tomcat", {"endpoint": "onesim"}, "CREATE", system_clock)
    envstore.add_event(rdb, envid, "a", "request", f"create of 'tomcat' requested (job {jobid})", system_clock,
                       jobid=jobid)
    return token, envid, jobid


def _end_job(rdb, envid: str, jobid: str, status: str, info: str) -> None:
    """What the engine does when an operation ends: the job's final status, then its closing event."""
    envstore.finish_job(rdb, jobid, status, system_clock, info)
    guards.release_op(rdb, envid, jobid)
    envstore.update_env(rdb, envid, policy_status="ACTIVE")
    envstore.add_event(rdb, envid, "a", "step" if status == "DONE" else "error",
                       f"job {jobid} {status}: {info}", system_clock, job=jobid)


def test_oneenv_wait_prints_progress_and_exits_0_when_done(rdb, gateway, tmp_path):
    token, envid, first = _service_with_env(rdb)
    _end_job(rdb, envid, first, "DONE", "environment ready")
    run = Lines(gateway, tmp_path, "--scaleup", envid, "--wait", token=token)
    answer = run.expect('"jobid"')
    jobid = json.loads(answer)["jobid"]
    run.expect(f"scale up requested (job {jobid})")          # the request event, from the stream
    envstore.add_event(rdb, envid, "a", "step", "slave s2: VM 7 allocated", system_clock)
    run.expect("slave s2: VM 7 allocated")
    _end_job(rdb, envid, jobid, "DONE", "slave s2 added")
    rc, err = run.finish()
    assert rc == 0, err
    assert run.seen[-2].endswith(f"job {jobid} DONE: slave s2 added") and run.seen[-1] == f"job {jobid} DONE"


def test_oneenv_wait_exits_4_with_the_reason_when_the_job_fails(rdb, gateway, tmp_path):
    token, envid, first = _service_with_env(rdb)
    _end_job(rdb, envid, first, "DONE", "environment ready")
    run = Lines(gateway, tmp_path, "--wait", "--json", "--scaledown", envid, token=token)
    jobid = json.loads("".join(run.expect("}") and run.seen))["jobid"]   # --json pretty-prints the answer
    run.expect("scale down requested")
    _end_job(rdb, envid, jobid, "FAIL", "master refused: remove exited 3")
    rc, err = run.finish()
    assert rc == 4
    assert f"oneenv: job {jobid} FAIL: master refused: remove exited 3" in err
    assert run.seen[-1].endswith(f"job {jobid} FAIL: master refused: remove exited 3")


def test_oneenv_wait_gives_up_after_its_timeout(rdb, gateway, tmp_path):
    token, envid, first = _service_with_env(rdb)
    _end_job(rdb, envid, first, "DONE", "environment ready")
    run = Lines(gateway, tmp_path, "--scaleup", envid, "--wait", "--timeout", "2", token=token)
    rc, err = run.finish()
    assert rc == 5 and "has not ended after 2s (--timeout)" in err
    assert any("scale up requested" in line for line in run.seen)
    res = oneenv(gateway, tmp_path, "--create", "x", "--timeout", "soon", token=token)
    assert res.returncode == 2 and "--timeout: expected seconds" in res.stderr


def test_oneenv_follow_shows_an_event_that_arrives_after_it_started(rdb, gateway, tmp_path):
    token, envid, _ = _service_with_env(rdb)
    run = Lines(gateway, tmp_path, "--events", envid, "--follow", "--timeout", "60", token=token)
    assert run.expect("TIME").split() == ["TIME", "TYPE", "MESSAGE"]
    run.expect("create of 'tomcat' requested")
    envstore.add_event(rdb, envid, "a", "callback", "VM 3 (m) status=MASTER_INIT_DONE", system_clock)
    line = run.expect("status=MASTER_INIT_DONE")
    assert "callback" in line and line.split()[0].endswith("Z")
    run.proc.terminate()
    run.finish()


def test_oneenv_download_prints_the_event_log(rdb, gateway, tmp_path):
    token, envid, jobid = _service_with_env(rdb)
    envstore.add_event(rdb, envid, "a", "step", "master m: VM 0 allocated", system_clock, vmid="0", slot="m")
    for name in (envid, f"env.log.{envid}"):
        res = oneenv(gateway, tmp_path, "--download", name, token=token)
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        assert lines[0].endswith(f"create of 'tomcat' requested (job {jobid}) jobid={jobid}")
        assert lines[1].endswith("step     master m: VM 0 allocated vmid=0 slot=m")
    assert oneenv(gateway, tmp_path, "-D", "env.log.x", token=token).returncode == 2
