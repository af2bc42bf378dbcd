"""rq: enqueue→done latency and jobs/s of Carina's JSON queue with one real worker (`worker.py`, which runs jobs in
its own process) on a redis-server of its own."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import redis

from bench.common import Row, latency_rows, rss_mb, stop, wait_until
from functions.store.runtime import JsonQueue
from tests.harness import RedisServer, project_env

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "carina-bench"
NOOP = "bench.jobs.noop"
# Latency: stack-notes §5 (p50 under 30 ms); throughput: issue 12, "processing >= 150 jobs/s per worker".
LATENCY_TARGET = "< 30"
RATE_TARGET = ">= 150"


def start_worker(redis_url: str, log: Path) -> subprocess.Popen[bytes]:
    """`python worker.py` on the benchmark queue (its own queue: Carina's jobs are not disturbed)."""
    env = project_env(REDIS_URL=redis_url, CARINA_QUEUE=QUEUE, PYTHONUNBUFFERED="1")
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "worker.py", "--name", f"bench-{time.time_ns()}"], cwd=ROOT,
                                env=env, stdout=fh, stderr=subprocess.STDOUT)


def _wait_worker(conn: redis.Redis, queue: JsonQueue) -> None:
    job = queue.enqueue(NOOP)
    if job.latest_result(timeout=4) is None and wait_until(lambda: job.get_status() == "finished", 30) is None:
        raise RuntimeError("the benchmark worker did not run a job within 30 s (see its log)")


def measure(redis_url: str, quick: bool) -> list[Row]:
    """Latency (one no-op job at a time, after 20 warm-up jobs) and throughput (a burst enqueued back to back,
    until the last result) of the worker already serving QUEUE."""
    conn = redis.Redis.from_url(redis_url, socket_timeout=10)
    queue = JsonQueue(QUEUE, connection=conn)
    _wait_worker(conn, queue)
    samples = []
    for i in range(20 + (60 if quick else 200)):
        start = time.perf_counter()
        job = queue.enqueue(NOOP, result_ttl=60)
        result = job.latest_result(timeout=4)
        if result is None or result.type != result.Type.SUCCESSFUL:
            raise RuntimeError(f"job {job.id}: no successful result within 4 s")
        if i >= 20:
            samples.append((time.perf_counter() - start) * 1000)
    out = latency_rows("rq enqueue->done", samples, LATENCY_TARGET, size="no-op job, 1 worker")
    burst = 500 if quick else 3000
    start = time.perf_counter()
    jobs = [queue.enqueue(NOOP, result_ttl=60) for _ in range(burst)]
    if jobs[-1].latest_result(timeout=4) is None:
        if wait_until(lambda: jobs[-1].get_status() == "finished", 120, every=0.05) is None:
            raise RuntimeError(f"the last of {burst} jobs did not finish within 120 s")
    elapsed = time.perf_counter() - start
    out.append(Row("rq throughput", burst / elapsed, "jobs/s", RATE_TARGET, f"{elapsed:.1f} s",
                   f"{burst} no-op jobs, 1 worker"))
    conn.close()
    return out


def rows(workdir: Path, quick: bool) -> list[Row]:
    """The part for bench/run.py: a redis-server and one `worker.py` of its own, measure(), both stopped."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = RedisServer(workdir / "redis", appendfsync="everysec").start()
    try:
        worker = start_worker(server.url, workdir / "bench-worker.log")
        try:
            out = measure(server.url, quick)
            out.append(Row("RSS RQ worker (worker.py, after the burst)", rss_mb(worker.pid), "MiB"))
            return out
        finally:
            stop(worker)
    finally:
        server.stop()
