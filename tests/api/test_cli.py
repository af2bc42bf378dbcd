"""bin/carina-admin against the real Redis and bin/oneenv against a real gunicorn gateway subprocess."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from functions.store import tenants
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
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--no-control-socket",
         "gateway:get_app()"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
