"""VM callbacks at scale (issue 12): N VMs booting, each sending its network callback then its status callback
with its real token, against the real gateway (gunicorn `-w 2 --threads 4`, config/gunicorn.conf.py, as
tests/stack.py runs it); the baseline is a bare Falcon route (`GET /cgi-bin/{script}` answering "OK") on a second
gunicorn with the same settings, in the same run. Then what one worker process (`worker.py`) applies per second.

`python bench/callbacks_bench.py [--quick] [--vms N] [--keep]`   (quick: 500 VMs, about 25 s; default 1,000)

The VMs are records written through the real store functions (envstore.create_env, put_vm: environments of
1 master + 99 slaves, state running, their op finished), not VMs booted on the simulator: the simulator's
synthetic guests would send their own callbacks. Their tokens are the real ones (tokens.vm_token with the
installation's callback secret) and the real handler checks them. A slave reports SLAVE_<n>_INIT_DONE, the master
APP_SVC_START (MASTER_INIT_DONE would wake a drive of an environment that has no VMs on the simulator).

Load: 2 client processes x 4 threads (as many as the gateway's threads), each VM's two callbacks in order from one
thread: first as VMs send them (wget: a new connection per callback), then on keep-alive connections (the gateway's
share of the work is larger there: nothing is spent on connections), each client opening a new one every RECYCLE
requests as a connection pool does (with 8 connections for a whole round, how gunicorn's two workers happened to
accept them decided a round's rate: the bare route's ranged 2,232-4,271 req/s, 0.92 s of CPU on one worker and
0.10 on the other in the slow rounds; recycled, 3,470-4,044). Ingestion runs while the worker drains;
rounds alternate bare and Carina (each VM's callback gate forgotten between rounds), the best round of each counts
(the machine is shared); the CPU time per request of the gunicorn workers, redis-server and the worker is noted, a
figure the sharing disturbs less. The clients are closed-loop and saturate the gateway: p99 includes queueing on
a shared 2-core machine (the bare route's p99 in the same run is in its note).
Redis: AOF with appendfsync everysec, as config/redis.conf.

Processing: the worker is paused (SIGSTOP) while every callback is ingested, then resumed (SIGCONT): callbacks
applied per second from the resume until every inbox is empty; the same with one RQ job per callback (the old
functions.tasks.apply_callback jobs, enqueued directly) for comparison. Redis commands per callback applied: INFO
commandstats over that span. Also: single callbacks one at a time until applied, and drain jobs of an empty inbox
per second (RQ's per-job cost).

Seen 2026-11-30 (2 cores shared with other helpers' test runs, load average 2.5-5; throughput varies +-40 % from
round to round, the CPU figures less): a connection per callback 0.41-0.53 x the bare route (one run 0.34), keep-
alive 0.35-0.66 x; p99 19-30 ms keep-alive, 25-60 ms with a connection per callback (the bare route's p99 in the
same runs: 12-16 and 19-31 ms). CPU per callback: gunicorn 650-900 us (bare route 340-530 us a request),
redis-server 120-200, worker 175-250. Callback -> applied one at a time p50 3.4-6 ms (31 ms before). Applied per
second by one worker: 6,000-19,000 callbacks (one RQ job per callback: 120-200; 43 with the forking worker);
2.4 Redis commands per callback applied (65 with a job per callback). Drain jobs of an empty inbox: 145-300 a
second, 56 Redis commands each (RQ's bookkeeping; Carina's own: the lock, one callback_step, the release).

What moved it (each measured here): the VM index instead of a scan of the env's records in the lookup script
(360 -> 11 us of Redis per lookup at 100 VMs an env); the roster (a callback of a VM whose env this gateway process
has seen is one script call: 1.2 Redis calls per callback instead of 2); the drain reading only the records its
batch names and writing them with json.dumps(vars(rec)) (VmRecord.to_json's asdict deep copy was 3/4 of the
drain's CPU); one script per drained batch (write + take next); result_ttl=1 on drain jobs (0 makes RQ delete the
job at once: 62 instead of 56 commands); a drain enqueued in one pipeline (RQ alone: two round trips). Tried and
dropped: a drain that lingers 20 ms for more callbacks of its env (with several envs' drains queued it stops at
once and only adds round trips: worker CPU per callback went up).
The gateway's CPU per callback (bench/callback_route_profile.py: the app in-process, each step alone), over the
bare route's, measured minutes apart at load 0.7-0.9: 210 us (1 thread) / 329 us (4 threads) before, 161-211 /
251-270 after. What moved it: the report's text built without json's encoder and the inbox entry with orjson
(~8 us); the query decoded only when something in it is encoded and a dotted-quad IPv4 matched before ipaddress;
the expected token of the last VMs remembered (a VM's two callbacks come together); the metric's labelled child,
an empty logs.bind and the drain's RQ queue object made once. Tried and dropped: the ingest script sent on a
connection each thread keeps out of redis-py's pool, packed by hiredis (~30 us a call less, but it reaches into
redis-py's private connection internals and re-implements its pool and retry: not worth owning). The ingest script
call is ~100 us, 65 of them the round trip; the rest is Python spread thin (every microsecond of it costs 2-3 in
the route: the code runs cache-cold after the Redis wait).
Session 6: a drain under a stream of callbacks first sleeps until its oldest callback is 40 ms old
(functions.ops.cbinbox GATHER; cbfold.gather_wait). Why: the machine is saturated while ingesting, and a worker that
always has a drain queued is always runnable and takes its share of the CPU whatever a drain costs (300-400 us of
worker CPU per callback at ~10 callbacks a drain, RQ's per-job cost mostly); asleep it leaves the CPU to the
gateway and then applies ~25-45 callbacks a drain. Measured (quick, 4 runs each, load 0.4-1.7): worker CPU per
callback 295-400 -> 110-140 us, redis-server 160-195 -> 110-135 us; a connection per callback 0.44-0.48 -> 0.56-0.63
x the bare route, keep-alive 0.46-0.48 -> 0.46-0.66 x; callback -> applied one at a time unchanged (3.3-4.7 ms: a
lone callback is not held back), applied within 0.01-0.03 s of the last answer under load. Tried: a gather with
no stream condition (every drain within 50 ms of the last one): one-at-a-time latency 3.7 -> 22.7 ms, dropped;
gunicorn -w 4 --threads 2 and -w 1 --threads 8 for both servers: Carina's own throughput lower, kept -w 2 --threads 4.
Left: the drain's RQ enqueue (~170 us of CPU in a tight loop, 250-500 in the route, once every ~15 callbacks while a
worker drains: ~20 us a callback); RQ's ~56 commands and ~2 ms of CPU per job, paid once per drain (about 20
callbacks a job while ingesting, 200 from a backlog).

Session 9 (full runs, keep-alive recycled, load < 1): a connection per callback 0.55-0.60 x, keep-alive 0.48-0.51 x
the bare route: keep-alive is at the line (it was 0.47-0.66 x while the accept race decided the baseline). Per
callback: gateway 615-640 us against 395-400 for the bare route, redis-server ~105, worker ~110 (the drain itself
~32, the rest RQ's per-job cost at ~40 callbacks a drain). gunicorn shapes for both servers (one run each unless
noted): -w 4 --threads 1 (three runs): 0.53-0.58 / 0.54-0.55 x, Carina's own throughput up ~20 % (1,920-2,040 cb/s)
and p99 ~8 ms, but the bare route gains as much, and one thread a process leaves no room for the events route's
long-polling followers; -w 3 --threads 1 (two runs) 0.51-0.53 / 0.55 x; -w 4 --threads 2: 0.59 / 0.49 x. Kept
-w 2 --threads 4. A redis-py 8.1 command costs ~60 us of client CPU against ~23 us on a raw socket (its pool's
get/release with observability counters; single_connection_client: ~47 us). A drain gathering up to 120 ms that
stops once the inbox grew by nothing for 20 ms halved the drain jobs (worker CPU a callback 93 -> 67 us) without
moving the throughput beyond noise: not adopted.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import falcon  # noqa: E402
import redis  # noqa: E402

from bench.common import Row, children, cpu_seconds, percentile, standalone, wait_until  # noqa: E402
from bench.stack_bench import BenchStack  # noqa: E402
from functions.model import tokens  # noqa: E402
from functions.model.clock import system_clock  # noqa: E402
from functions.ops import cbinbox  # noqa: E402
from functions.store import envstore, guards, install, keys, runtime  # noqa: E402
from functions.store.envstore import VmRecord  # noqa: E402
from tests.harness import RedisServer, free_port  # noqa: E402

SERVICE = "bench"
PER_ENV = 100               # VMs per environment: 1 master + 99 slaves
PROCS, THREADS = 2, 4       # client processes x keep-alive connections each
RECYCLE = 25                # a keep-alive client opens a new connection every RECYCLE requests (as a pool does)


def bare_app() -> falcon.App:
    """The baseline: one Falcon route answering "OK" as text, nothing else (`gunicorn 'bench.callbacks_bench:
    bare_app()'`)."""

    class Ok:
        def on_get(self, req: falcon.Request, resp: falcon.Response, script: str) -> None:
            resp.content_type = falcon.MEDIA_TEXT
            resp.text = "OK"

    app = falcon.App()
    app.add_route("/cgi-bin/{script}", Ok())
    return app


def populate(r: redis.Redis, vms: int) -> list[list[str]]:
    """Environments of PER_ENV VM records (op finished, nothing in flight); per VM, its two callback paths."""
    secret = install.callback_secret(r)
    out: list[list[str]] = []
    vmid = 1000
    for start in range(0, vms, PER_ENV):
        envid, jobid = envstore.create_env(r, SERVICE, "cb", {"endpoint": "onesim"}, "CREATE", system_clock)
        envstore.finish_job(r, jobid, "DONE", system_clock)
        guards.release_op(r, envid, jobid)
        envstore.clear_inflight(r, envid)
        envstore.update_env(r, envid, policy_status="ACTIVE", phase="done")
        for i in range(min(PER_ENV, vms - start)):
            vmid += 1
            slot, role = ("m", "master") if i == 0 else (f"s{i - 1}", "slave")
            rec = VmRecord(slot=slot, role=role, index=max(0, i - 1), endpoint="onesim", vmid=vmid, state="running",
                           one_ip=f"10.1.{vmid // 250}.{vmid % 250 + 1}")
            envstore.put_vm(r, envid, rec)
            r.set(keys.vm_index("onesim", vmid), f"{envid} {slot}")       # as the engine records an allocated VM
            token = tokens.vm_token(secret, envid, slot, rec.nonce)
            status = "APP_SVC_START" if role == "master" else f"SLAVE_{i - 1}_INIT_DONE"
            base = {"service": SERVICE, "vmid": vmid, "envid": envid}
            out.append([f"/cgi-bin/updatevmstatus.sh?{urlencode({**base, 'newip': rec.one_ip, 'name': f'vm{vmid}'})}"
                        f"&token={token}",
                        f"/cgi-bin/updateappstatus.sh?{urlencode({**base, 'status': status})}&token={token}"])
    return out


def _connection_run(port: int, vms: list[list[str]], go_at: float, keepalive: bool, out: list[Any]) -> None:
    """One client thread: each VM's callbacks in order, on one keep-alive connection or (as wget) a new connection
    per callback; appends (start, end, latencies ms, non-200 answers) to `out`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    lat: list[float] = []
    bad = 0
    while time.time() < go_at:
        time.sleep(0.001)
    start = time.time()
    sent = 0
    for paths in vms:
        for path in paths:
            t0 = time.perf_counter()
            if not keepalive or (sent and sent % RECYCLE == 0):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            sent += 1
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            if not keepalive:
                conn.close()
            lat.append((time.perf_counter() - t0) * 1000)
            bad += resp.status != 200
    out.append((start, time.time(), lat, bad))
    conn.close()


def _client_process(port: int, shards: list[list[list[str]]], go_at: float, keepalive: bool, queue: Any) -> None:
    out: list[Any] = []
    threads = [threading.Thread(target=_connection_run, args=(port, s, go_at, keepalive, out)) for s in shards]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put(out)


def fire(port: int, vms: list[list[str]], keepalive: bool = True) -> tuple[float, list[float], int]:
    """Send every VM's callbacks from PROCS x THREADS clients at once (keep-alive connections, or a new connection
    per callback); (requests/s, latencies ms, non-200 answers)."""
    n = PROCS * THREADS
    shards = [vms[i::n] for i in range(n)]
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    go_at = time.time() + 0.5
    procs = [ctx.Process(target=_client_process, args=(port, shards[p::PROCS], go_at, keepalive, queue))
             for p in range(PROCS)]
    for p in procs:
        p.start()
    results = [item for _ in procs for item in queue.get(timeout=600)]
    for p in procs:
        p.join(10)
    start, end = min(x[0] for x in results), max(x[1] for x in results)
    lat = [v for x in results for v in x[2]]
    return len(lat) / (end - start), lat, sum(x[3] for x in results)


def _pending(r: redis.Redis) -> int:
    """Callbacks not applied yet: inbox drains pending plus old-style jobs queued or running."""
    cq = runtime.queue_name("carina", runtime.CALLBACKS)
    with r.pipeline(transaction=False) as p:
        p.zcard(keys.callback_drains())
        p.llen(f"rq:queue:{cq}")
        p.zcard(f"rq:wip:{cq}")
        return sum(p.execute())


def _wait_applied(r: redis.Redis, timeout: float) -> float | None:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if not _pending(r):
            return time.perf_counter()
        time.sleep(0.005)
    return None


def _commands(r: redis.Redis) -> int:
    return sum(int(v["calls"]) for v in r.info("commandstats").values())


def _reset(r: redis.Redis) -> None:
    """Forget every VM's callback gate (its last reports and bucket) so the same callbacks are accepted again."""
    for key in r.scan_iter(keys.callback_gate("*", "*", "*"), count=1000):
        r.delete(key)


def _paused(stack: BenchStack, r: redis.Redis, n: int, load: Any) -> tuple[float | None, float]:
    """Pause the worker, run `load` (it queues n callbacks), resume it: (callbacks applied per second, Redis
    commands per callback) from the resume until nothing is pending."""
    pid = stack.workers[0].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        load()
        calls0 = _commands(r)
    finally:
        os.kill(pid, signal.SIGCONT)
    start = time.perf_counter()
    end = _wait_applied(r, 600)
    calls = _commands(r) - calls0
    return (None if end is None else n / (end - start)), calls / n


def ingestion(stack: BenchStack, bare_port: int, paths: list[list[str]], rounds: int, keepalive: bool) -> list[Row]:
    """`rounds` x (bare route, then Carina's gateway) with the same requests; throughput: the best round of each
    (the machine is shared); latency percentiles over every Carina request."""
    r, size = stack.r, f"{len(paths)} VMs, {2 * len(paths)} callbacks"
    how = "keep-alive" if keepalive else "a connection per callback"
    base_rates, rates, lats, base_lats, lags = [], [], [], [], []
    jobs0 = _jobs_done(stack)
    cpu = {"bare": 0.0, "gateway": 0.0, "redis": 0.0, "worker": 0.0}
    for _ in range(rounds):
        _reset(r)
        before = _cpu(stack)
        base_rate, base_lat, base_bad = fire(bare_port, paths, keepalive)
        middle = _cpu(stack)
        rate, lat, bad = fire(stack.port, paths, keepalive)
        after = _cpu(stack)
        answered = time.perf_counter()
        done = _wait_applied(r, 600)
        drained = _cpu(stack)
        cpu["bare"] += middle["bare"] - before["bare"]
        cpu["gateway"] += after["gateway"] - middle["gateway"]
        cpu["redis"] += drained["redis"] - middle["redis"]
        cpu["worker"] += drained["worker"] - middle["worker"]
        if bad or base_bad or done is None:
            raise RuntimeError(f"{bad} callback(s) and {base_bad} bare request(s) not answered 200, or not applied")
        base_rates.append(base_rate)
        rates.append(rate)
        lats += lat
        base_lats += base_lat
        lags.append(done - answered)
    jobs = (_jobs_done(stack) - jobs0) / rounds
    base, best = max(base_rates), max(rates)
    per = {k: v / (rounds * 2 * len(paths)) * 1e6 for k, v in cpu.items()}
    return [
        Row(f"callback ingestion, bare Falcon route (baseline), {how}", base, "req/s", "",
            f"best of {rounds}: {', '.join(f'{x:.0f}' for x in base_rates)}; p99 {percentile(base_lats, 99):.1f} ms; "
            f"gunicorn CPU {per['bare']:.0f} us/req; {PROCS}x{THREADS} clients", size),
        Row(f"callback ingestion throughput, {how}", best, "cb/s", f">= {base / 2:.0f}",
            f"{best / base:.2f} x baseline (target >= 0.5); best of {rounds}: {', '.join(f'{x:.0f}' for x in rates)}; "
            f"CPU us/cb: gunicorn {per['gateway']:.0f}, redis-server {per['redis']:.0f}, worker {per['worker']:.0f}; "
            "worker draining "
            f"meanwhile: {jobs:.0f} drain jobs a round, all applied {max(lags):.2f} s after the last answer", size,
            base),
        Row(f"callback ingestion p99, {how}", percentile(lats, 99), "ms", "<= 25",
            f"p50 {percentile(lats, 50):.1f} ms, p95 {percentile(lats, 95):.1f} ms over {len(lats)}", size),
    ]


def _cpu(stack: BenchStack) -> dict[str, float]:
    """CPU seconds so far of the bare gunicorn, the gateway's gunicorn (master and workers) and redis-server."""
    def tree(pid: int) -> float:
        return cpu_seconds(pid) + sum(cpu_seconds(c) for c in children(pid))
    redis_proc = stack.redis.proc
    bare = stack.procs.get("bare")
    return {"bare": tree(bare.pid) if bare is not None else 0.0, "gateway": tree(stack.procs["gateway"].pid),
            "worker": sum(cpu_seconds(w.pid) for w in stack.workers),
            "redis": cpu_seconds(redis_proc.pid) if redis_proc is not None else 0.0}


def _jobs_done(stack: BenchStack) -> int:
    """Jobs the stack's (single) worker finished so far (RQ's counter in its worker hash)."""
    total = 0
    for key in stack.r.scan_iter("rq:worker:*"):
        if stack.r.type(key) == "hash":
            total += int(stack.r.hget(key, "successful_job_count") or 0)
    return total


def applied_latency(stack: BenchStack, paths: list[list[str]], runs: int) -> list[Row]:
    """One status callback at a time (a new status from the next VM), until the worker has written it to the VM
    record: answer and applied latency."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    http_ms, applied_ms = [], []
    for i, pair in enumerate(paths[:runs]):
        path = pair[1].replace("status=", f"status=APP_LAT_{i}_", 1)
        query = dict(x.split("=", 1) for x in path.split("?", 1)[1].split("&"))
        status = query["status"]
        start = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        answered = time.perf_counter()
        if resp.status != 200:
            raise RuntimeError(f"callback answered {resp.status}")
        slot = str(stack.r.get(keys.vm_index("onesim", query["vmid"]))).split()[1]

        def applied(envid: str = query["envid"], slot: str = slot, status: str = status) -> bool:
            return json.loads(stack.r.hget(keys.env_vms(envid), slot) or "{}").get("status") == status

        if wait_until(applied, 10, every=0.0005) is None:
            raise RuntimeError(f"callback {status} not applied within 10 s")
        http_ms.append((answered - start) * 1000)
        applied_ms.append((time.perf_counter() - start) * 1000)
    conn.close()
    return [Row("callback answer p50, one at a time", percentile(http_ms, 50), "ms", "",
                f"p95 {percentile(http_ms, 95):.1f} ms, n={runs}"),
            Row("callback -> applied p50, one at a time", percentile(applied_ms, 50), "ms", "< 30",
                f"p95 {percentile(applied_ms, 95):.1f} ms, n={runs}; until the worker wrote the VM record")]


def rows(workdir: Path, quick: bool, vms: int | None = None) -> list[Row]:
    """Start the stack and the bare baseline, measure, stop; the rows."""
    vms = vms or (500 if quick else 1000)
    size = f"{vms} VMs, {2 * vms} callbacks"
    stack = BenchStack(workdir / "stack", workers=1, sim_delay=0.0)
    stack.redis = RedisServer(workdir / "stack" / "redis", appendfsync="everysec")
    with stack:
        bare_port = free_port()
        stack.procs["bare"] = stack._spawn("bare", [
            str(ROOT / ".venv" / "bin" / "gunicorn"), "-c", "config/gunicorn.conf.py", "-b", f"127.0.0.1:{bare_port}",
            "-w", "2", "--threads", "4", "--no-control-socket", "bench.callbacks_bench:bare_app()"])
        stack._wait_up("bare", bare_port)
        r = stack.r
        stack.add_service(SERVICE)
        paths = populate(r, vms)
        fire(bare_port, paths[: max(20, vms // 10)])                 # warm both servers up
        fire(stack.port, paths[: max(20, vms // 10)])
        _wait_applied(r, 60)
        out = ingestion(stack, bare_port, paths, 2 if quick else 3, keepalive=False)
        out += ingestion(stack, bare_port, paths, 2 if quick else 3, keepalive=True)
        out += applied_latency(stack, paths, 50 if quick else 100)
        _reset(r)
        jobs0 = _jobs_done(stack)
        cb_rate, cb_cmds = _paused(stack, r, 2 * vms, lambda: fire(stack.port, paths))
        out.append(Row("callbacks applied per second, 1 worker (inbox drains)", cb_rate, "cb/s", ">= 150",
                       f"{cb_cmds:.1f} Redis cmds per callback; {_jobs_done(stack) - jobs0} drain jobs for "
                       f"{-(-vms // PER_ENV)} env inboxes", size))
        cq = runtime.JsonQueue(runtime.queue_name("carina", runtime.CALLBACKS),
                               connection=redis.Redis.from_url(stack.redis.url))

        def old_jobs() -> None:
            for pair in paths:
                for path in pair:
                    q = dict(x.split("=", 1) for x in path.split("?", 1)[1].split("&"))
                    rec_kind = "net" if "newip" in q else "status"
                    fields = {"newip": q["newip"], "name": q["name"]} if rec_kind == "net" else {"status": q["status"]}
                    cq.enqueue("functions.tasks.apply_callback", q["envid"], int(q["vmid"]), rec_kind, fields, "", 0,
                               result_ttl=60, failure_ttl=86400)

        old_rate, old_cmds = _paused(stack, r, 2 * vms, old_jobs)
        out.append(Row("callbacks applied per second, 1 worker (one RQ job each, before)", old_rate, "cb/s", "",
                       f"{old_cmds:.1f} Redis cmds per callback; old apply_callback jobs, as queued before", size))
        out.append(_per_job(stack, 200))
    return out


def _per_job(stack: BenchStack, n: int) -> Row:
    """Drain jobs of an environment with nothing waiting (the worker paused while they are queued): drain jobs per
    second and Redis commands per job, i.e. RQ's bookkeeping plus Carina's lock, one callback_step and the
    release (commands inside a script count too)."""
    queue = runtime.JsonQueue("carina", connection=redis.Redis.from_url(stack.redis.url))
    rate, cmds = _paused(stack, stack.r, n, lambda: [cbinbox.enqueue_drain(queue, "1") for _ in range(n)])
    return Row("drain jobs per second, 1 worker (empty inbox)", rate, "jobs/s", ">= 150",
               f"{cmds:.0f} Redis cmds per job (RQ's own: the rest of {cmds:.0f} - ~9 of Carina's)", f"{n} jobs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 VMs")
    parser.add_argument("--vms", type=int, default=None, help="VMs (default 1000, quick 500)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    return standalone("callbacks", "carina-callbacks-", args.keep, lambda w: rows(w, args.quick, args.vms))


if __name__ == "__main__":
    sys.exit(main())
