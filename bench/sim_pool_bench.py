"""The simulator's big pools: seconds per `one.vmpool.infoextended` / `one.vmpool.info` /
`one.vmpool.monitoring` call over real XML-RPC, at 1k / 10k / 100k VMs (--quick: 1k and 10k, < 60 s).

    .venv/bin/python bench/sim_pool_bench.py [--quick] [--sizes 1000,10000] [--clients wire,xmlrpc] [--keep]

For each size a fresh `python -m onesim` (own process, free port) gets N VMs shaped like Carina's (CONTEXT
with FILES, token and app variables; CARINA_* tags), allocated in batches of 1000 with
`onesim.vm.allocatebatch`, and all reach RUNNING. Each call is timed by four clients:
- wire: http.client, the answer's bytes only (server time + transfer, no parsing);
- xmlrpc: `xmlrpc.client.ServerProxy` (expat unmarshalling of the XML-RPC envelope);
- lxml: the wire bytes, the envelope by xmlrpc.client's unmarshaller with expat's buffer_text on (plain
  xmlrpc.client gets one callback per `&lt;`; lxml on the envelope is no faster), then the pool XML by
  lxml.etree: what Carina could do itself;
- pyone: `pyone.OneServer` (the envelope, then pyone's generateDS bindings).
Scopes: `all` (filter -2, every VM not DONE), `ids` (an id range of 1000 VMs in the middle of the pool) and
`all, new mon` (every VM got a new monitoring record just before the call, as happens between two of
Carina's ticks: nothing cached about the VMs' heads and monitoring is still valid). The value is the median
of the repetitions (seconds); MB is the size of the HTTP answer. The exit status is 1 if a call failed.
"""

from __future__ import annotations

import argparse
import http.client
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import Row, fmt, machine, rss_mb, stop, wait_until  # noqa: E402
from functions.views.tables import render_table  # noqa: E402
from tests.harness import free_port, project_env, wait_port  # noqa: E402

AUTH = "oneadmin:onesim"
BATCH = 1000
RANGE = 1000
TEMPLATE = """NAME = "env{env}-{slot}"
CPU = 0.1
MEMORY = 64
DISK = [ IMAGE_ID = 0 ]
NIC = [ NETWORK_ID = 0 ]
CONTEXT = [ FILES = "http://10.0.0.1/repo/tomcat/context/authorized_keys http://10.0.0.1/repo/tomcat/context/init.sh \
http://10.0.0.1/repo/tomcat/context/carina-lib.sh http://10.0.0.1/repo/tomcat/context/network.sh",
  VMID = "$VMID", ENVID = "{env}", SERVICE_NAME = "tomcat", CARINA_IP = "10.0.0.1", IP = "$NIC[IP]",
  HOSTNAME = "$NAME", DEFUSER = "root", APP_CONTEXT_SCRIPT = "slave.sh", MASTER = "127.1.0.1", NUM_SLAVES = "9",
  APP_PACKAGE = "http://10.0.0.1/repo/tomcat/app.war", CARINA_ROLE = "slave", CARINA_SLOT = "{slot}",
  CARINA_TOKEN = "{env}.{slot}.3f1e9d3c0b7a4e2f9c8d7b6a5f4e3d2c1b0a99887766554433221100ffeeddcc" ]
CARINA_SERVICE = "tomcat"
CARINA_ENVID = "{env}"
CARINA_ROLE = "slave"
CARINA_SLOT = "{slot}"
"""
CLIENTS = ("wire", "xmlrpc", "lxml", "pyone")


@dataclass
class Result:
    method: str
    size: int
    scope: str
    returned: int = 0
    mb: float = 0.0
    seconds: dict[str, float | None] | None = None


def inventory(path: Path, n: int) -> Path:
    """Hosts with room for n VMs of CPU 0.1 and one network with n + 100 addresses."""
    cores = max(16, int(n * 0.1 / 8 * 1.2) + 1)
    data = {"hosts": [{"name": f"bench{i}", "cores": cores, "memory_mb": 64 * n + 65536} for i in range(8)],
            "networks": [{"id": 0, "name": "benchnet", "bridge": "lo", "ip_start": "127.1.0.1", "size": n + 100,
                          "gateway": "127.0.0.1", "dns": "127.0.0.1", "mask": "255.0.0.0"}],
            "images": [{"id": 0, "name": "debian12", "size_mb": 2048}]}
    path.write_text(yaml.safe_dump(data))
    return path


def guest_mode(n: int) -> str:
    """synthetic, unless n SSH listeners (one socket each) would not fit under the open-files limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return "synthetic" if soft == resource.RLIM_INFINITY or n + 1000 < soft else "none"


def start(workdir: Path, n: int) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m onesim` sized for n VMs (no lifecycle delays, monitoring every hour); (process, URL)."""
    port, ssh_port = free_port(), free_port()
    args = [sys.executable, "-m", "onesim", "--port", str(port), "--auth", AUTH, "--guests", guest_mode(n),
            "--ssh-port", str(ssh_port), "--workdir", str(workdir / f"onesim-{n}"),
            "--inventory", str(inventory(workdir / f"inventory-{n}.yaml", n))]
    args += [f"--delay-{phase}=0" for phase in ("schedule", "prolog", "boot")] + ["--delay-monitor=3600"]
    with open(workdir / f"onesim-{n}.log", "ab") as log:
        proc = subprocess.Popen(args, cwd=ROOT, env=project_env(), stdout=log, stderr=subprocess.STDOUT)
    wait_port(port, timeout=30)
    return proc, f"http://127.0.0.1:{port}/RPC2"


def _ok(answer: list) -> object:
    if not answer[0]:
        raise RuntimeError(str(answer[1]))
    return answer[1]


def populate(url: str, n: int) -> None:
    """Allocate n VMs (10 per environment) and wait until the last one is RUNNING."""
    proxy = xmlrpc.client.ServerProxy(url)
    templates = [TEMPLATE.format(env=i // 10, slot=f"s{i % 10}") for i in range(n)]
    for first in range(0, n, BATCH):
        try:
            _ok(proxy.onesim.vm.allocatebatch(AUTH, templates[first:first + BATCH], False))
        except xmlrpc.client.Fault:  # a simulator without allocatebatch: one call per VM
            for text in templates[first:first + BATCH]:
                _ok(proxy.one.vm.allocate(AUTH, text, False))

    def last_running() -> bool:
        body = str(_ok(proxy.one.vm.info(AUTH, n - 1)))
        return "<STATE>3</STATE><LCM_STATE>3</LCM_STATE>" in body
    if wait_until(last_running, timeout=600, every=0.5) is None:
        raise RuntimeError(f"the {n} VMs did not reach RUNNING")


def _wire(url: str, method: str, params: tuple) -> bytes:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    try:
        conn.request("POST", parts.path, xmlrpc.client.dumps(params, method).encode(), {"Content-Type": "text/xml"})
        return conn.getresponse().read()
    finally:
        conn.close()


class _BufferedParser(xmlrpc.client.ExpatParser):
    """xmlrpc.client's parser with expat's buffer_text on: one text callback per string instead of one per
    entity (`&lt;`...), 4x faster on pool answers; a client can install it by overriding Transport.getparser."""

    def __init__(self, target: xmlrpc.client.Unmarshaller) -> None:
        super().__init__(target)
        self._parser.buffer_text = True  # type: ignore[attr-defined]
        self._parser.buffer_size = 1 << 24  # type: ignore[attr-defined]


def _lxml_count(body: bytes) -> int:
    """Envelope by the buffered unmarshaller, then the pool XML by lxml: how many top-level elements."""
    from lxml import etree

    target = xmlrpc.client.Unmarshaller()
    parser = _BufferedParser(target)
    parser.feed(body)
    parser.close()
    ok, value, *_ = target.close()[0]
    if not ok:
        raise RuntimeError(str(value))
    return len(etree.fromstring(value.encode(), etree.XMLParser(huge_tree=True)))


def _pyone(url: str, method: str, params: tuple) -> object:
    import pyone

    func = pyone.OneServer(url, session=AUTH)
    for part in method.split(".")[1:]:
        func = getattr(func, part)
    return func(*params[1:])


def _client_calls(url: str, method: str, params: tuple) -> dict[str, Callable[[], object]]:
    proxy = xmlrpc.client.ServerProxy(url)
    rpc = proxy
    for part in method.split("."):
        rpc = getattr(rpc, part)
    return {"wire": lambda: _wire(url, method, params), "xmlrpc": lambda: _ok(rpc(*params)),
            "lxml": lambda: _lxml_count(_wire(url, method, params)), "pyone": lambda: _pyone(url, method, params)}


def _median(fn: Callable[[], object], reps: int, before: Callable[[], object] | None) -> float | None:
    samples = []
    for _ in range(reps):
        if before is not None:
            before()
        start = time.perf_counter()
        try:
            fn()
        except Exception as exc:
            print(f"  call failed: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
            return None
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure(url: str, n: int, quick: bool, clients: list[str]) -> list[Result]:
    """Every (method, scope) row for a pool of n VMs."""
    proxy = xmlrpc.client.ServerProxy(url)

    def remonitor() -> object:  # every RUNNING VM takes a new monitoring sample now
        return _ok(proxy.onesim.sim.monitor(AUTH))
    try:
        remonitor()
        fresh: Callable[[], object] | None = remonitor
    except xmlrpc.client.Fault:
        fresh = None
    mid = max(0, n // 2 - RANGE // 2)
    cases = [("one.vmpool.infoextended", "all", (AUTH, -2, -1, -1, -1), None),
             ("one.vmpool.infoextended", f"ids {RANGE}", (AUTH, -2, mid, mid + RANGE - 1, -1), None),
             ("one.vmpool.infoextended", "all, new mon", (AUTH, -2, -1, -1, -1), fresh),
             ("one.vmpool.info", "all", (AUTH, -2, -1, -1, -1), None),
             ("one.vmpool.monitoring", "all", (AUTH, -2, 0), None),
             ("one.vmpool.monitoring", "all, new mon", (AUTH, -2, 0), fresh)]
    out = []
    for method, scope, params, before in cases:
        if "new mon" in scope and before is None:
            continue
        body = _wire(url, method, params)
        res = Result(method, n, scope, returned=_lxml_count(body), mb=len(body) / 1e6, seconds={})
        calls = _client_calls(url, method, params)
        for client in clients:
            slow = client == "pyone" and res.returned * (1 if "monitoring" in method else 20) >= 200_000
            reps = 1 if slow or n >= 100_000 or (quick and n >= 10_000) else (2 if quick else 3)
            res.seconds[client] = _median(calls[client], reps, before)  # type: ignore[index]
        print(f"  {n:>6} {method} {scope}: " + ", ".join(f"{c} {fmt(s)}" for c, s in res.seconds.items()),
              file=sys.stderr, flush=True)
        out.append(res)
    return out


def run_size(workdir: Path, n: int, quick: bool, clients: list[str]) -> tuple[list[Result], float, float | None]:
    """Start a simulator, fill it with n VMs, measure; (results, seconds to allocate and run them all, simulator
    RSS in MiB after the calls). The simulator is stopped."""
    proc, url = start(workdir, n)
    try:
        t0 = time.perf_counter()
        populate(url, n)
        setup = time.perf_counter() - t0
        results = measure(url, n, quick, clients)
        return results, setup, rss_mb(proc.pid)
    finally:
        stop(proc)


def setup_note(n: int, setup: float, rss: float | None) -> str:
    return (f"{n} VMs ({guest_mode(n)} guests): allocated and RUNNING in {setup:.1f} s, "
            f"simulator RSS {fmt(rss)} MiB after the calls")


def report(results: list[Result]) -> str:
    """The table: one row per (method, pool size, scope), seconds per call for each client."""
    rows = [[r.method.removeprefix("one."), r.size, r.scope, r.returned, f"{r.mb:.1f}",
             *[fmt((r.seconds or {}).get(c)) for c in CLIENTS]] for r in results]
    return render_table(["METHOD", "POOL", "SCOPE", "RETURNED", "MB", *[f"{c} s" for c in CLIENTS]], rows)


def pool_rows(results: list[Result]) -> list[Row]:
    """One row per (call, scope, pool size): the seconds of the `wire` client (the simulator's answer and its
    transfer: what the simulator costs), the other clients' seconds and the answer's size in the note."""
    out = []
    for r in results:
        secs = r.seconds or {}
        others = ", ".join(f"{c} {fmt(v)}" for c, v in secs.items() if c != "wire")
        out.append(Row(f"sim pool {r.method.removeprefix('one.')} ({r.scope})", secs.get("wire"), "s", "",
                       f"{r.mb:.1f} MB, {r.returned} VMs; clients (s): {others}", f"{r.size // 1000}k VMs"))
    return out


def rows(workdir: Path, quick: bool) -> list[Row]:
    """The part for bench/run.py: quick 1k VMs (every client) and 10k (wire, lxml: pyone alone would take 30 s);
    full 1k, 10k and 100k with every client (about 15 minutes, 2.5 GB RAM)."""
    workdir.mkdir(parents=True, exist_ok=True)
    plan = [(1000, list(CLIENTS)), (10000, ["wire", "lxml"])] if quick else [
        (n, list(CLIENTS)) for n in (1000, 10000, 100000)]
    out = []
    for n, clients in plan:
        results, setup, rss = run_size(workdir, n, quick, clients)
        size = f"{n // 1000}k VMs"
        out.append(Row("sim pool allocatebatch -> all RUNNING", setup, "s", "", f"{guest_mode(n)} guests", size))
        out += pool_rows(results)
        out.append(Row("RSS simulator (after the pool calls)", rss, "MiB", "", "", size))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k and 10k VMs only, fewer repetitions (< 60 s)")
    parser.add_argument("--sizes", default="", help="comma-separated pool sizes (default 1000,10000,100000)")
    parser.add_argument("--clients", default=",".join(CLIENTS), help=f"some of {','.join(CLIENTS)} (default all)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (simulator logs)")
    args = parser.parse_args(argv)
    clients = [c for c in args.clients.split(",") if c]
    if not clients or set(clients) - set(CLIENTS):
        parser.error(f"--clients: choose from {','.join(CLIENTS)}")
    sizes = [int(s) for s in args.sizes.split(",") if s] or ([1000, 10000] if args.quick else [1000, 10000, 100000])
    workdir = Path(tempfile.mkdtemp(prefix="carina-poolbench-"))
    started = time.perf_counter()
    results: list[Result] = []
    notes: list[str] = []
    try:
        for n in sizes:
            got, setup, rss = run_size(workdir, n, args.quick, clients)
            results += got
            notes.append(setup_note(n, setup, rss))
    except Exception as exc:
        print(f"bench: {type(exc).__name__}: {exc}\nlogs in {workdir}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    mode = "quick" if args.quick else "full"
    print(f"onesim pool benchmark ({mode}), {machine()}, {time.perf_counter() - started:.0f} s\n")
    print(report(results), end="")
    print("".join(f"\n{note}" for note in notes))
    if args.keep:
        print(f"logs: {workdir}")
    return 1 if any(v is None for r in results for v in (r.seconds or {}).values()) else 0


if __name__ == "__main__":
    sys.exit(main())
