"""The minute tick at scale, end to end: `python bench/policy_tick_bench.py [--quick] [--sizes 1000,10000]`.

What runs is what the minute tick runs after its re-drives (`functions.upkeep.ticks.observe_and_decide`, the cyclic
GC paused): `functions.upkeep.refresh.refresh` (one `vmpool.infoset` of Carina's VM ids per endpoint and 10,000
ids, short bodies with each VM's last CPU, over real XML-RPC) with the policy pass (`functions.upkeep.policies.Pass`)
woven in: its reads while OpenNebula answers, each endpoint's envs decided once their records are written, the
rest after (policy decisions, the jobs they start through the op guard, a real RQ enqueue each). N
environments of 10 VMs (1 master + 9 slaves) live on 4 endpoints, each a real simulator (`python -m onesim --guests
synthetic`, `--guests none` past the open-files limit) whose pool is filled with the environments' VMs by
`onesim.vm.allocatebatch` (tagged as Carina tags them). Services of 1,000 environments; per service 70 % `auto`
elasticity + recreate policy, 20 % time windows, 10 % failover pairs; 1 % of the `auto` ones are over their CPU
threshold with their counter one minute short (a SCALEUP each), 0.2 % of the VMs are UNKNOWN in OpenNebula (a
RECREATE for most of their environments).

Redis is filled with what a real create leaves, by the real code: one environment of 1 + 9 VMs is created
through the engine against a simulator (tests.integration.engine_fixtures), and its env hash, VM records,
event stream (and the service's), job and VM index keys are copied for every environment (ids, names,
addresses and nonces replaced; the policies of each kind come from the uploaded configuration). Memory =
INFO used_memory after the measured minutes (so with the env_cpu hashes, the jobs and events they wrote) minus
before the copies, per VM and per environment.

Minutes measured: a first tick (every VM's tags checked once: full bodies, at most 20,000 per endpoint a
minute, then as many minutes as it takes) is reported but not the target; then two steady minutes, each
after every VM got a new monitoring sample with a new CPU (as OpenNebula does between two ticks, so every
record's CPU changes); the faster one is the row (`--quick`: one). The refresh remembers what it read
(functions.upkeep.recall), as a long-lived worker does: a steady minute reads again only the environments written
since the minute before (its actions' jobs, its tag checks). Each row: wall seconds of the tick (refresh +
policies), and in its note the CPU seconds of this process with its helper processes reading the pool answers
(functions.cloud.offload), redis-server and the simulators, the XML-RPC calls (counted by the simulators:
onesim.sim.calls), the Redis round trips and commands (INFO commandstats, commands run inside Lua included).
Sizes: 1k, 10k, 20k environments (`--quick`: 1k and 2k). Target: 10k ≤ 2 s, 20k ≤ 2.2 × 10k.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench import tick_fill  # noqa: E402
from bench.common import Row, cpu_seconds, machine, table  # noqa: E402
from functions.cloud import offload  # noqa: E402
from functions.model.clock import FakeClock  # noqa: E402
from functions.store.runtime import JsonQueue  # noqa: E402
from functions.upkeep import ticks  # noqa: E402
from onesim import persist  # noqa: E402
from tests.harness import RedisServer  # noqa: E402

ENDPOINTS = tick_fill.ENDPOINTS
VMS = tick_fill.VMS


@dataclass
class Minute:
    """One measured tick."""

    wall: float
    cpu_self: float
    cpu_redis: float
    cpu_sims: float
    rpc_calls: int
    redis_trips: int
    redis_cmds: dict[str, int]
    refresh: dict[str, Any]
    policy: dict[str, Any]

    def note(self) -> str:
        acts = sum(v for k, v in self.policy.items() if k.startswith("action_"))
        return (f"refresh {self.wall - self.policy.get('seconds', 0):.2f} s (policies decided meanwhile "
                f"{self.policy.get('fed_seconds', 0):.2f} s) + the rest of the policies "
                f"{self.policy.get('seconds', 0):.2f} s; "
                f"cpu: python {self.cpu_self:.2f} s, redis {self.cpu_redis:.2f} s, sims {self.cpu_sims:.2f} s; "
                f"{self.rpc_calls} XML-RPC calls, {self.redis_trips} Redis round trips "
                f"({sum(self.redis_cmds.values())} cmds: {self._top()}); "
                f"{self.refresh.get('changed', 0)} records changed, {acts} actions, "
                f"{self.policy.get('events', 0)} events")


    def _top(self) -> str:
        top = sorted(self.redis_cmds.items(), key=lambda kv: -kv[1])[:4]
        return " ".join(f"{k} {v}" for k, v in top)


class _Trips:
    """Counts round trips to Redis: every packed send of a connection (a pipeline is one)."""

    def __init__(self) -> None:
        self.count = 0
        self._orig = redis.connection.Connection.send_packed_command

        def counted(conn: Any, command: Any, check_health: bool = True) -> None:
            self.count += 1
            self._orig(conn, command, check_health)
        redis.connection.Connection.send_packed_command = counted  # type: ignore[method-assign]

    def close(self) -> None:
        redis.connection.Connection.send_packed_command = self._orig  # type: ignore[method-assign]


def _redis_cpu(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _redis_cmds(r: redis.Redis) -> dict[str, int]:
    return {k[8:]: int(v.get("calls", 0)) for k, v in r.info("commandstats").items() if k.startswith("cmdstat_")}


def _own_cpu() -> float:
    """CPU seconds of this process and of the helper processes reading pool answers (functions.cloud.offload)."""
    return time.process_time() + sum(cpu_seconds(pid) for pid in offload.helper_pids())


def _sim_calls(sims: list[tick_fill.Sim]) -> int:
    """one.* XML-RPC calls the simulators have answered so far (onesim.sim.calls: counted by the servers, so
    the tick runs with its real client)."""
    return sum(sum(sim.rpc().sim.calls(tick_fill.AUTH)[1].values()) for sim in sims)


def _quiet(sims: list[tick_fill.Sim], timeout: float = 120.0) -> None:
    """Wait until the simulators stop working: each saves the new samples to its journal after `new_samples`
    (OpenNebula's own work between two ticks, not the tick's), from a background flusher that may sleep up to
    onesim.persist.MAX_FLUSH_SECONDS between two flushes; so no simulator may be busy (over 30 % of a core,
    more than synthetic guests take) for longer than that (a shorter wait let a flush of 25,000 VMs land inside
    the measured tick, holding the pool's lock)."""
    still_for, step = persist.MAX_FLUSH_SECONDS + 0.5, 0.25
    deadline = time.monotonic() + timeout
    last, moved = [cpu_seconds(s.proc.pid) for s in sims], time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(step)
        now = [cpu_seconds(s.proc.pid) for s in sims]
        if any(b - a > 0.3 * step for a, b in zip(last, now, strict=True)):
            moved = time.monotonic()
        elif time.monotonic() - moved >= still_for:
            return
        last = now


def tick_once(r: redis.Redis, queue: JsonQueue, clock: FakeClock, sims: list[tick_fill.Sim]) -> Minute:
    """The minute's refresh + policy pass, measured."""
    calls = _sim_calls(sims)
    cpu, server, cmds = _own_cpu(), _redis_cpu(r), _redis_cmds(r)
    sim_cpu = sum(cpu_seconds(s.proc.pid) for s in sims)
    trips = _Trips()
    try:
        start = time.perf_counter()
        refreshed = ticks.observe_and_decide(r, queue, clock)
        policy = refreshed.pop("policies")
        wall = time.perf_counter() - start
    finally:
        trips.close()
    after = _redis_cmds(r)
    diff = {k: n - cmds.get(k, 0) for k, n in after.items() if n > cmds.get(k, 0) and k != "info"}
    return Minute(wall, _own_cpu() - cpu, _redis_cpu(r) - server,
                  sum(cpu_seconds(s.proc.pid) for s in sims) - sim_cpu, _sim_calls(sims) - calls, trips.count, diff,
                  refreshed, policy)


def measure(workdir: Path, n_envs: int, template: tick_fill.Template,
            steady: int = 2) -> tuple[dict[str, Minute], tuple[float, float]]:
    """Start the simulators and Redis for n_envs, fill both, run a first and two steady minutes."""
    server = RedisServer(workdir / f"redis-{n_envs}", appendfsync="everysec").start()
    sims = tick_fill.start_sims(workdir, n_envs)
    try:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        raw = redis.Redis.from_url(server.url)
        rng = random.Random(7)
        placed = tick_fill.fill_sims(sims, n_envs, rng)
        before = int(r.info("memory")["used_memory"])
        tick_fill.fill_redis(r, n_envs, sims, placed, template)
        queue = JsonQueue("bench", connection=raw)
        clock = FakeClock(tick_fill.T0 + 5)
        out = {"first": tick_once(r, queue, clock, sims)}
        print(f"  {n_envs}: first {out['first'].wall:.2f} s {out['first'].refresh}", file=sys.stderr)
        unchecked = out["first"].refresh.get("unchecked", 0)
        while unchecked:                 # tag checks past the per-minute budget: finish them first
            clock.advance(60)
            more = tick_once(r, queue, clock, sims)
            unchecked = more.refresh.get("unchecked", 0)
            print(f"  {n_envs}: more tag checks {more.wall:.2f} s {more.refresh}", file=sys.stderr)
        for name in ("steady", "steady2", "steady3")[:steady]:
            clock.advance(60)
            tick_fill.new_samples(sims, placed, rng)
            _quiet(sims)
            out[name] = tick_once(r, queue, clock, sims)
        used = int(r.info("memory")["used_memory"]) - before      # the minutes' CPU hashes, jobs and events too
        memory = (used / (n_envs * VMS), used / n_envs)
        r.close()
        raw.close()
        return out, memory
    finally:
        tick_fill.stop_sims(sims)
        server.kill()


def _label(n: int) -> str:
    return f"{n // 1000}k envs"


def rows(workdir: Path, quick: bool, sizes: list[int] | None = None) -> list[Row]:
    """The benchmark's rows (bench/run.py calls this): per size the first and the steady tick, the 20k/10k
    ratio (or 2k/1k when quick) and the memory per VM and per environment at the largest size ≤ 10k."""
    sizes = sizes or ([1000, 2000] if quick else [1000, 10_000, 20_000])
    template = tick_fill.capture_template(workdir)
    out: list[Row] = []
    steady: dict[int, float] = {}
    cpu: dict[int, float] = {}
    memory: dict[int, tuple[float, float]] = {}
    for n in sizes:
        minutes, memory[n] = measure(workdir, n, template, 1 if quick else 2)
        first = minutes["first"]
        best = min((m for k, m in minutes.items() if k.startswith("steady")), key=lambda m: m.wall)
        steady[n], cpu[n] = best.wall, best.cpu_self + best.cpu_redis
        size = f"{_label(n)} x {VMS} VMs, {ENDPOINTS} endpoints"
        out.append(Row(f"minute tick, {_label(n)}, first (tags checked)", first.wall, "s", "", first.note(), size))
        out.append(Row(f"minute tick, {_label(n)}, steady", best.wall, "s", "<= 2" if n == 10_000 else "",
                       best.note(), size))
    big = [n for n in sizes if n >= 2 * min(sizes)]
    if big:
        base, top = min(sizes), max(big)
        ratio_base = top // 2 if top // 2 in steady else base
        out.append(Row(f"minute tick, {_label(top)} vs {_label(ratio_base)} steady", steady[top], "s", "",
                       f"ratio {steady[top] / steady[ratio_base]:.2f} for {top / ratio_base:.0f}x the envs",
                       _label(top), baseline=steady[ratio_base]))
        out.append(Row(f"minute tick cost ratio {_label(top)} / {_label(ratio_base)} (linear = 2)",
                       cpu[top] / cpu[ratio_base], "x", "<= 2.2",
                       f"CPU of the steady minute (python + redis: {cpu[top]:.2f} / {cpu[ratio_base]:.2f} s); "
                       "wall varies with the machine's other load", _label(top)))
    at = max((n for n in sizes if n <= 10_000), default=sizes[0])
    per_vm, per_env = memory[at]
    out.append(Row(f"Redis bytes per VM at {_label(at)}", per_vm, "B", "<= 2048",
                   "INFO used_memory delta / VMs (env hash, records, CPU figures, streams, jobs, indexes)", _label(at)))
    out.append(Row(f"Redis bytes per environment at {_label(at)}", per_env, "B", "", f"{VMS} VMs each", _label(at)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k and 2k environments only (< 40 s)")
    parser.add_argument("--sizes", default="", help="comma-separated environment counts")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s] or None
    load = Path("/proc/loadavg").read_text().split()[:3]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="carina-tick-bench-") as tmp:
        got = rows(Path(tmp), args.quick, sizes)
    print(f"minute tick bench on {machine()}; load {' '.join(load)} before, "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])} after; {time.perf_counter() - started:.0f} s")
    print(table(got))
    return 0 if all(row.value is not None for row in got) else 1


if __name__ == "__main__":
    sys.exit(main())
