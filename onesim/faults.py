"""Fault injection: XML-RPC methods of the simulator's own (session-checked like every method) and a CLI.

Methods (first parameter the session, answers as OpenNebula's):
  onesim.vm.fail(session, id, kind)        kind UNKNOWN | BOOT_FAILURE | PROLOG_FAILURE | EPILOG_FAILURE | vanish
  onesim.vm.setcpu(session, id, pct)       monitored CPU % of a VM (int or float-as-string)
  onesim.sim.setdelay(session, name, s)    lifecycle delay: schedule, prolog, boot, shutdown, epilog, save, monitor
  onesim.host.fill(session, bool)          true: no host has room (new VMs stay PENDING); false: back to normal
  onesim.sim.down(session, seconds)        the endpoint refuses connections for that many seconds
  onesim.vm.allocatebatch(session, [template...], hold)  one.vm.allocate for each (at most 10000), in one
                                           call: the ids; stops at the first bad template (those before stay)
  onesim.sim.monitor(session)              every RUNNING VM takes a monitoring sample now: how many did
  onesim.sim.calls(session)                {method: count} of the one.* calls dispatched since the start
  onesim.sim.allocations(session, since)   [[arrival wall time, VM id], ...] of the one.vm.allocate calls that
                                           reached the simulator at or after `since` (the last 10000 kept)
  onesim.vm.setcpubatch(session, [id...], [pct...])  setcpu for each pair (at most 10000 a call), in one call:
                                           how many were set; unknown ids are skipped
CLI: ``python -m onesim fault [--url U] [--auth A] vm-fail ID KIND | setcpu ID PCT | setdelay NAME S |
fill on|off | down S``.
"""

from __future__ import annotations

import argparse
import os
import sys
import xmlrpc.client

from onesim import lifecycle as L
from onesim import states as S
from onesim.api import Api
from onesim.inventory import UserSpec
from onesim.template import TemplateError, parse

MAX_BATCH = 10000


def _number(num: float, field: str, low: float, high: float) -> float:
    if not low <= num <= high:  # also rejects NaN
        raise S.OneError(S.RPC_API, f"{field}: must be between {low:g} and {high:g}")
    return num


def register(api: Api) -> None:
    """Add the onesim.* methods to `api`."""
    m = api.model

    def fail(u: UserSpec, vmid: int, kind: str) -> int:
        L.inject_failure(m, m.vm(vmid), kind)
        return vmid

    def setcpu(u: UserSpec, vmid: int, pct: float) -> int:
        vm = m.vm(vmid)
        vm.cpu_pct = _number(pct, "pct", 0, 100 * 1024)
        if vm.state == S.ACTIVE:
            m.record_monitoring(vm)
        return vmid

    def setdelay(u: UserSpec, name: str, seconds: float) -> int:
        try:
            m.set_delay(name, _number(seconds, f"delay {name}", 0, 86400))
        except ValueError as exc:
            raise S.OneError(S.RPC_API, str(exc)) from None
        return 0

    def fill(u: UserSpec, full: bool) -> int:
        m.hosts_full = full
        m.capacity_epoch += 1
        return 0

    def down(u: UserSpec, seconds: float) -> int:
        secs = _number(seconds, "seconds", 0, 3600)
        hook = api.hooks.get("down")
        if hook is None:
            raise S.OneError(S.INTERNAL, "this simulator cannot go down (no server attached)")
        hook(secs)
        return 0

    def allocatebatch(u: UserSpec, texts: list, hold: bool) -> list[int]:
        if len(texts) > MAX_BATCH:
            raise S.OneError(S.RPC_API, f"templates: at most {MAX_BATCH} per call")
        ids = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise S.OneError(S.RPC_API, f"template {i}: must be a string")
            try:
                ids.append(L.allocate(m, parse(text), u, hold).id)
            except TemplateError as exc:
                raise S.OneError(S.INTERNAL, f"template {i}: {exc}") from None
            except S.OneError as exc:
                raise S.OneError(exc.code, f"template {i}: {exc.message}", exc.obj_id) from None
        return ids

    def setcpubatch(u: UserSpec, ids: list, pcts: list) -> int:
        if len(ids) != len(pcts) or len(ids) > MAX_BATCH:
            raise S.OneError(S.RPC_API, f"ids and pcts: as many of each, at most {MAX_BATCH}")
        done = 0
        for vmid, pct in zip(ids, pcts, strict=True):
            if isinstance(vmid, int) and vmid in m.vms:
                setcpu(u, vmid, pct)
                done += 1
        return done

    def monitor(u: UserSpec) -> int:
        running = [vm for _, vm in sorted(m.vms.items()) if (vm.state, vm.lcm) == L.RUNNING]
        for vm in running:
            m.record_monitoring(vm)
        return len(running)

    def allocations(u: UserSpec, since: float) -> list[list[float | int]]:
        return [[at, vmid] for at, vmid in list(api.allocations) if at >= since]

    def calls(u: UserSpec) -> dict[str, int]:
        return dict(api.calls)

    api.add("onesim.vm.fail", "is", 2, fail)
    api.add("onesim.vm.setcpu", "id", 2, setcpu)
    api.add("onesim.sim.setdelay", "sd", 2, setdelay)
    api.add("onesim.host.fill", "b", 1, fill)
    api.add("onesim.sim.down", "d", 1, down)
    api.add("onesim.vm.allocatebatch", "ab", 2, allocatebatch)
    api.add("onesim.sim.monitor", "", 0, monitor)
    api.add("onesim.sim.allocations", "d", 1, allocations)
    api.add("onesim.sim.calls", "", 0, calls)
    api.add("onesim.vm.setcpubatch", "aa", 2, setcpubatch)


def _parser() -> argparse.ArgumentParser:
    port = os.environ.get("ONESIM_PORT", "2633")
    p = argparse.ArgumentParser(prog="python -m onesim fault", description="Inject faults into a running onesim.")
    p.add_argument("--url", default=f"http://127.0.0.1:{port}/RPC2")
    p.add_argument("--auth", default=os.environ.get("ONESIM_AUTH", "oneadmin:onesim"))
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("vm-fail", help="make a VM UNKNOWN, BOOT_FAILURE, ... or vanish")
    f.add_argument("vmid", type=int)
    f.add_argument("kind")
    c = sub.add_parser("setcpu", help="set a VM's monitored CPU %%")
    c.add_argument("vmid", type=int)
    c.add_argument("pct", type=float)
    d = sub.add_parser("setdelay", help="set a lifecycle delay (seconds)")
    d.add_argument("name")
    d.add_argument("seconds", type=float)
    h = sub.add_parser("fill", help="on: no host has room; off: normal")
    h.add_argument("state", choices=["on", "off"])
    w = sub.add_parser("down", help="refuse connections for N seconds")
    w.add_argument("seconds", type=float)
    return p


def cli(argv: list[str]) -> int:
    """Run the fault CLI; prints the answer, returns 0 on success, 1 on an error answer, 2 if unreachable."""
    args = _parser().parse_args(argv)
    proxy = xmlrpc.client.ServerProxy(args.url)
    calls = {
        "vm-fail": lambda: proxy.onesim.vm.fail(args.auth, args.vmid, args.kind),
        "setcpu": lambda: proxy.onesim.vm.setcpu(args.auth, args.vmid, args.pct),
        "setdelay": lambda: proxy.onesim.sim.setdelay(args.auth, args.name, args.seconds),
        "fill": lambda: proxy.onesim.host.fill(args.auth, args.state == "on"),
        "down": lambda: proxy.onesim.sim.down(args.auth, args.seconds),
    }
    try:
        answer = calls[args.cmd]()
    except (OSError, xmlrpc.client.ProtocolError) as exc:
        print(f"onesim at {args.url} unreachable: {exc}", file=sys.stderr)
        return 2
    except xmlrpc.client.Fault as exc:
        print(f"fault {exc.faultCode}: {exc.faultString}", file=sys.stderr)
        return 1
    if not answer[0]:
        print(answer[1], file=sys.stderr)
        return 1
    print("ok")
    return 0
