"""Policy actions started in a burst (issue 12): a time window that opens for many environments at once makes the
minute's policy pass start thousands of jobs. N environments (ready, no operation running) on a redis-server of
its own; each gets a SCALEUP decided by a policy, started the way the pass starts them
(functions.ops.operations.request_policies, batches of policyread.BATCH), next to the same started one at a
time (request_policy, as the pass did before) on another N. Per action: the process CPU and the wall time; the
ratio column is batched / one at a time.

`python bench/policy_start_bench.py [--quick]`   (quick: 500 environments, full: 2,000)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench.common import Row, standalone  # noqa: E402
from functions.model.clock import FakeClock  # noqa: E402
from functions.ops import operations  # noqa: E402
from functions.store import envstore, guards  # noqa: E402
from functions.store.runtime import JsonQueue  # noqa: E402
from functions.upkeep.policyread import BATCH  # noqa: E402
from tests.harness import RedisServer  # noqa: E402

SERVICE = "bench"


def _ready_envs(r: redis.Redis, n: int, clock: FakeClock) -> list[str]:
    """N environments whose create is over (job DONE, guard free, not in flight), policy_status ACTIVE."""
    envids = []
    for i in range(n):
        envid, jobid = envstore.create_env(r, SERVICE, f"web{i}", {"endpoint": "onesim"}, "CREATE", clock)
        envstore.finish_job(r, jobid, "DONE", clock)
        guards.release_op(r, envid, jobid)
        envstore.clear_inflight(r, envid)
        envstore.update_env(r, envid, policy_status="ACTIVE", pol_minute="1")
        envids.append(envid)
    return envids


def _request(envid: str) -> operations.PolicyRequest:
    return operations.PolicyRequest({"envid": envid, "service": SERVICE, "name": "web"}, "SCALEUP", (), "elasticity",
                                    ("ACTIVE", "1"), {"policy_status": "ACTIVE", "pol_minute": "2"}, "a window opened")


def _timed(start: Callable[[], None]) -> tuple[float, float]:
    """(process CPU s, wall s) of calling `start`."""
    cpu, wall = time.process_time(), time.perf_counter()
    start()
    return time.process_time() - cpu, time.perf_counter() - wall


def rows(workdir: Path, quick: bool) -> list[Row]:
    """The part for bench/run.py."""
    n = 500 if quick else 2000
    server = RedisServer(workdir / "redis", appendfsync="everysec").start()
    try:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        queue = JsonQueue("carina", connection=redis.Redis.from_url(server.url))
        clock = FakeClock(1.8e9)
        batched, single = _ready_envs(r, n, clock), _ready_envs(r, n, clock)
        started: list[str | None] = []

        def in_batches() -> None:
            for i in range(0, n, BATCH):
                started.extend(operations.request_policies(r, queue, [_request(e) for e in batched[i:i + BATCH]],
                                                           clock))

        def one_by_one() -> None:
            for envid in single:
                q = _request(envid)
                started.append(operations.request_policy(r, queue, q.env, q.kind, q.slots, q.source, q.expect,
                                                         q.state, clock, q.why))

        b_cpu, b_wall = _timed(in_batches)
        s_cpu, s_wall = _timed(one_by_one)
        if None in started or queue.count != 2 * n:
            raise RuntimeError(f"{started.count(None)} of {2 * n} actions not started; {queue.count} drives queued")
        size = f"{n} envs, batches of {BATCH}"
        return [
            Row("policy action started, one at a time (before)", 1000 * s_cpu / n, "ms CPU", "",
                f"wall {1000 * s_wall / n:.2f} ms an action", size),
            Row("policy action started, batched (the minute's pass)", 1000 * b_cpu / n, "ms CPU", "",
                f"wall {1000 * b_wall / n:.2f} ms an action; {n} jobs and drives", size, 1000 * s_cpu / n),
        ]
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    quick = "--quick" in (sys.argv[1:] if argv is None else argv)
    return standalone("policy_start", "carina-policy-start-", False, lambda w: rows(w, quick))


if __name__ == "__main__":
    sys.exit(main())
