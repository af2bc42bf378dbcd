"""The Procfile's redis line, run as honcho runs it (`sh -c`): Redis requires the password of CARINA_HOME (generated
there, 0600, CARINA_HOME 0700), listens on loopback only, and the password is not on its command line; a client
without it gets NOAUTH, Carina's settings (no REDIS_URL) get in."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from config.redisauth import AUTH_CONF, PASSWORD_FILE
from config.settings import Settings
from tests.harness import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]


def procfile_line(name: str) -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} line in the Procfile")


@pytest.fixture
def procfile_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str]]]:
    env = {**{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PYTHONPATH")},
           "CARINA_HOME": str(tmp_path / "home"), "REDIS_PORT": str(free_port()),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(["/bin/sh", "-c", procfile_line("redis")], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(int(env["REDIS_PORT"]))
        yield proc, env
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_procfile_redis_requires_the_password(procfile_redis: tuple[subprocess.Popen[bytes],
                                                                        dict[str, str]]) -> None:
    proc, env = procfile_redis
    home, port = Path(env["CARINA_HOME"]), int(env["REDIS_PORT"])
    password = (home / PASSWORD_FILE).read_text().strip()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / PASSWORD_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE((home / AUTH_CONF).stat().st_mode) == 0o600

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:     # any local client, no password
        s.sendall(b"PING\r\nGET anything\r\n")
        answer = b""
        while answer.count(b"\r\n") < 2:
            chunk = s.recv(4096)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"-NOAUTH") and answer.count(b"-NOAUTH") == 2, answer
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()

    r = redis.Redis.from_url(Settings.from_env(env).redis_url, decode_responses=True)
    assert r.ping()
    assert r.config_get("bind")["bind"] == "127.0.0.1"
    assert r.config_get("protected-mode")["protected-mode"] == "yes"
    assert r.config_get("dir")["dir"] == str(home)
    assert password.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
