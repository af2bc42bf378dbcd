"""creates: creates/s, N single-VM environments requested at once (`POST /configs/solo` x N), the simulator with
synthetic guests and zero delays, until every create is DONE; with 1, 2 and 4 workers; and the run of
issue 15 (1,000 creates, the default inventory of 72 cores: 720 fit, 280 stay PENDING) watching the work
queue, the minute tick and why the unplaceable ones wait.

`python bench/creates_bench.py [--envs N] [--workers 1,2,4] [--issue] [--profile] [--fork] [--keep]`
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench.common import Row, children, cpu_seconds, standalone  # noqa: E402
from functions.store import keys, runtime  # noqa: E402
from tests.harness import RedisServer  # noqa: E402
from tests.stack import Stack  # noqa: E402

SERVICE = "bench"
TINY = """  'tiny' => {
    :file => 'example.vm', :cpu => 0.1, :memory => 64, :network_id => { 'onesim' => 0 }, :image_id => { 'onesim' => 0 },
  },
"""
SOLO = """  'solo' => {
    :type => "compute", :endpoint => "onesim", :description => "master only", :master_template => "tiny",
    :master_context_script => "tomcat-master.sh", :master_setup_time => 0, :master_context_var => "BALANCE_PORT=8080",
    :slave_template => "tiny", :num_slaves => 0, :adminuser => "root", :app_url => "http://%MASTER%:8080/",
  },
"""
DEFAULT_FIT = 720     # VMs of 0.1 CPU the default inventory (config/onesim.yaml, 72 cores) has room for
RATE_TARGET = "> 20"  # issue 15: creates/s with one worker
SETTLE = 120.0        # seconds the issue run watches the unplaceable environments wait after the others are done
ROOMY = "hosts:\n" + "".join(f"  - {{name: host{i}, cores: 32, memory_mb: 262144}}\n" for i in range(4))
INVENTORY = ("default_rank: \"- RUNNING_VMS\"\n{hosts}networks:\n  - {{id: 0, name: loopback, bridge: lo, "
             "ip_start: 127.0.1.1, size: 65000, gateway: 127.0.0.1, dns: 127.0.0.1, mask: 255.0.0.0}}\n"
             "images:\n  - {{id: 0, name: debian12, size_mb: 2048}}\n")


class CreateStack(Stack):
    """tests.stack.Stack as production runs it for this measure: synthetic guests, zero simulator delays,
    Redis with appendfsync everysec (config/redis.conf), the scheduler (minute tick), optional inventory,
    workers optionally forking or under cProfile."""

    def __init__(self, workdir: Path, workers: int, inventory: str | None, fork: bool, profile: bool,
                 env: dict[str, str] | None = None) -> None:
        super().__init__(workdir, workers=workers, sim_delay=0.0, env=env)
        self.redis = RedisServer(workdir / "redis", appendfsync="everysec")
        self.inventory = inventory
        self.fork, self.profile = fork, profile

    def _spawn(self, name: str, args: list[str]):  # type: ignore[no-untyped-def]
        if name == "onesim":
            args = ["synthetic" if a == "process" else a for a in args]
            if self.inventory is not None:
                path = self.workdir / "inventory.yaml"
                path.write_text(self.inventory)
                args += ["--inventory", str(path)]
        if name.startswith("worker"):
            if self.fork:
                args = [*args, "--fork"]
            if self.profile and name == "worker1":          # worker.py under cProfile with a CPU clock
                args = [args[0], str(ROOT / "bench" / "profile_worker.py"), str(self.workdir / "worker1.prof"),
                        *args[2:]]
        return super()._spawn(name, args)

    def stop_profiled_worker(self) -> None:
        """SIGTERM worker 1 (a warm shutdown lets cProfile write its file) and wait for it."""
        proc = self.workers[0]
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def stack_cpu(stack: CreateStack) -> dict[str, float]:
    """CPU seconds used so far by each part of the stack (the gateway's gunicorn workers counted in)."""
    out = {f"worker{i + 1}": cpu_seconds(p.pid) for i, p in enumerate(stack.workers)}
    gw = stack.procs["gateway"].pid
    out["gateway"] = cpu_seconds(gw) + sum(cpu_seconds(c) for c in children(gw))
    out["onesim"] = cpu_seconds(stack.procs["onesim"].pid)
    out["scheduler"] = cpu_seconds(stack.procs["scheduler"].pid)
    if stack.redis.proc is not None:
        out["redis"] = cpu_seconds(stack.redis.proc.pid)
    return out


def redis_calls(r: redis.Redis) -> dict[str, int]:
    """Commands served so far by Redis, by name (INFO commandstats)."""
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in r.info("commandstats").items()}


def _post_all(port: int, token: str, n: int, threads: int = 4) -> list[str]:
    """POST /configs/solo n times from `threads` keep-alive clients; the envids created."""
    out: list[str] = []
    lock = threading.Lock()
    counts = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]

    def client(count: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        for _ in range(count):
            conn.request("POST", "/configs/solo", headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 202:
                raise RuntimeError(f"POST /configs/solo: HTTP {resp.status} {body[:200]!r}")
            with lock:
                out.append(json.loads(body)["envid"])
        conn.close()

    workers = [threading.Thread(target=client, args=(c,)) for c in counts]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if len(out) != n:
        raise RuntimeError(f"only {len(out)} of {n} creates accepted")
    return out


class Sampler:
    """Every `every` seconds: the length of each worker queue, and which minutes the tick ran."""

    def __init__(self, r: redis.Redis, base: str, every: float = 0.5) -> None:
        self.r, self.every = r, every
        self.names = [runtime.queue_name(base, level) for level in runtime.LEVELS]
        self.lengths: list[tuple[float, list[int]]] = []
        self.minutes: set[int] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(self.every):
            with self.r.pipeline(transaction=False) as p:
                for name in self.names:
                    p.llen(f"rq:queue:{name}")
                lengths = p.execute()
            now = time.time()
            self.lengths.append((now, lengths))
            minute = int(now // 60)
            for m in (minute - 1, minute):
                if self.r.exists(keys.tick("minute", m)):
                    self.minutes.add(m)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)

    def max_len(self, index: int, after: float = 0.0) -> int:
        return max((ls[index] for t, ls in self.lengths if t >= after), default=0)


def _statuses(r: redis.Redis, envids: list[str]) -> dict[str, str]:
    with r.pipeline(transaction=False) as p:
        for e in envids:
            p.hget(keys.env(e), "job")
        jobs = p.execute()
    with r.pipeline(transaction=False) as p:
        for j in jobs:
            p.hget(keys.job(j or "0"), "status")
        return dict(zip(envids, (s or "?" for s in p.execute()), strict=True))


def _wait(r: redis.Redis, in_flight: int, timeout: float) -> float | None:
    """perf_counter() once at most `in_flight` environments are still in flight (one SCARD per poll, so the
    measure barely adds to Redis's work), or None after `timeout` seconds."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if r.scard(keys.inflight()) <= in_flight:
            return time.perf_counter()
        time.sleep(0.1)
    return None


def run_creates(workdir: Path, n: int, workers: int, fork: bool, profile: bool, inventory: str | None,
                deadline: int = 900, settle: float = 0.0) -> dict[str, Any]:
    """One measured run; returns its figures (see the keys)."""
    env = {"CARINA_CREATE_DEADLINE": str(deadline)}
    with CreateStack(workdir, workers, inventory, fork, profile, env=env) as stack:
        stack.start_scheduler(tick_every=5)
        token = stack.add_service(SERVICE)
        text = re.sub(r"TEMPLATE = \{\n", "TEMPLATE = {\n" + TINY, stack.example_config(SOLO), count=1)
        stack.upload_example(token, files={})
        stack.upload(token, "config.rb", text.encode())
        r = stack.r
        cpu0, calls0 = stack_cpu(stack), redis_calls(r)
        with Sampler(r, "carina") as sampler:
            started = time.perf_counter()
            envids = _post_all(stack.port, token, n)
            posted = time.perf_counter()
            want = n if inventory is not None else min(n, DEFAULT_FIT)
            end = _wait(r, n - want, timeout=max(300.0, n))
            finished = time.time()
            cpu = {k: v - cpu0.get(k, 0.0) for k, v in stack_cpu(stack).items()}
            calls = {k: v - calls0.get(k, 0) for k, v in redis_calls(r).items()}
            if settle:
                time.sleep(settle)
            statuses = _statuses(r, envids)
            envs = [r.hgetall(keys.env(e)) for e in envids]
        if profile:
            stack.stop_profiled_worker()
    done = sum(v == "DONE" for v in statuses.values())
    return {"n": n, "workers": workers, "post_s": posted - started, "elapsed": None if end is None else end - started,
            "done": done, "statuses": statuses, "envs": envs, "sampler": sampler, "finished": finished,
            "prof": workdir / "worker1.prof" if profile else None, "cpu": cpu, "calls": calls}


def rate_rows(workdir: Path, n: int, counts: list[int], fork: bool, profile: bool) -> list[Row]:
    rows = []
    for w in counts:
        res = run_creates(workdir / f"w{w}", n, w, fork, profile and w == counts[0], ROOMY_INVENTORY)
        rate = None if res["elapsed"] is None else n / res["elapsed"]
        kind = "forking Worker" if fork else "SimpleWorker"
        size = f"{n} envs, {w} worker{'s' if w > 1 else ''}"
        rows.append(Row("creates/s (single-VM envs, to DONE)", rate, "envs/s", RATE_TARGET if w == 1 else "",
                        f"{kind}; POSTs {res['post_s']:.1f} s; max drive queue {res['sampler'].max_len(2)}", size))
        cpu = res["cpu"]
        workers_cpu = sum(v for k, v in cpu.items() if k.startswith("worker"))
        others = ", ".join(f"{k} {1000 * v / n:.0f}" for k, v in cpu.items() if not k.startswith("worker"))
        rows.append(Row("  CPU per create (workers)", 1000 * workers_cpu / n, "ms", "",
                        f"others (ms/create): {others}", size))
        top = sorted(res["calls"].items(), key=lambda kv: -kv[1])[:6]
        rows.append(Row("  Redis commands per create", sum(res["calls"].values()) / n, "cmds", "",
                        ", ".join(f"{k} {v / n:.1f}" for k, v in top), size))
        if res["prof"] is not None:
            print_profile(res["prof"])
    return rows


def rows(workdir: Path, quick: bool) -> list[Row]:
    """The part for bench/run.py: the creates/s run (quick: 100 creates, 1 worker; full: 1,000 with 1, 2 and 4
    workers). The issue-15 run is not part of it (`--issue` of this script)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return rate_rows(workdir, 100 if quick else 1000, [1] if quick else [1, 2, 4], False, False)


def issue_rows(workdir: Path, n: int) -> list[Row]:
    """The run of issue 15: default inventory (72 cores, 720 VMs fit), one worker."""
    res = run_creates(workdir / "issue", n, 1, False, False, None, settle=SETTLE)
    sampler: Sampler = res["sampler"]
    waiting = [e for e in res["envs"] if str(e.get("status", "")).startswith("PENDING:")]
    steady = res["finished"] + SETTLE - 45
    minutes = sorted(sampler.minutes)
    gaps = [b - a for a, b in zip(minutes, minutes[1:], strict=False)]
    rate = None if res["elapsed"] is None else DEFAULT_FIT / res["elapsed"]
    log = "\n".join(p.read_text(errors="replace") for p in sorted((workdir / "issue").glob("worker*.log")))
    drives = [len(re.findall(rf": carina: drive env {e['envid']} \(", log)) for e in waiting]
    return [
        Row(f"issue run: creates/s of the {DEFAULT_FIT} that fit ({n} requested, 1 worker)", rate, "envs/s", "",
            f"{res['done']} DONE"),
        Row("issue run: envs showing 'PENDING: hosts full'", len(waiting), "envs", "",
            f"of {n - DEFAULT_FIT} unplaceable"),
        Row("issue run: drive jobs per waiting env (max)", max(drives, default=None), "jobs", "",
            f"over {SETTLE:.0f} s of waiting after the creates; mean {sum(drives) / max(1, len(drives)):.1f}"),
        Row("issue run: max work queue while they wait", sampler.max_len(2, steady), "jobs", "< 50",
            f"last 45 s; callbacks queue {sampler.max_len(1, steady)}, high {sampler.max_len(0, steady)}"),
        Row("issue run: minutes with a tick", len(minutes), "min", "",
            f"largest gap {max(gaps, default=1)} min over {len(minutes)} min"),
    ]


ROOMY_INVENTORY = INVENTORY.format(hosts=ROOMY)


def print_profile(path: Path, top: int = 25) -> None:
    import pstats

    stats = pstats.Stats(str(path))
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=1000)
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure, comma-separated")
    parser.add_argument("--issue", action="store_true", help="also the issue-15 run (default inventory)")
    parser.add_argument("--only-issue", action="store_true", help="only the issue-15 run")
    parser.add_argument("--profile", action="store_true", help="cProfile the first worker of the first run")
    parser.add_argument("--fork", action="store_true", help="forking workers (worker.py --fork)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)

    def measure(workdir: Path) -> list[Row]:
        out: list[Row] = []
        if not args.only_issue:
            counts = [int(x) for x in args.workers.split(",") if x]
            out += rate_rows(workdir, args.envs, counts, args.fork, args.profile)
        if args.issue or args.only_issue:
            out += issue_rows(workdir, args.envs)
        return out

    return standalone("creates", "carina-creates-", args.keep, measure)


if __name__ == "__main__":
    sys.exit(main())
