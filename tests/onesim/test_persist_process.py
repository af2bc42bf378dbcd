"""`python -m onesim` as a real process: its cloud survives SIGTERM and SIGKILL, RUNNING VMs' guests boot again,
`--fresh` empties it, and no guest process outlives the simulator (checked by scanning /proc)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyone
import pytest

from onesim.persist import load_records
from onesim.sandbox import sandbox_root
from tests.harness import free_port, project_env, wait_port

INIT = b"""#!/bin/sh
echo boot >> "$HOME/boots"
( while :; do sleep 1; done ) &
"""
AUTH = "oneadmin:onesim"


def wait_until(cond: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def procs_with(text: str) -> list[int]:
    """Pids whose command line contains `text` (independent of the simulator's own sweep)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture
def files_url() -> Iterator[str]:
    """A tiny HTTP server playing Carina's /repo: serves init.sh."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(INIT)))
            self.end_headers()
            self.wfile.write(INIT)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/init.sh"
    httpd.shutdown()


class SimProcess:
    """Starts and stops `python -m onesim` on one workdir, with process guests and no lifecycle delays."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port, self.ssh_port = free_port(), free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.roots: set[Path] = set()

    def root(self) -> Path:
        """The sandbox root the simulator uses (the default one: /var/tmp/onesim-guests-<uid>/<guests.id>)."""
        root = sandbox_root(self.workdir, env={})
        self.roots.add(root)
        return root

    def start(self, *extra: str) -> pyone.OneServer:
        args = [sys.executable, "-m", "onesim", "--port", str(self.port), "--ssh-port", str(self.ssh_port),
                "--auth", AUTH, "--guests", "process", "--workdir", str(self.workdir),
                *(f"--delay-{phase}=0" for phase in ("schedule", "prolog", "boot", "shutdown", "epilog")), *extra]
        log = open(self.workdir.parent / "onesim.log", "a")  # noqa: SIM115
        env = {k: v for k, v in project_env().items() if k != "ONESIM_GUEST_ROOT"}
        self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        log.close()
        wait_port(self.port, timeout=30)
        return pyone.OneServer(f"http://127.0.0.1:{self.port}/RPC2", session=AUTH)

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(20)
        self.proc = None
        return code

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimProcess]:
    s = SimProcess(tmp_path / "onesim")
    yield s
    s.close()
    if (s.workdir / "guests.id").is_file():
        s.root()                                  # the current cloud's, even if the test never asked
    for root in s.roots:
        for pid in procs_with(f"{root}/vm-"):  # never leave strays behind, even when the test failed
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def _running(one: pyone.OneServer, vmid: int) -> bool:
    vm = one.vm.info(vmid)
    return (vm.STATE, vm.LCM_STATE) == (3, 3)


def _boots(sim: SimProcess, vmid: int) -> int:
    path = sim.root() / f"vm-{vmid}" / "home" / "root" / "boots"
    return len(path.read_text().split()) if path.exists() else 0


def _view(one: pyone.OneServer, vmid: int) -> tuple:
    vm = one.vm.info(vmid)
    host = one.host.info(vm.HISTORY_RECORDS.HISTORY[-1].HID)
    return (vm.STATE, vm.LCM_STATE, vm.TEMPLATE["NIC"]["IP"], vm.HISTORY_RECORDS.HISTORY[-1].HID, vm.STIME,
            host.HOST_SHARE.RUNNING_VMS, host.HOST_SHARE.CPU_USAGE, host.HOST_SHARE.MEM_USAGE)


def test_the_cloud_and_its_guests_survive_sigterm_and_sigkill(sim: SimProcess, files_url: str) -> None:
    template = f'CPU = 1\nMEMORY = 64\nNIC = [ NETWORK_ID = 0 ]\nCONTEXT = [ FILES = "{files_url}" ]'
    one = sim.start()
    root = sim.root()
    assert not root.is_relative_to(sim.workdir)              # guests live outside the simulator's (0700) state
    guest_procs = f"{root}/vm-"
    vmid = one.vm.allocate(template)
    wait_until(lambda: _running(one, vmid) and _boots(sim, vmid) == 1 and procs_with(guest_procs), what="guest")
    before = _view(one, vmid)

    assert sim.signal(signal.SIGTERM) == 0
    assert not procs_with(guest_procs), "a guest process outlived SIGTERM"
    wait_until(lambda: not procs_with(f"onesim.reaper {root}"), 10, "the watchdog to exit")

    one = sim.start()
    assert sim.root() == root                                # the same sandboxes after a restart
    assert _view(one, vmid) == before
    wait_until(lambda: _boots(sim, vmid) == 2 and procs_with(guest_procs), what="the guest to boot again")
    second = one.vm.allocate(template)
    assert second == vmid + 1
    wait_until(lambda: _running(one, second) and _boots(sim, second) == 1, what="second guest")

    def saved_running() -> bool:
        saved = load_records(sim.workdir / "state")
        return saved is not None and (saved[2].get(second) or {}).get("lcm") == 3

    wait_until(saved_running, 10, "the second VM to be saved RUNNING")

    assert sim.signal(signal.SIGKILL) == -signal.SIGKILL
    wait_until(lambda: not procs_with(guest_procs), 10, "the watchdog to kill the guests of a killed simulator")

    one = sim.start()
    assert _view(one, vmid)[:5] == before[:5] and _running(one, second)
    third = one.vm.allocate("CPU = 1\nMEMORY = 64")
    assert third > second  # ids are never reused, even after a crash
    wait_until(lambda: _boots(sim, vmid) == 3 and _boots(sim, second) == 2, what="both guests to boot again")

    assert sim.signal(signal.SIGINT) == 0
    assert not procs_with(guest_procs)
    one = sim.start("--fresh")
    assert one.vmpool.info(-2, -1, -1, -2).VM == [] and not root.exists() and sim.root() != root
    assert one.vm.allocate("CPU = 1\nMEMORY = 64") == 0


def test_a_relative_carina_home_still_boots_guests(tmp_path: Path, files_url: str) -> None:
    """The bug of `honcho start` with the default CARINA_HOME: guests ran a relative path from their own cwd."""
    port = free_port()
    env = project_env(CARINA_HOME="rel/home", ONESIM_PORT=str(port), ONESIM_SSH_PORT=str(free_port()),
                      ONESIM_AUTH=AUTH)
    proc = subprocess.Popen([sys.executable, "-m", "onesim", "--delay-schedule=0", "--delay-prolog=0",
                             "--delay-boot=0"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        wait_port(port, timeout=30)
        one = pyone.OneServer(f"http://127.0.0.1:{port}/RPC2", session=AUTH)
        vmid = one.vm.allocate(f'CPU = 1\nMEMORY = 64\nCONTEXT = [ FILES = "{files_url}" ]')
        root = sandbox_root(tmp_path / "rel" / "home" / "onesim", env={})
        boots = root / f"vm-{vmid}" / "home" / "root" / "boots"
        wait_until(boots.exists, what="init.sh to run from the context CD")
        log = (boots.parent.parent.parent / "guest.log").read_text()
        assert "init.sh exited with status 0" in log and "cannot open" not in log
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    assert not procs_with(f"{root}/vm-")
    shutil.rmtree(root, ignore_errors=True)
