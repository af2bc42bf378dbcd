"""Real servers for tests: redis-server on a free loopback port, and helpers to wait for ports.

No mocks: every test that touches state talks to a real redis-server started here. It requires a password, as
the Procfile's does (generated into its data directory by config.redisauth): clients get it through `url`, or
through `url_of` / `twin` from a client they already have.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import redis

from config.redisauth import auth_conf, redis_password

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago and that this process has not handed out before: the
    kernel may give the same free port to two binds in a row (a Procfile test once got one port for Redis and the
    gateway)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 15.0) -> None:
    """Block until something accepts TCP connections on host:port, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def url_of(client: redis.Redis) -> str:
    """The redis:// URL (password included) of the server and database `client` talks to."""
    kw = client.connection_pool.connection_kwargs
    auth = f":{quote(kw['password'], safe='')}@" if kw.get("password") else ""
    return f"redis://{auth}{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def twin(client: redis.Redis, decode: bool = False) -> redis.Redis:
    """A new client of the same server and database (bytes unless `decode`), e.g. the raw one RQ needs."""
    return redis.Redis.from_url(url_of(client), decode_responses=decode)


class RedisServer:
    """A redis-server process on loopback with AOF on, data in `workdir` (made 0700), requiring the password of
    `workdir`/redis.pass (created if missing, kept across restarts), as the Procfile's Redis does."""

    def __init__(self, workdir: Path, port: int | None = None, appendfsync: str = "always") -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def password(self) -> str:
        return redis_password(self.workdir)

    @property
    def url(self) -> str:
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/0"

    @property
    def anonymous_url(self) -> str:
        """The URL without the password (its clients get NOAUTH)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        conf = auth_conf(self.workdir)
        self.proc = subprocess.Popen(
            [exe, "--include", str(conf), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.workdir), "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "",
             "--protected-mode", "yes", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL the server (a crash, not a shutdown)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def guest_root() -> Path:
    """A fresh directory for a simulator's guest sandboxes (ONESIM_GUEST_ROOT) under /var/tmp, mode 0711: the
    guest user can reach it there, unlike pytest's 0700 temporary directories. The caller removes it."""
    root = Path(tempfile.mkdtemp(prefix="onesim-test-guests-", dir="/var/tmp")).resolve()
    root.chmod(0o711)
    return root


def project_env(**extra: str) -> dict[str, str]:
    """os.environ plus PYTHONPATH at the project root and `extra`, for subprocesses."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env
