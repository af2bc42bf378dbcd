"""Auth on every method, faults for bad calls, malformed input, fault injection, endpoint down, CLIs,
inventory errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import xmlrpc.client
from pathlib import Path

import pyone
import pytest
import requests

from onesim.inventory import InventoryError, load_inventory, parse_inventory
from onesim.server import start_simulator
from tests.harness import free_port, project_env, wait_port
from tests.onesim.conftest import Sim

SAMPLE_ARGS = {"s": "x", "i": 0, "b": False, "d": 1.0, "a": ["x"]}


def test_wrong_session_fails_every_method_with_auth_error(sim: Sim) -> None:
    proxy = xmlrpc.client.ServerProxy(sim.handle.url)
    methods = sim.handle.api.methods
    assert len(methods) >= 25
    for name, method in sorted(methods.items()):
        params = [SAMPLE_ARGS[k] for k in method.sig[:method.required]]
        answer = getattr(proxy, name)("oneadmin:wrong", *params)
        assert answer == [False, f"[{name}] User couldn't be authenticated, aborting call.", 0x100, -1, 0], name
    with pytest.raises(pyone.OneAuthenticationException):
        sim.client("nobody:x").vmpool.info(-2, -1, -1, -1)
    with pytest.raises(pyone.OneAuthenticationException):
        sim.client("oneadmin:").system.version()


def test_unknown_method_and_bad_arity_or_types_are_faults(sim: Sim) -> None:
    proxy = xmlrpc.client.ServerProxy(sim.handle.url)
    auth = sim.handle.auth
    cases = [
        (lambda: proxy.one.vm.explode(auth), -506), (lambda: proxy.one.vm.info(auth), -501),
        (lambda: proxy.one.vm.info(auth, 1, False, 3), -501), (lambda: proxy.one.vm.info(auth, "1"), -501),
        (lambda: proxy.one.vm.info(auth, True), -501), (lambda: proxy.one.vm.action(auth, 1, "terminate"), -501),
        (lambda: proxy.one.vm.allocate(auth, "CPU=1", 1), -501),
        (lambda: proxy.one.vmpool.info(auth, -2, -1, -1), -501),
        (lambda: proxy.one.system.version(), -501), (lambda: proxy.one.system.version(5), -501),
    ]
    for call, code in cases:
        with pytest.raises(xmlrpc.client.Fault) as exc:
            call()
        assert exc.value.faultCode == code
    with pytest.raises(pyone.OneException, match="Fault"):
        sim.client().vm.action(0, "terminate")


def test_malformed_bodies_never_crash_it(sim: Sim) -> None:
    for body in (b"not xml", b"<methodCall><methodName>one.vm.info</methodName><params>", b"",
                 b"<?xml version='1.0'?><methodCall><params/></methodCall>"):
        req = urllib.request.Request(sim.handle.url, body, {"Content-Type": "text/xml"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert b"<fault>" in resp.read()
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(sim.handle.url.replace("/RPC2", "/other"), b"x", timeout=5)
    one = sim.client()
    for text in ('CPU = "1', "CPU = [ A = 1 ", "<TEMPLATE><CPU>1</TEMPLATE>", "\u2603 = 1", "=" * 10000):
        with pytest.raises(pyone.OneInternalException, match=r"^\[one.vm.allocate\] Parse error"):
            one.vm.allocate(text)
    assert one.system.version() == "7.0.0"


def test_fault_injection_methods(sim: Sim) -> None:
    one = sim.client()
    proxy = xmlrpc.client.ServerProxy(sim.handle.url)
    auth = sim.handle.auth
    ids = [one.vm.allocate("CPU = 1\nMEMORY = 64\nNIC = [ NETWORK_ID = 0 ]") for _ in range(4)]
    sim.advance()
    assert proxy.onesim.vm.fail(auth, ids[0], "UNKNOWN") == [True, ids[0], 0]
    assert proxy.onesim.vm.fail(auth, ids[1], "BOOT_FAILURE")[0]
    assert proxy.onesim.vm.fail(auth, ids[2], "vanish")[0]
    assert [(v.ID, v.LCM_STATE) for v in one.vmpool.info(-2, -1, -1, -1).VM] == [(0, 16), (1, 36), (3, 3)]
    assert sim.model.networks[0].leased.get(2) is None  # the vanished VM's address is free again
    assert sim.guests.wait_for(7)[4:] == [("stop", ids[0]), ("stop", ids[1]), ("stop", ids[2])]
    answer = proxy.onesim.vm.fail(auth, ids[3], "MELT")
    assert answer[0] is False and answer[2] == 0x1000 and "kind" in answer[1]
    held = one.vm.allocate("CPU = 1\nMEMORY = 64", True)
    assert proxy.onesim.vm.fail(auth, held, "UNKNOWN")[2] == 0x800
    assert proxy.onesim.vm.setcpu(auth, ids[3], 180)[0]
    assert float(one.vm.info(ids[3]).MONITORING.CPU) == 180.0
    assert proxy.onesim.vm.setcpu(auth, ids[3], -1.0)[2] == 0x1000
    assert proxy.onesim.vm.setcpu(auth, 99, 1.0)[2] == 0x400
    assert proxy.onesim.sim.setdelay(auth, "boot", 2.5)[0] and sim.model.delays["boot"] == 2.5
    bad = proxy.onesim.sim.setdelay(auth, "warp", 1)
    assert bad[0] is False and "delay name" in bad[1]


def test_endpoint_down_refuses_then_recovers() -> None:
    handle = start_simulator(delays={})
    try:
        one = pyone.OneServer(handle.url, session=handle.auth)
        assert xmlrpc.client.ServerProxy(handle.url).onesim.sim.down(handle.auth, 1.0) == [True, 0, 0]
        deadline = time.monotonic() + 2
        refused = False
        while time.monotonic() < deadline and not refused:
            try:
                one.system.version()
            except requests.exceptions.ConnectionError:
                refused = True
        assert refused
        wait_port(handle.port, timeout=5)
        assert one.system.version() == "7.0.0"
    finally:
        handle.stop()


def test_background_ticker_runs_vms_without_help() -> None:
    handle = start_simulator(delays={})
    try:
        one = pyone.OneServer(handle.url, session=handle.auth)
        vmid = one.vm.allocate("CPU = 1\nMEMORY = 64")
        deadline = time.monotonic() + 5
        while one.vm.info(vmid).LCM_STATE != 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert one.vm.info(vmid).LCM_STATE == 3
    finally:
        handle.stop()


def test_fault_cli_against_a_running_simulator(sim: Sim) -> None:
    one = sim.client()
    vmid = one.vm.allocate("CPU = 1\nMEMORY = 64")
    sim.advance()

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "onesim", "fault", "--url", sim.handle.url, "--auth",
                               sim.handle.auth, *args], capture_output=True, text=True, timeout=30, env=project_env())

    assert cli("setcpu", str(vmid), "55").returncode == 0
    assert float(one.vm.info(vmid).MONITORING.CPU) == 55.0
    assert cli("vm-fail", str(vmid), "UNKNOWN").returncode == 0 and one.vm.info(vmid).LCM_STATE == 16
    assert cli("fill", "on").returncode == 0 and sim.model.hosts_full
    failed = cli("vm-fail", "999", "UNKNOWN")
    assert failed.returncode == 1 and "Error getting virtual machine [999]" in failed.stderr


def test_python_m_onesim_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = project_env(ONESIM_PORT=str(port), ONESIM_AUTH="admin:pw", CARINA_HOME=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "onesim", "--guests", "none", "--delay-boot", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_port(port, timeout=20)
        one = pyone.OneServer(f"http://127.0.0.1:{port}/RPC2", session="admin:pw")
        assert one.system.version() == "7.0.0" and one.user.info(-1).NAME == "admin"
        assert (tmp_path / "onesim").is_dir()
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0 and "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    bad = subprocess.run([sys.executable, "-m", "onesim", "--inventory", str(tmp_path / "missing.yaml")],
                         env=env, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "cannot read" in bad.stderr


def test_inventory_errors_name_the_field(tmp_path: Path) -> None:
    assert len(load_inventory(None, "a:b").hosts) >= 3
    with pytest.raises(InventoryError) as exc:
        parse_inventory({"hosts": [{"name": "h", "cores": 0, "memory_mb": "x", "attributes": {"bad-name": 1}},
                                   "nope"],
                         "networks": [{"id": 0, "ip_start": "300.1.1.1", "size": 5}], "extra": 1}, "a:b")
    errors = exc.value.errors
    for expected in ("hosts[0].cores: must be a positive integer", "hosts[0].memory_mb: must be an integer",
                     "hosts[0].attributes.bad-name: bad attribute name", "hosts[1]: must be a mapping",
                     "networks[0].ip_start: not an IPv4 address", "extra: unknown key"):
        assert expected in errors
    with pytest.raises(InventoryError, match="auth: must be user:password"):
        parse_inventory({"hosts": [{"name": "h", "cores": 1, "memory_mb": 1}]}, "nocolon")
    broken = tmp_path / "inv.yaml"
    broken.write_text("hosts: [")
    with pytest.raises(InventoryError, match="not valid YAML"):
        load_inventory(broken, "a:b")
    with pytest.raises(ValueError, match="guests"):
        start_simulator(guests="magic")
