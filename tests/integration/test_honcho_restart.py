"""README's "Using it" flow under `honcho start` with the DEFAULT, relative CARINA_HOME (./var), then a restart of
the whole stack: Redis (AOF) keeps Carina's environments, the simulator keeps its VMs (same ids, still RUNNING),
and the next environment gets new VM ids, never 0, 1, 2 again. Then the cloud is reset (ids reused): a new
environment gets ids 0, 1, 2 and removing the first one (whose records name those ids) leaves them alone.

The stack runs in a temporary directory holding the Procfile and symlinks to the code, so ./var is that
directory's own; only the ports come from the environment (free ones). Redis requires the password the stack
generated in ./var (0700); the guests' sandboxes are outside ./var, in the default /var/tmp/onesim-guests-<uid>/...,
and when the tests run as root (with `make setup`'s carina-guest user) the guests run as that user.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyone
import pytest
import redis

from onesim.persist import wipe
from onesim.sandbox import GUEST_USER, sandbox_root
from tests.harness import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SKIP = {".git", ".venv", "var", "tests", "bench", ".pytest_cache", ".ruff_cache", ".hypothesis", "__pycache__"}


def wait_until(cond: Callable[[], Any], timeout: float, what: str, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:]) if log else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")
        time.sleep(0.5)


def guest_processes(root: Path) -> list[int]:
    """Pids of processes whose command line or environment names a sandbox under `root`."""
    marker = f"{root}/vm-".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes() or marker in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


class Honcho:
    """`honcho start` in `app` with CARINA_HOME unset and free ports."""

    def __init__(self, app: Path) -> None:
        self.app = app
        self.ports = {name: str(free_port()) for name in ("REDIS_PORT", "CARINA_PORT", "ONESIM_PORT",
                                                          "ONESIM_SSH_PORT")}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CARINA_", "ONESIM_", "REDIS_"))
               and k != "PYTHONPATH"}
        self.env = {**env, **self.ports, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "PYTHONUNBUFFERED": "1",
                    "HOME": str(app), "CARINA_IP": f"127.0.0.1:{self.ports['CARINA_PORT']}"}
        self.log = app / "honcho.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.roots: set[Path] = set()

    def sandboxes(self) -> Path:
        """The simulator's guest sandbox root (the default one, named by var/onesim/guests.id)."""
        root = sandbox_root(self.app / "var" / "onesim", env={})
        self.roots.add(root)
        return root

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(BIN / "honcho"), "start"], cwd=self.app, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{self.ports['CARINA_PORT']}/health"
        wait_until(lambda: self._get(url), 60, "the gateway", self.log)

    @staticmethod
    def _get(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> int:
        """Ctrl-C: SIGINT to honcho, which stops every process of the Procfile."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(30)
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def run(self, *args: str, token: str = "") -> str:
        env = dict(self.env, CARINA_TOKEN=token) if token else self.env
        proc = subprocess.run(list(args), cwd=self.app, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{args}: {proc.stderr}{proc.stdout}"
        return proc.stdout

    def one(self) -> pyone.OneServer:
        return pyone.OneServer(f"http://127.0.0.1:{self.ports['ONESIM_PORT']}/RPC2", session="oneadmin:onesim")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Honcho]:
    app = tmp_path / "app"
    app.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in SKIP:
            (app / entry.name).symlink_to(entry)
    honcho = Honcho(app)
    yield honcho
    honcho.kill()
    if (app / "var" / "onesim" / "guests.id").is_file():
        honcho.sandboxes()                        # the current cloud's, even if the test never asked
    for root in honcho.roots:
        for pid in guest_processes(root):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def _create(h: Honcho, token: str) -> tuple[str, list[int]]:
    """`oneenv --create tomcat`, wait until its job is DONE; (envid, the environment's VM ids)."""
    out = h.run("bin/oneenv", "--create", "tomcat", token=token)
    created = json.loads(out[out.index("{"):])
    envid, jobid = str(created["envid"]), str(created["jobid"])

    def job_status() -> str:
        jobs = json.loads(h.run("bin/oneenv", "--jobs", "--json", token=token))
        status = next((str(j["status"]) for j in jobs if str(j.get("jobid", j.get("id"))) == jobid), "")
        assert status not in ("FAIL", "ABORT"), h.run("bin/oneenv", "--events", envid, token=token)
        return status == "DONE" and status

    wait_until(job_status, 120, f"the CREATE job of environment {envid}", h.log)
    envs = json.loads(h.run("bin/oneenv", "--envs", "--json", token=token))
    assert next(e for e in envs if str(e["envid"]) == envid)["policy_status"] == "ACTIVE"
    return envid, _env_vms(h, token, envid)


def _env_vms(h: Honcho, token: str, envid: str) -> list[int]:
    return sorted(int(v["vmid"]) for v in json.loads(h.run("bin/oneenv", "--envvms", envid, "--json", token=token)))


def _running(h: Honcho) -> set[int]:
    return {vm.ID for vm in h.one().vmpool.info(-2, -1, -1, -1).VM if (vm.STATE, vm.LCM_STATE) == (3, 3)}


def _kept_apart(h: Honcho) -> None:
    """Redis answers only with the password of ./var (0700); guests live outside ./var, as the guest user when
    the simulator could switch to it."""
    home = h.app / "var"
    assert stat.S_IMODE(home.stat().st_mode) == 0o700 and stat.S_IMODE((home / "redis.pass").stat().st_mode) == 0o600
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=int(h.ports["REDIS_PORT"])).ping()
    root = h.sandboxes()
    assert not root.is_relative_to(home)
    keys = list(root.glob("vm-*/home/*/.ssh/authorized_keys"))      # installed by each guest's init.sh
    assert len(keys) == 3
    try:
        guest_uid = pwd.getpwnam(GUEST_USER).pw_uid if os.geteuid() == 0 else None
    except KeyError:
        guest_uid = None
    if guest_uid is not None:
        assert f"guests run as {GUEST_USER}" in h.log.read_text()
        assert {k.stat().st_uid for k in keys} == {guest_uid}
    else:
        assert "guests are NOT isolated" in h.log.read_text()


def test_honcho_start_with_the_default_home_survives_a_restart(stack: Honcho) -> None:
    h = stack
    h.start()
    token = h.run("bin/carina-admin", "service", "add", "oneenv1", "--class", "silver").strip().splitlines()[-1]
    files = sorted(str(p.relative_to(h.app)) for p in (*(h.app / "config" / "examples").glob("*.vm"),
                                                        *(h.app / "context").glob("*.sh")))
    h.run("bin/oneenv", "--upload", *files, token=token)
    upload = h.app / "upload"
    upload.mkdir()
    config = (h.app / "config" / "examples" / "config.rb").read_text()
    (upload / "config.rb").write_text(re.sub(r"127\.0\.0\.1:2633/", f"127.0.0.1:{h.ports['ONESIM_PORT']}/", config))
    h.run("bin/oneenv", "--upload", "upload/config.rb", token=token)

    envid, first = _create(h, token)
    assert len(first) == 3 and first == sorted(_running(h))
    assert (h.app / "var" / "onesim" / "state" / "pool.json").is_file()
    assert "cannot open" not in h.log.read_text()  # the guests' init scripts were found
    _kept_apart(h)

    assert h.stop() in (0, 130)
    assert not guest_processes(h.sandboxes()), "a guest process outlived the simulator"
    h.start()

    assert set(first) <= _running(h), "the simulator lost its VMs"
    assert _env_vms(h, token, envid) == first
    envid2, second = _create(h, token)
    assert envid2 != envid and len(second) == 3 and min(second) > max(first)
    assert h.stop() in (0, 130)
    assert not guest_processes(h.sandboxes())

    # The cloud is reset behind Carina's back (what `python -m onesim --fresh` does): VM ids start at 0 again.
    old = h.sandboxes()
    wipe(h.app / "var" / "onesim")
    assert not old.exists()
    h.start()
    envid3, third = _create(h, token)               # a new master under a reused id: no stale host-key pin
    assert third == first, "the reset cloud numbers its VMs from the start again"
    out = h.run("bin/oneenv", "--remove", envid, token=token)      # environment 1's ids are environment 3's now
    assert out
    wait_until(lambda: envid not in {str(e["envid"]) for e in json.loads(h.run("bin/oneenv", "--envs", "--json",
                                                                              token=token))},
               120, f"the removal of environment {envid}", h.log)
    assert set(third) <= _running(h), "removing environment 1 terminated environment 3's VMs"
    events = h.run("bin/oneenv", "--events", envid3, token=token)
    assert "terminating" not in events
    assert h.stop() in (0, 130)
