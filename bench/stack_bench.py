"""stack: create → ACTIVE end to end, gateway latency under gunicorn, and the memory of the processes: the whole
stack of tests/stack.py (redis, simulator, gunicorn, one worker.py) with synthetic guests."""

from __future__ import annotations

import http.client
import time
from pathlib import Path
from urllib.parse import urlencode

from bench.common import Row, children, latency_rows, rss_mb, timed_ms, wait_until
from functions.model import tokens
from functions.store import envstore, install, keys
from tests.stack import Stack

SERVICE = "bench"
# Extra configuration entries: a 1+20 cluster, and a master-only one for the create-latency loop.
EXTRA_ENVS = "".join(
    f"""  '{name}' => {{
    :type => "compute", :endpoint => "onesim", :description => "{desc}", :placement_policy => "pack",
    :master_template => "example", :master_context_script => "tomcat-master.sh", :master_setup_time => 0,
    :master_context_var => "BALANCE_PORT=8080", :slave_template => "example",
    :slave_context_script => "tomcat-slave.sh", :num_slaves => {slaves}, :slavedata => "8080",
    :adminuser => "root", :app_url => "http://%MASTER%:8080/", :drain_time => 0,
  }},
""" for name, desc, slaves in (("tomcat20", "1+20 cluster", 20), ("solo", "master only", 0)))


class BenchStack(Stack):
    """tests.stack.Stack with synthetic guests: the simulator makes each VM's callbacks itself."""

    def _spawn(self, name: str, args: list[str]):  # type: ignore[no-untyped-def]
        if name == "onesim":
            args = ["synthetic" if a == "process" else a for a in args]
        return super()._spawn(name, args)


class Client:
    """One keep-alive HTTP connection to the gateway with the service token."""

    def __init__(self, stack: Stack, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    def call(self, method: str, path: str, expect: int = 200) -> bytes:
        """The body of one request; reconnects once if the server closed the idle keep-alive connection."""
        try:
            self.conn.request(method, path, headers=self.headers)
            resp = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.conn.close()
            self.conn.request(method, path, headers=self.headers)
            resp = self.conn.getresponse()
        body = resp.read()
        if resp.status != expect:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status} {body[:200]!r}")
        return body


def create_to_active(stack: Stack, client: Client, name: str, timeout: float) -> tuple[str, float | None]:
    """POST /configs/NAME, then seconds until the environment is ACTIVE (None on timeout or failure)."""
    import json

    start = time.perf_counter()
    envid = json.loads(client.call("POST", f"/configs/{name}", 202))["envid"]

    def active() -> bool:
        env = stack.env_state(envid) or {}
        if str(env.get("status", "")).startswith("MASTER_INIT_FAIL"):
            raise RuntimeError(f"{name}: create failed: {stack.events(envid)[-3:]}")
        return env.get("policy_status") == "ACTIVE"

    done = wait_until(active, timeout, every=0.05)
    return envid, None if done is None else time.perf_counter() - start


def redis_per_vm(stack: Stack, envid: str, grown: int) -> list[Row]:
    """Redis bytes per VM of an ACTIVE environment: its own state (env hash, VM records, VM index entries, callback
    gates; MEMORY USAGE of each key), and the growth of used_memory during its create divided by its VMs."""
    r = stack.r
    vms = envstore.get_vms(r, envid)
    names = [keys.env(envid), keys.env_vms(envid)]
    names += [keys.vm_index(v.endpoint, v.vmid) for v in vms.values() if v.vmid is not None]
    names += [k.decode() if isinstance(k, bytes) else k for k in r.scan_iter(match=keys.env(envid) + ":cbgate:*")]
    state = sum(r.memory_usage(k, samples=0) or 0 for k in names)
    events = r.memory_usage(keys.env_events(envid), samples=0) or 0
    n = len(vms)
    size = f"1+{n - 1} VMs"
    return [Row("Redis per VM (environment state)", state / n, "B", "<= 2048",
                f"env hash, VM records, VM index, callback gates ({len(names)} keys); events stream "
                f"{events / n:.0f} B/VM more (capped at {envstore.EVENT_MAXLEN} entries)", size),
            Row("Redis per VM (used_memory growth during the create)", grown / n, "B", "",
                "all of it: state, events of the env and service, RQ jobs and results (expire)", size)]


def callback_round_trips(stack: Stack, client: Client, envid: str, runs: int) -> list[Row]:
    """Status callbacks from the master with its real token: the HTTP answer, and until the worker applied it."""
    rec = envstore.get_vms(stack.r, envid)["m"]
    token = tokens.vm_token(install.callback_secret(stack.r), envid, "m", rec.nonce)
    http_ms, applied_ms = [], []
    for i in range(runs + 5):
        status = f"APP_BENCH_{i}"
        query = urlencode({"service": SERVICE, "vmid": rec.vmid, "envid": envid, "status": status, "token": token})
        start = time.perf_counter()
        client.call("GET", f"/cgi-bin/updateappstatus.sh?{query}")
        answered = time.perf_counter()
        if wait_until(lambda s=status: envstore.get_vms(stack.r, envid)["m"].status == s, 10, every=0.0005) is None:
            raise RuntimeError(f"callback {status} not applied within 10 s")
        if i >= 5:
            http_ms.append((answered - start) * 1000)
            applied_ms.append((time.perf_counter() - start) * 1000)
    size = "1 VM, one at a time"
    return (latency_rows("gateway callback (HTTP answer)", http_ms, size=size)
            + latency_rows("gateway callback ->queue->applied", applied_ms, "< 30", size=size))


def rows(workdir: Path, quick: bool) -> list[Row]:
    """The part for bench/run.py: start the stack, measure creates to ACTIVE, the gateway's routes and the
    processes' memory, stop the stack."""
    out: list[Row] = []
    # The per-VM callback rate limit (60 a minute) would refuse the callback loop: raised for the benchmark.
    limits = {"CARINA_CALLBACK_RATE": "1000000", "CARINA_CALLBACK_BURST": "1000000"}
    with BenchStack(workdir / "stack", workers=1, sim_delay=0.2, env=limits) as stack:
        token = stack.add_service(SERVICE)
        stack.upload_example(token, extra_envs=EXTRA_ENVS)
        client = Client(stack, token)
        envids = []
        for name, label in (("tomcat", "1+2 VMs"), ("tomcat20", "1+20 VMs")):
            used = stack.r.info("memory")["used_memory"]
            envid, secs = create_to_active(stack, client, name, 180)
            envids.append(envid)
            grown = stack.r.info("memory")["used_memory"] - used
            out.append(Row("e2e create -> ACTIVE", secs, "s", "", f"env {name}, sim phases 0.2 s", label))
        out += redis_per_vm(stack, envids[-1], grown)
        runs = 100 if quick else 300
        out += latency_rows("gateway GET /envs", timed_ms(lambda: client.call("GET", "/envs"), runs),
                            size="2 envs")
        out += callback_round_trips(stack, client, envids[0], 50 if quick else 200)
        out.append(Row("RSS RQ worker (worker.py, idle)", rss_mb(stack.workers[0].pid), "MiB"))
        out.append(Row("RSS simulator (synthetic guests)", rss_mb(stack.procs["onesim"].pid), "MiB", size="22 VMs"))
        stack.kill_workers()   # the creates below only queue: nothing competes with the gateway
        creates = timed_ms(lambda: client.call("POST", "/configs/solo", 202), 30 if quick else 100, warmup=2)
        out += latency_rows("gateway POST /configs/{name} (create, queued only)", creates, size="master-only env")
        gateway = [rss_mb(pid) or 0.0 for pid in children(stack.procs["gateway"].pid)]
        out.append(Row("RSS gateway worker (gunicorn, max)", max(gateway, default=None), "MiB", "",
                       f"{len(gateway)} workers"))
    return out
