"""(b) RQ: enqueue→done latency and jobs/s of Carina's JSON queue with one real worker (`worker.py`)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import redis

from bench.common import Row, latency_rows, wait_until
from functions.store.runtime import JsonQueue
from tests.harness import project_env

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "carina-bench"
NOOP = "bench.jobs.noop"
# stack-notes §5, forking rq.Worker (the class worker.py runs): latency p50 < 30 ms, >= 50 jobs/s per worker.
LATENCY_TARGET = "< 30"
RATE_TARGET = "> 50"


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


def run(redis_url: str, workdir: Path, quick: bool) -> tuple[list[Row], subprocess.Popen[bytes]]:
    """Latency (one job at a time) and throughput (a burst); returns the rows and the worker (still running)."""
    conn = redis.Redis.from_url(redis_url, socket_timeout=10)
    queue = JsonQueue(QUEUE, connection=conn)
    worker = start_worker(redis_url, workdir / "bench-worker.log")
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
    rows = latency_rows("rq enqueue->done", samples, LATENCY_TARGET)
    burst = 150 if quick else 1000
    start = time.perf_counter()
    jobs = [queue.enqueue(NOOP, result_ttl=60) for _ in range(burst)]
    if jobs[-1].latest_result(timeout=4) is None:
        wait_until(lambda: jobs[-1].get_status() == "finished", 120, every=0.05)
    elapsed = time.perf_counter() - start
    rows.append(Row("rq throughput, 1 worker", burst / elapsed, "jobs/s", RATE_TARGET, f"{burst} jobs"))
    conn.close()
    return rows, worker
