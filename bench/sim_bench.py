"""sim: the OpenNebula simulator at scale, synthetic guests: allocate N VMs over XML-RPC, time until every
one is RUNNING, and the latency of one.vmpool.info with N VMs in the pool."""

from __future__ import annotations

import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import xmlrpc.client
from pathlib import Path

import yaml

from bench.common import Row, latency_rows, rss_mb, stop, timed_ms, wait_until
from tests.harness import free_port, project_env, wait_port

ROOT = Path(__file__).resolve().parent.parent
AUTH = "oneadmin:onesim"
DELAY = 0.2   # seconds for each of schedule, prolog, boot
TEMPLATE = 'NAME="bench-{i}"\nCPU="0.1"\nVCPU="1"\nMEMORY="64"\nNIC=[NETWORK_ID="0"]\nDISK=[IMAGE_ID="0"]\n'


def inventory(path: Path, hosts: int = 8) -> Path:
    """An inventory large enough for thousands of small VMs (the default one holds 72 cores)."""
    data = {"hosts": [{"name": f"bench{i}", "cores": 128, "memory_mb": 1048576} for i in range(hosts)],
            "networks": [{"id": 0, "name": "loopback", "bridge": "lo", "ip_start": "127.0.1.1", "size": 65000,
                          "gateway": "127.0.0.1", "dns": "127.0.0.1", "mask": "255.0.0.0"}],
            "images": [{"id": 0, "name": "debian12", "size_mb": 2048}]}
    path.write_text(yaml.safe_dump(data))
    return path


def start(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m onesim --guests synthetic` on free ports; returns the process and its XML-RPC URL."""
    port, ssh_port = free_port(), free_port()
    args = [sys.executable, "-m", "onesim", "--port", str(port), "--auth", AUTH, "--guests", "synthetic",
            "--ssh-port", str(ssh_port), "--workdir", str(workdir / "onesim-scale"),
            "--inventory", str(inventory(workdir / "scale-inventory.yaml"))]
    args += [f"--delay-{phase}={DELAY}" for phase in ("schedule", "prolog", "boot")]
    with open(workdir / "onesim-scale.log", "ab") as log:
        proc = subprocess.Popen(args, cwd=ROOT, env=project_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, timeout=30)
    except BaseException:
        stop(proc)
        raise
    return proc, f"http://127.0.0.1:{port}/RPC2"


def _call(proxy: xmlrpc.client.ServerProxy, method: str, *args: object) -> object:
    ok, result, *_ = getattr(proxy, method)(AUTH, *args)
    if not ok:
        raise RuntimeError(f"{method}: {result}")
    return result


def running(proxy: xmlrpc.client.ServerProxy) -> int:
    """How many VMs of the pool are ACTIVE/RUNNING (STATE 3, LCM_STATE 3)."""
    root = ET.fromstring(str(_call(proxy, "one.vmpool.info", -2, -1, -1, -1)))
    return sum(1 for vm in root.iter("VM") if vm.findtext("STATE") == "3" and vm.findtext("LCM_STATE") == "3")


def measure(url: str, n: int, quick: bool) -> list[Row]:
    """Rows for allocation rate of n VMs, time until all are RUNNING and vmpool.info latency."""
    size = f"{n} VMs"
    proxy = xmlrpc.client.ServerProxy(url)
    start_t = time.perf_counter()
    for i in range(n):
        _call(proxy, "one.vm.allocate", TEMPLATE.format(i=i), False)
    alloc_s = time.perf_counter() - start_t
    to_running = wait_until(lambda: running(proxy) >= n, timeout=300, every=0.2)
    total = None if to_running is None else alloc_s + to_running
    out = [Row("sim allocate, one client", n / alloc_s, "VMs/s", "", f"{alloc_s:.1f} s", size),
           Row("sim first allocate -> all RUNNING", total, "s", "", f"boot phases {3 * DELAY:.1f} s/VM", size)]
    samples = timed_ms(lambda: _call(proxy, "one.vmpool.info", -2, -1, -1, -1), 10 if quick else 30, 2)
    return out + latency_rows("sim vmpool.info", samples, size=size)


def rows(workdir: Path, quick: bool) -> list[Row]:
    """The part for bench/run.py: a simulator of its own, measure(), then its RSS; the simulator is stopped."""
    workdir.mkdir(parents=True, exist_ok=True)
    n = 300 if quick else 1000
    proc, url = start(workdir)
    try:
        out = measure(url, n, quick)
        out.append(Row("RSS simulator (synthetic guests)", rss_mb(proc.pid), "MiB", size=f"{n} VMs"))
    finally:
        stop(proc)
    return out
