"""A worker and a scheduler survive repeated Redis kill -9 / restarts (AOF) and keep working afterwards."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from functions.engine import kick as lifecycle
from functions.model.clock import FakeClock
from functions.store import envstore
from functions.store.runtime import JsonQueue
from tests.harness import RedisServer, project_env
from tests.stack import ROOT, wait_for

pytestmark = pytest.mark.slow

CRASHES = 6


def test_worker_and_scheduler_survive_redis_restarts(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    env = project_env(REDIS_URL=server.url, CARINA_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("worker", "scheduler")}  # noqa: SIM115
    procs = [subprocess.Popen([sys.executable, "worker.py", "--name", "survivor"], cwd=ROOT, env=env,
                              stdout=logs["worker"], stderr=subprocess.STDOUT),
             subprocess.Popen([sys.executable, "-m", "functions.schedule", "--interval", "1"], cwd=ROOT, env=env,
                              stdout=logs["scheduler"], stderr=subprocess.STDOUT)]
    try:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        wait_for(lambda: r.exists("rq:worker:survivor"), 20, "the worker to register")
        for _ in range(CRASHES):
            server.kill()
            time.sleep(0.3)                  # down long enough for every client to notice
            server.start()
            time.sleep(0.7)
        assert [p.poll() for p in procs] == [None, None], (tmp_path / "worker.log").read_text()[-3000:]
        # still working: an environment recorded now is driven (its env has no spec: the drive records an error)
        r = redis.Redis.from_url(server.url, decode_responses=True)
        envid, _ = envstore.create_env(r, "svc", "tomcat", {}, "CREATE", FakeClock())
        lifecycle.kick(JsonQueue("carina", connection=redis.Redis.from_url(server.url)), envid)
        wait_for(lambda: any(e["type"] == "error" for e in envstore.list_events(r, envid)), 20,
                 "the drive to run after the restarts")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs.values():
            log.close()
        server.stop()
