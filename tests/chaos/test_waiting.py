"""Waiting costs nothing and periodic work never starves (issue 15), with real processes: redis-server, the
simulator (synthetic guests, zero delays), gunicorn, `worker.py` and `python -m functions.schedule`.

1. A backlog of thousands of ordinary jobs on the work queue: the minute tick (high-priority queue) and a
   callback (callbacks queue) are taken long before the backlog drains; the in-process worker still ends a
   job that overruns its timeout.
2. The run of the issue, scaled down: 200 single-VM creates at once with room for 144 VMs. The 144 finish,
   the 56 others wait without polling (a handful of drives each), say why they wait, and FAIL at their
   deadline; the work queue stays short while they wait; the minute tick runs every minute.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from functions.schedule import TICK_ID
from functions.store import envstore, keys, runtime
from functions.store.runtime import JsonQueue
from tests.harness import RedisServer, project_env
from tests.stack import ROOT, Stack, wait_for

pytestmark = pytest.mark.slow

BACKLOG = 4000


# ---------------------------------------------------------------- 1. the tick and callbacks jump the backlog


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis", appendfsync="everysec").start()
    yield srv
    srv.stop()


def _start(args: list[str], url: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=project_env(REDIS_URL=url),
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_the_tick_and_a_callback_are_taken_before_a_backlog_of_thousands_drains(server: RedisServer,
                                                                                 tmp_path: Path) -> None:
    raw = redis.Redis.from_url(server.url)
    base = JsonQueue("carina", connection=raw)
    with raw.pipeline() as p:                                   # thousands of ordinary jobs, 10 ms each
        for i in range(BACKLOG):
            base.enqueue("time.sleep", 0.01, job_id=f"bulk-{i}", result_ttl=0, pipeline=p)
        p.execute()
    assert base.count == BACKLOG
    callback = runtime.sibling(base, runtime.CALLBACKS).enqueue("functions.views.tables.render_table", ["A"], [])
    worker = _start(["worker.py", "--name", f"prio-{time.time_ns()}"], server.url, tmp_path / "worker.log")
    scheduler = _start(["-m", "functions.schedule", "--interval", "1", "--tick-every", "1"], server.url,
                       tmp_path / "scheduler.log")
    text = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        def ticked() -> int | None:                              # the first tick claims the minute it runs in
            minute = int(time.time() // 60)
            return next((m for m in (minute, minute - 1) if text.exists(keys.tick("minute", m))), None)

        wait_for(ticked, 60, "the minute tick to run")
        # the tick claims its minute as it starts, so the callback may still be next in line: wait for it too
        wait_for(lambda: callback.get_status(refresh=True) == "finished", 20, "the callback to run")
        left = base.count                                       # read right after both ran
        assert left > BACKLOG // 3, f"the tick and the callback waited until the backlog was down to {left} jobs"
        tick_job = runtime.sibling(base, runtime.HIGH).fetch_job(TICK_ID)
        assert tick_job is not None and tick_job.origin == runtime.queue_name("carina", runtime.HIGH)
    finally:
        _stop(scheduler)
        _stop(worker)
        raw.close()
        text.close()


def test_the_in_process_worker_still_enforces_a_job_timeout(server: RedisServer, tmp_path: Path) -> None:
    raw = redis.Redis.from_url(server.url)
    base = JsonQueue("carina", connection=raw)
    stuck = base.enqueue("time.sleep", 60, job_timeout=1)       # RQ's SIGALRM death penalty, no fork needed
    after = base.enqueue("functions.views.tables.render_table", ["A"], [["1"]])
    worker = _start(["worker.py", "--burst", "--name", f"timeout-{time.time_ns()}"], server.url,
                    tmp_path / "worker.log")
    try:
        assert worker.wait(40) == 0                              # the burst ended: the stuck job did not hang it
    finally:
        _stop(worker)
    stuck = base.fetch_job(stuck.id)
    assert stuck.get_status() == "failed" and "JobTimeoutException" in (stuck.latest_result().exc_string or "")
    assert base.fetch_job(after.id).get_status() == "finished"   # and the worker went on with the next job
    raw.close()


# ---------------------------------------------------------------- 2. the run, scaled down

N_ENVS, FIT = 200, 144          # 144 VMs of 64 MB fit two hosts of 4608 MB; 56 stay PENDING
DEADLINE = 100                  # CARINA_CREATE_DEADLINE (seconds)
INVENTORY = """default_rank: "- RUNNING_VMS"
hosts:
  - {name: host0, cores: 16, memory_mb: 4608}
  - {name: host1, cores: 16, memory_mb: 4608}
networks:
  - {id: 0, name: loopback, bridge: lo, ip_start: 127.0.1.1, size: 65000, gateway: 127.0.0.1, dns: 127.0.0.1,
     mask: 255.0.0.0}
images:
  - {id: 0, name: debian12, size_mb: 2048}
"""
TINY = """  'tiny' => {
    :file => 'example.vm', :cpu => 0.1, :memory => 64, :network_id => { 'onesim' => 0 }, :image_id => { 'onesim' => 0 },
  },
"""
SOLO = """  'solo' => {
    :type => "compute", :endpoint => "onesim", :description => "master only", :master_template => "tiny",
    :master_context_script => "tomcat-master.sh", :master_setup_time => 0, :master_context_var => "PORT=8080",
    :slave_template => "tiny", :num_slaves => 0, :adminuser => "root", :app_url => "http://%MASTER%:8080/",
  },
"""


class SmallCloud(Stack):
    """The stack with synthetic guests (the simulator makes each VM's callbacks) and a small inventory."""

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        if name == "onesim":
            (self.workdir / "inventory.yaml").write_text(INVENTORY)
            args = ["synthetic" if a == "process" else a for a in args]
            args += ["--inventory", str(self.workdir / "inventory.yaml")]
        return super()._spawn(name, args)


class Watcher:
    """Samples, every half second: the work queue's length, and the minutes the tick has run in."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self.samples: list[tuple[float, int]] = []
        self.minutes: set[int] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(0.5):
            now = time.time()
            self.samples.append((now, int(self.r.llen("rq:queue:carina"))))
            for m in range(int(now // 60) - 2, int(now // 60) + 1):
                if self.r.exists(keys.tick("minute", m)):
                    self.minutes.add(m)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def _jobs(r: redis.Redis, envids: list[str]) -> dict[str, str]:
    """envid -> status of its create job."""
    out = {}
    for envid in envids:
        jobid = r.hget(keys.env(envid), "job") or ""
        out[envid] = r.hget(keys.job(jobid), "status") or "?"
    return out


def _post(stack: Stack, token: str, n: int) -> list[str]:
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=60)
    envids = []
    for _ in range(n):
        conn.request("POST", "/configs/solo", headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 202, body
        envids.append(json.loads(body)["envid"])
    conn.close()
    return envids


def test_unplaceable_creates_wait_without_polling_and_fail_at_their_deadline(tmp_path: Path) -> None:
    env = {"CARINA_CREATE_DEADLINE": str(DEADLINE)}
    with SmallCloud(tmp_path / "stack", workers=1, sim_delay=0.0, env=env) as stack:
        stack.start_scheduler(tick_every=5)
        token = stack.add_service("crowd")
        stack.upload_example(token)
        text = re.sub(r"TEMPLATE = \{\n", "TEMPLATE = {\n" + TINY, stack.example_config(SOLO), count=1)
        stack.upload(token, "config.rb", text.encode())
        sampler = Watcher(stack.r)
        try:
            envids = _post(stack, token, N_ENVS)
            jobs = wait_for(lambda: (s := _jobs(stack.r, envids)) and sum(v == "DONE" for v in s.values()) >= FIT
                            and s, 150, "the creates that fit to finish", every=1.0, stack=stack)
            all_done = time.time()
            waiting = [e for e, status in jobs.items() if status != "DONE"]
            assert len(waiting) == N_ENVS - FIT and all(jobs[e] == "RUNNING" for e in waiting)
            for envid in waiting:                                # they say why they wait
                wait_for(lambda e=envid: stack.env_state(e)["status"] == "PENDING: hosts full", 30,
                         f"env {envid} to show why it waits", stack=stack)
            wait_for(lambda: all(v == "FAIL" for v in _jobs(stack.r, waiting).values()), DEADLINE + 90,
                     "the unplaceable creates to fail at their deadline", every=1.0, stack=stack)
            first_fail = min(float(envstore.get_job(stack.r, stack.r.hget(keys.env(e), "job"))["end"])
                             for e in waiting)
            end = time.time()
            wait_for(lambda: stack.r.exists(keys.tick("minute", int(end // 60))), 30,   # a new minute's tick runs
                     "the tick of the minute the wait ended in", every=0.5, stack=stack)  # within seconds of it
            time.sleep(0.6)                                                           # the sampler's next look
        finally:
            sampler.close()
        for envid in waiting:
            env_now = stack.env_state(envid) or {}
            assert env_now["status"] == "CREATE_TIMEOUT"
            assert "OpenNebula could not place master VM" in envstore.get_job(stack.r, env_now["job"])["info"]
            events = stack.events(envid)
            assert sum("cannot place it: Cannot dispatch VM: No host with enough capacity" in e for e in events) == 1
        log = "\n".join(p.read_text(errors="replace") for p in sorted(stack.workdir.glob("worker*.log")))
        drives = {e: len(re.findall(rf": carina: drive env {e} \(", log)) for e in waiting}
        assert max(drives.values()) <= 5, drives             # allocate, the message, the deadline: no polling
        quiet = [n for t, n in sampler.samples if all_done < t < first_fail - 2]
        assert len(quiet) >= 20 and max(quiet[-10:]) <= 5, quiet   # once caught up, nothing piles up
        minutes = range(int(all_done // 60), int(end // 60) + 1)
        assert set(minutes) <= sampler.minutes, (sorted(sampler.minutes), list(minutes))
