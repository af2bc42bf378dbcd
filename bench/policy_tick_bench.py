"""The minute's policy pass at scale: `python bench/policy_tick_bench.py [--quick]` prints a table.

Populates a fresh redis-server (AOF everysec, as config/redis.conf) directly with N environments of 10 VM
records each (services of 1,000 environments; per service 70 % `auto` elasticity + recreate policy, 20 %
time-based windows, 10 % guide-style failover pairs), as the minute tick's VM refresh leaves them, then runs
functions.upkeep.policies.run twice: the first minute (every env's counters and info change: one event each)
and the next (steady state). About 1 % of the environments are over their CPU threshold with their counter one
tick short, so they start a SCALEUP through the op guard (a real job, a real RQ enqueue). The XML-RPC refresh
is not part of it. Each row gives the wall time, and in its note the CPU seconds of this process and of
redis-server (the machine may be shared: the CPU figures say what the pass itself costs).
Sizes: 1k, 10k, 20k environments (`--quick`: 1k). Target: 10k envs / 100k VMs under 2 s.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import yaml  # noqa: E402

from bench.common import Row, machine, table  # noqa: E402
from functions.conf.schema import load_config  # noqa: E402
from functions.model.clock import FakeClock  # noqa: E402
from functions.store import envstore, keys, tenants  # noqa: E402
from functions.store.envstore import VmRecord  # noqa: E402
from functions.store.runtime import JsonQueue  # noqa: E402
from functions.upkeep import policies  # noqa: E402
from tests.harness import RedisServer  # noqa: E402

PER_SERVICE = 1000
VMS = 10
T0 = 1_790_000_000.0
AUTO = {"mode": "auto", "min": 2, "max": 20, "period": 3, "scaleup_expr": "avgcpu > 70",
        "scaledown_expr": "avgcpu < 5", "cooldown": 120}
RECREATE = {"period": 3, "recreate_expr": "nummissing > 0 || numunknown > 0 || numfailed > 0"}
WINDOWS = {"mode": "time-based", "timezone": "Europe/Paris",
           "windows": {"office": {"spec": "Mon-Fri 0800-1800", "min": 10}, "night": {"spec": "0000-0600", "min": 2}}}
FAILOVER = {"period": 3, "failover_role": "active", "failover_group": "g",
            "failover_expr": "(numunknown + nummissing + numfail)/numvms > 0.50", "failback_expr": "numunknown == 0"}


def _entry(**extra: object) -> dict[str, object]:
    return {"type": "compute", "endpoint": "one", "master_template": "t", "slave_template": "t",
            "num_slaves": VMS - 1, **extra}


def config_text() -> str:
    """The benchmark services' configuration (YAML), validated like an upload."""
    cfg = {"ENDPOINT": {"one": {"proxy": "http://127.0.0.1:2633/RPC2", "oneauth": "oneadmin:x"}},
           "TEMPLATE": {"t": {"file": "t.vm", "cpu": 1, "memory": 512, "network_id": {"one": 0},
                              "image_id": {"one": 0}}},
           "ENVIRONMENT": {"web": _entry(elasticity_policy=AUTO, availability_policy=RECREATE),
                           "batch": _entry(elasticity_policy=WINDOWS),
                           "ha_a": _entry(availability_policy=dict(FAILOVER, recreate_expr=RECREATE["recreate_expr"])),
                           "ha_p": _entry(num_slaves=VMS - 1, elasticity_policy=WINDOWS,
                                          availability_policy={"period": 3, "failover_role": "passive",
                                                               "failover_group": "g"})}}
    return yaml.safe_dump(cfg)


def _kind(i: int) -> str:
    slot = i % 10
    return "web" if slot < 7 else "batch" if slot < 9 else ("ha_a" if i % 20 == 9 else "ha_p")


def _vms(rng: random.Random, envid: int, hot: bool) -> dict[str, str]:
    out = {}
    for i in range(VMS):
        slot, broken = ("m" if i == 0 else f"s{i - 1}"), rng.random() < 0.002
        rec = VmRecord(slot=slot, role="master" if i == 0 else "slave", index=max(0, i - 1), endpoint="one",
                       vmid=envid * VMS + i, state="announced" if i else "running", status="MASTER_INIT_DONE",
                       ip=f"10.{envid // 250 % 250}.{envid % 250}.{i + 1}", one_state="unkn" if broken else "runn",
                       vm_state=3, lcm_state=16 if broken else 3, cpu=rng.uniform(75, 95) if hot else
                       rng.uniform(20, 45), created=T0 - 86400)
        out[slot] = rec.to_json()
    return out


def populate(r: redis.Redis, n_envs: int, spec_text: str) -> None:
    """N environments with VM records, policy state one minute old, in services of PER_SERVICE."""
    rng = random.Random(7)
    normalized = load_config(config_text(), "yaml", {"t.vm"})
    minute = int(T0 // 60) - 1
    for s in range((n_envs + PER_SERVICE - 1) // PER_SERVICE):
        service = f"bench{s}"
        tenants.add_service(r, service)
        tenants.save_config(r, service, normalized, config_text(), "yaml", lambda: T0 - 3600)
        with r.pipeline(transaction=False) as p:
            for k in range(s * PER_SERVICE, min(n_envs, (s + 1) * PER_SERVICE)):
                envid, name = k + 1, _kind(k)
                hot = name == "web" and rng.random() < 0.01
                fields = envstore.env_fields(str(envid), service, name, {}, "1", T0 - 86400)
                fields.update(spec=spec_text, status="MASTER_INIT_DONE", policy_status="PASSIVE" if name == "ha_p"
                              else "ACTIVE", pol_minute=minute, pol_up=2 if hot else 0, job="")
                p.hset(keys.env(str(envid)), mapping=fields)
                p.zadd(keys.service_envs(service), {str(envid): envid})
                p.hset(keys.env_vms(str(envid)), mapping=_vms(rng, envid, hot))
            p.execute()


def _redis_cpu(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _timed(r: redis.Redis, run: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], float, float]:
    """run()'s stats, the CPU seconds this process and the redis-server spent on it."""
    cpu, server = time.process_time(), _redis_cpu(r)
    stats = run()
    return stats, time.process_time() - cpu, _redis_cpu(r) - server


def measure(url: str, n_envs: int) -> list[Row]:
    r = redis.Redis.from_url(url, decode_responses=True)
    raw = redis.Redis.from_url(url)
    r.flushall()
    spec_text = json.dumps({"name": "web", "endpoint": "one", "templates": {"master": {"text": "x" * 1500}}})
    start = time.perf_counter()
    populate(r, n_envs, spec_text)
    filled = time.perf_counter() - start
    queue = JsonQueue("bench", connection=raw)
    clock = FakeClock(T0 + 5)
    first, cpu1, redis1 = _timed(r, lambda: policies.run(r, queue, clock))
    clock.advance(60)
    second, cpu2, redis2 = _timed(r, lambda: policies.run(r, queue, clock))
    label = f"{n_envs // 1000}k envs / {n_envs * VMS // 1000}k VMs"
    target = "< 2" if n_envs == 10_000 else ""
    acts = sum(v for k, v in first.items() if k.startswith("action_"))
    rows = [Row(f"policy pass, {label}, first minute", first["seconds"], "s", target,
                f"cpu {cpu1:.2f} s + redis {redis1:.2f} s; {acts} actions, {first.get('events', 0)} events"),
            Row(f"policy pass, {label}, next minute", second["seconds"], "s", target,
                f"cpu {cpu2:.2f} s + redis {redis2:.2f} s; {second.get('evaluated', 0)} evaluated, "
                f"{second.get('events', 0)} events; populated in {filled:.0f} s")]
    r.close()
    raw.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k environments only")
    args = parser.parse_args()
    sizes = [1000] if args.quick else [1000, 10_000, 20_000]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="carina-policy-bench-") as tmp:
        server = RedisServer(Path(tmp), appendfsync="everysec").start()
        try:
            for n in sizes:
                rows.extend(measure(server.url, n))
        finally:
            server.kill()
    print(f"policy tick bench on {machine()}")
    print(table(rows))
    return 0 if all(row.value is not None for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
