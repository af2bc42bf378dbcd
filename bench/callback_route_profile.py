"""CPU per VM callback inside the gateway app, in-process (issue 12): the real app (gateway.create_app, metrics in
multiprocess mode and JSON logging as gunicorn's get_app sets them up) on a real redis-server, each VM's two
callbacks (bench/callbacks_bench.py's records and paths) called through WSGI, next to a bare Falcon route answering
"OK" through the same call; then what each step of the callback route costs alone, and optionally where the
time goes (cProfile).

`python bench/callback_route_profile.py [--vms N] [--rounds R] [--drain-every K] [--threads T] [--profile [TOP]]`

What is timed: the process CPU (time.process_time) of `app(environ, start_response)` and reading its body, per
request; the environ is built beforehand (gunicorn's share, the same for both routes, is not in it). The redis-py
calls' client CPU (socket I/O included) counts; redis-server's does not. Each round forgets every VM's callback gate
first (the callbacks are accepted again). Every `--drain-every` callbacks the drains schedule is emptied, so the
next callback of an env queues a drain (an RQ enqueue), about as often as while a worker drains (60-80 drains a
1,000 callbacks in callbacks_bench). The figure per route is the best round's mean (the machine is shared); then the
same from T threads at once (as gunicorn's gthread worker runs requests). Compare two checkouts by running it in each
one after the other, several times: the shared machine's speed drifts by tens of percent within minutes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import falcon.testing  # noqa: E402
import redis  # noqa: E402

from bench.callbacks_bench import SERVICE, _reset, bare_app, populate  # noqa: E402
from config import logs, metrics  # noqa: E402
from config.settings import Settings  # noqa: E402
from functions.ops import callbacks  # noqa: E402
from functions.store import keys, tenants  # noqa: E402
from gateway import create_app  # noqa: E402
from handlers.callbacks import parse_callback  # noqa: E402
from tests.harness import RedisServer  # noqa: E402

Environ = dict[str, Any]


def _environ(path: str) -> Environ:
    parts = urlsplit(path)
    return falcon.testing.create_environ(path=parts.path, query_string=parts.query, remote_addr="10.0.0.1")


def _call(app: Callable[..., Any], environ: Environ) -> None:
    """One WSGI call and its body; raises unless it answered 200."""
    got: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        got.append(status)

    body = b"".join(app(dict(environ), start_response))
    if not got[0].startswith("200"):
        raise RuntimeError(f"{environ['PATH_INFO']}: {got[0]} {body[:200]!r}")


def timed_pass(app: Callable[..., Any], environs: list[Environ], between: Callable[[int], None] | None = None) -> float:
    """Call every environ once; the mean CPU seconds per request (`between(i)` runs untimed before request i)."""
    total = 0.0
    clock = time.process_time
    for i, env in enumerate(environs):
        if between is not None:
            between(i)
        t0 = clock()
        _call(app, env)
        total += clock() - t0
    return total / len(environs)


def threaded_pass(app: Callable[..., Any], environs: list[Environ], threads: int,
                  between: Callable[[int], None] | None = None) -> float:
    """The same from `threads` threads at once (as gunicorn's gthread worker runs them: the GIL handed over around
    each Redis round trip); the process's CPU seconds over the pass per request, `between` included (give both
    routes the same one: it cancels out in the difference)."""
    shards = [list(enumerate(environs))[t::threads] for t in range(threads)]
    go = threading.Barrier(threads + 1)

    def run(shard: list[tuple[int, Environ]]) -> None:
        go.wait()
        for i, env in shard:
            if between is not None:
                between(i)
            _call(app, env)

    workers = [threading.Thread(target=run, args=(s,)) for s in shards]
    for w in workers:
        w.start()
    t0 = time.process_time()
    go.wait()
    for w in workers:
        w.join()
    return (time.process_time() - t0) / len(environs)


def per_call(fn: Callable[[], Any], n: int) -> float:
    """Mean CPU seconds of fn() over n calls (best of 3)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - t0) / n)
    return best


def steps(r: Any, paths: list[list[str]], n: int) -> list[tuple[str, float]]:
    """The callback route's steps alone (us per call)."""
    path = paths[len(paths) // 2][1]
    parts = urlsplit(path)
    script = parts.path.rsplit("/", 1)[1]
    cb = parse_callback(script, parts.query)
    token = cb.params["token"]
    known = callbacks.known_caller(r, cb.envid, cb.vmid, token)
    assert known is not None, "the roster should know this VM after a round"

    def bind_clear() -> None:
        logs.clear()
        logs.bind(envid=None, jobid=None)
        logs.bind(envid=cb.envid, service=known[0])

    def ping() -> None:
        r.ping()

    return [
        ("parse_callback", per_call(lambda: parse_callback(script, parts.query), n)),
        ("callbacks.known_caller (HMAC)", per_call(lambda: callbacks.known_caller(r, cb.envid, cb.vmid, token), n)),
        ("callbacks.ingest (duplicate answer)", per_call(
            lambda: callbacks.ingest(r, cb.envid, known[1], cb.vmid, cb.kind, cb.fields, 1e9, 60, 10**9,
                                     recheck=True), n)),
        ("redis PING (one round trip)", per_call(ping, n)),
        ("metrics.callback('accepted')", per_call(lambda: metrics.callback("accepted"), n)),
        ("logs.clear + 2 x logs.bind", per_call(bind_clear, n)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=500, help="VMs (2 callbacks each; default 500)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each route (default 5)")
    parser.add_argument("--drain-every", type=int, default=15, help="callbacks between drains queued (default 15)")
    parser.add_argument("--threads", type=int, default=4, help="threads of the second measure (default 4)")
    parser.add_argument("--profile", type=int, nargs="?", const=30, default=0, metavar="TOP",
                        help="also profile one round of callbacks with cProfile (TOP functions, default 30)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="carina-cbprof-") as tmp:
        home = Path(tmp)
        os.environ[metrics.DIR_ENV] = str(home / "metrics")
        metrics.init_process(home)
        devnull = open(os.devnull, "w")  # noqa: SIM115 - open for the whole run
        logs.setup("gateway", stream=devnull)
        server = RedisServer(home / "redis", appendfsync="everysec").start()
        try:
            return _run(server, home, args)
        finally:
            server.stop()
            devnull.close()


def _run(server: RedisServer, home: Path, args: argparse.Namespace) -> int:
    app = create_app(Settings(redis_url=server.url, home=home))
    bare = bare_app()
    r = redis.Redis.from_url(server.url, decode_responses=True)
    tenants.add_service(r, SERVICE, "silver")
    paths = populate(r, args.vms)
    environs = [_environ(p) for pair in paths for p in pair]

    def drains(i: int) -> None:
        if i % args.drain_every == 0:
            r.delete(keys.callback_drains())

    rows = []
    for threads in (1, args.threads):
        carina, base = [], []
        for _ in range(args.rounds + 1):            # the first round warms up (the roster, imports, scripts)
            _reset(r)
            if threads == 1:
                carina.append(timed_pass(app, environs, drains))
                base.append(timed_pass(bare, environs))
            else:
                carina.append(threaded_pass(app, environs, threads, drains))
                base.append(threaded_pass(bare, environs, threads, drains))
        rows.append((threads, carina[1:], base[1:]))
    print(f"{len(environs)} callbacks a round ({args.vms} VMs), best of {args.rounds} rounds, a drain queued every "
          f"{args.drain_every} callbacks; load {os.getloadavg()[0]:.2f}")
    print(f"{'route':<40} {'us/req':>7}  rounds")
    for threads, carina, base in rows:
        c, b = min(carina), min(base)
        how = "1 thread" if threads == 1 else f"{threads} threads"
        rounds = " ".join(f"{x * 1e6:.0f}" for x in carina)
        print(f"{'callback GET /cgi-bin/..., ' + how:<40} {c * 1e6:>7.0f}  {rounds}")
        print(f"{'bare Falcon route, ' + how:<40} {b * 1e6:>7.0f}  {' '.join(f'{x * 1e6:.0f}' for x in base)}")
        print(f"{'difference, ' + how:<40} {(c - b) * 1e6:>7.0f}")
    print()
    print(f"{'step alone':<40} {'us/call':>7}")
    for name, secs in steps(r, paths, 2000):
        print(f"{name:<40} {secs * 1e6:>7.1f}")
    if args.profile:
        _reset(r)
        prof = cProfile.Profile()
        prof.enable()
        timed_pass(app, environs, drains)
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.profile)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
