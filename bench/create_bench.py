"""Issue 12: one large create and how fast the engine reacts to the master's MASTER_INIT_DONE.

`python bench/create_bench.py [--quick] [--workers N] [--keep]`

The stack is bench.creates_bench.CreateStack (redis-server, the simulator with synthetic guests and zero
lifecycle delays on a roomy inventory, gunicorn, `worker.py` x 1 as the Procfile runs it); templates of 0.1 CPU.

- create 1+100 → DONE (after one warm-up create of 1+2, so the worker's first-job costs, imports and
  connections, are not counted): wall time from just before `POST /configs/c100` to the CREATE job's status
  DONE (polled in Redis every 2 ms), every slave then announced (checked: 100 `add` commands in the simulator's
  synthetic SSH log and every slave record `announced`); the note splits it by the create's events. Baseline,
  in the same run and on the same simulator: a bare script allocating the same number of VMs (1 + 100, the
  same template size) one `one.vm.allocate` at a time with one pyone client, then polling `one.vmpool.info`
  on their id range until all are RUNNING.
- reaction MASTER_INIT_DONE → first slave allocate: for each of N creates of a 1+2 environment, one after
  the other, the time from the gateway receiving the master's MASTER_INIT_DONE callback to the first slave's
  `one.vm.allocate` reaching the simulator. Both ends are wall clocks (time.time) of processes on this
  machine. The simulator end is exact: the simulator keeps the arrival time of each allocate
  (`onesim.sim.allocations`). The gateway end comes from gunicorn's JSON access line of that callback
  (`GET /cgi-bin/updateappstatus.sh`, bound to the envid; the master's is the environment's first one, the
  slaves' come only after their allocation): its `ts` (logged when the answer is sent, millisecond precision)
  minus its `duration_ms`, i.e. when gunicorn started handling the request; so the figure is exact to about
  1 ms and includes the gateway's own handling of the callback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyone  # noqa: E402

from bench.common import Row, latency_rows, standalone  # noqa: E402
from bench.creates_bench import INVENTORY, TINY, CreateStack  # noqa: E402
from bench.stack_bench import Client  # noqa: E402
from functions.store import envstore  # noqa: E402
from tests.stack import SIM_AUTH  # noqa: E402

SERVICE = "bench"
SLAVES = 100
ENVS = "".join(f"""  '{name}' => {{
    :type => "compute", :endpoint => "onesim", :description => "1+{n}", :master_template => "tiny",
    :master_context_script => "tomcat-master.sh", :master_setup_time => 0, :master_context_var => "BALANCE_PORT=8080",
    :slave_template => "tiny", :slave_context_script => "tomcat-slave.sh", :num_slaves => {n}, :slavedata => "8080",
    :adminuser => "root", :app_url => "http://%MASTER%:8080/",
  }},
""" for name, n in (("c100", SLAVES), ("c2", 2)))
HOSTS = "hosts:\n" + "".join(f"  - {{name: host{i}, cores: 64, memory_mb: 524288}}\n" for i in range(4))
BARE_VM = ('NAME = "bare"\nCPU = 0.1\nMEMORY = 64\nDISK = [ IMAGE_ID = 0 ]\nNIC = [ NETWORK_ID = 0 ]\n'
           'CONTEXT = [ VMID = "$VMID", IP = "$NIC[IP]", HOSTNAME = "$NAME" ]\n')
POLL = 0.002


def bare_allocate(url: str, n: int, timeout: float = 60.0) -> float:
    """Seconds to allocate n VMs one call at a time with one pyone client and see them all RUNNING; the VMs are
    terminated afterwards."""
    one = pyone.OneServer(url, session=SIM_AUTH)
    start = time.perf_counter()
    ids = [one.vm.allocate(BARE_VM, False) for _ in range(n)]
    lo, hi = min(ids), max(ids)
    while True:
        pool = one.vmpool.info(-2, lo, hi, -1).VM
        if sum(1 for vm in pool if vm.STATE == 3 and vm.LCM_STATE == 3) == n:
            break
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"bare: {n} VMs not RUNNING within {timeout} s")
        time.sleep(POLL)
    took = time.perf_counter() - start
    for vmid in ids:
        one.vm.action("terminate-hard", vmid)
    return took


def wait_job(stack: CreateStack, jobid: str, timeout: float) -> str:
    """The job's final status (polled every POLL s), or raises after `timeout` s."""
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        status = stack.job(jobid).get("status") or ""
        if status in ("DONE", "FAIL", "ABORT"):
            return status
        time.sleep(POLL)
    raise RuntimeError(f"job {jobid} not final within {timeout} s")


def create_rows(stack: CreateStack, client: Client) -> list[Row]:
    """The 1+100 create and its bare baseline."""
    baseline = bare_allocate(stack.sim_url, SLAVES + 1)
    ssh_log = stack.workdir / "onesim" / "synthetic-ssh.log"
    before = ssh_log.read_text().count('command="~/tomcat-master.sh add ') if ssh_log.exists() else 0
    start = time.perf_counter()
    answer = json.loads(client.call("POST", "/configs/c100", 202))
    status = wait_job(stack, answer["jobid"], 120)
    took = time.perf_counter() - start
    if status != "DONE":
        raise RuntimeError(f"create c100 ended {status}: {stack.events(answer['envid'])[-3:]}")
    vms = envstore.get_vms(stack.r, answer["envid"])
    announced = sum(1 for v in vms.values() if v.role == "slave" and v.state == "announced")
    adds = ssh_log.read_text().count('command="~/tomcat-master.sh add ') - before if ssh_log.exists() else 0
    if announced != SLAVES or adds < SLAVES:
        raise RuntimeError(f"create c100 DONE but {announced} slaves announced, {adds} add commands seen")
    note = f"{phases(stack, answer['envid'])}; baseline = bare allocate+RUNNING of {SLAVES + 1} VMs {baseline:.2f} s"
    return [Row(f"create 1+{SLAVES} -> DONE", took, "s", "<= 1.5", note, f"1+{SLAVES} VMs", baseline),
            Row(f"create 1+{SLAVES} / baseline", took / baseline, "x", "<= 5", "", f"1+{SLAVES} VMs")]


def phases(stack: CreateStack, envid: str) -> str:
    """Where the create's time went, from its events (the worker's clock): request → MASTER_INIT_DONE seen,
    → every slave allocated, → the drive woken for the slaves (boot, the watcher's pass, the callbacks queued
    before it), → every slave announced (the job's DONE follows within milliseconds)."""
    events = envstore.list_events(stack.r, envid)

    def first(pred: Callable[[str], bool], last: bool = False) -> float:
        hits = [float(e["ts"]) for e in events if pred(e.get("msg", ""))]
        return (max if last else min)(hits) if hits else float("nan")

    start = float(events[0]["ts"])
    ready = first(lambda m: m.startswith("master initialised"))
    allocated = first(lambda m: m.startswith("slave s") and m.endswith("allocated"), last=True)
    woke = first(lambda m: m.startswith("slave s") and " RUNNING at " in m)
    told_all = first(lambda m: m.startswith("master: add"), last=True)
    return (f"master ready {ready - start:.2f} s, slaves allocated +{allocated - ready:.2f}, drive woken "
            f"+{woke - allocated:.2f}, all announced +{told_all - woke:.2f}")


def _gateway_receipts(log: Path) -> dict[str, float]:
    """envid -> wall time the gateway started handling its first `updateappstatus.sh` callback (access lines)."""
    out: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        if "updateappstatus.sh" not in line or not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        envid = doc.get("envid")
        if doc.get("path") != "/cgi-bin/updateappstatus.sh" or not envid or envid in out:
            continue
        ts = datetime.strptime(doc["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        out[envid] = ts.timestamp() - float(doc.get("duration_ms") or 0) / 1000
    return out


def reaction_rows(stack: CreateStack, client: Client, runs: int) -> list[Row]:
    """p50/p95 of MASTER_INIT_DONE at the gateway → first slave allocate at the simulator over `runs` creates."""
    since = time.time()
    masters: dict[str, int] = {}
    for _ in range(runs):
        answer = json.loads(client.call("POST", "/configs/c2", 202))
        if wait_job(stack, answer["jobid"], 60) != "DONE":
            raise RuntimeError(f"create c2 failed: {stack.events(answer['envid'])[-3:]}")
        vms = envstore.get_vms(stack.r, answer["envid"])
        masters[answer["envid"]] = int(vms["m"].vmid or -1)
        time.sleep(0.05)
    time.sleep(0.3)                                   # the access lines are written after the answers
    arrivals = {int(vmid): at for at, vmid in stack.sim_call("onesim.sim.allocations", since)}
    receipts = _gateway_receipts(stack.workdir / "gateway.log")
    samples = []
    for envid in masters:
        vms = envstore.get_vms(stack.r, envid)
        slave_at = min(arrivals[int(v.vmid)] for v in vms.values() if v.role == "slave" and v.vmid is not None)
        if envid not in receipts:
            raise RuntimeError(f"env {envid}: no MASTER_INIT_DONE access line in gateway.log")
        samples.append((slave_at - receipts[envid]) * 1000)
    rows = latency_rows("reaction MASTER_INIT_DONE -> first slave allocate", samples, "<= 50", "")
    for row in rows:
        row.size = f"{runs} creates of 1+2"
    return rows


def rows(workdir: Path, quick: bool, workers: int = 1) -> list[Row]:
    """Start the stack in `workdir`, measure, stop it. Quick: 20 reaction samples instead of 100."""
    inventory = INVENTORY.format(hosts=HOSTS)
    with CreateStack(workdir, workers, inventory, fork=False, profile=False) as stack:
        token = stack.add_service(SERVICE)
        text = re.sub(r"TEMPLATE = \{\n", "TEMPLATE = {\n" + TINY, stack.example_config(ENVS), count=1)
        stack.upload_example(token, files={})
        stack.upload(token, "config.rb", text.encode())
        client = Client(stack, token)
        warm = json.loads(client.call("POST", "/configs/c2", 202))       # the worker's first job pays its imports
        wait_job(stack, warm["jobid"], 60)
        out = create_rows(stack, client)
        out += reaction_rows(stack, client, 20 if quick else 100)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 reaction samples instead of 100")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    return standalone("create", "carina-create-", args.keep, lambda w: rows(w, args.quick, args.workers))


if __name__ == "__main__":
    sys.exit(main())
