"""The master's SSH host key comes from its token-proven network callback, so the first connection is already
checked: the engine against the simulator's real SSH server (onesim.sshd), real Redis, real simulator."""

from __future__ import annotations

from collections.abc import Iterator

import paramiko
import pytest

from functions.engine.context import load
from functions.engine.vmops import pin_id
from functions.model import hostkeys
from functions.ops.callbacks import apply
from functions.store import install, tenants
from onesim.sshd import Endpoint, ExecResult, SshServer, generate_host_key, load_host_key, public_line
from tests.harness import free_port, wait_port
from tests.integration.engine_fixtures import SERVICE, Rig, open_rig


@pytest.fixture
def rig(rdb) -> Iterator[Rig]:
    yield from open_rig(rdb, ssh_port=free_port())


class Master:
    """The master VM's SSH server at its IP, with a host key of its own; records what it runs."""

    def __init__(self, rig: Rig) -> None:
        self.server = SshServer()
        self.port = rig.settings.ssh_port
        self.public = tenants.service_keypair(rig.r, SERVICE)[1].split()[1]
        self.seen: list[str] = []
        self.key = ""

    def serve(self, ip: str) -> str:
        key = load_host_key(generate_host_key())
        self.server.listen("m", ip, self.port, Endpoint(key, self._authorize, self._run))
        wait_port(self.port, host=ip)
        self.key = public_line(key)
        return self.key

    def _authorize(self, user: str, key: paramiko.PKey) -> bool:
        return user == "root" and key.get_base64() == self.public

    def _run(self, command: str) -> ExecResult:
        self.seen.append(command)
        return ExecResult(b"", b"", 0)


@pytest.fixture
def master(rig: Rig) -> Iterator[Master]:
    rig.ssh = None                                           # the engine uses the real sshexec.run_remote
    m = Master(rig)
    yield m
    m.server.close()


def boot(rig: Rig, master: Master, hostkey: str | None) -> tuple[str, str]:
    """Create web with one slave up to the announce: the master's network callback (with `hostkey`), then its
    MASTER_INIT_DONE; returns (envid, jobid)."""
    envid, jobid = rig.create(num_slaves=1, master_setup_time=0)
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    rec = rig.vms(envid)["m"]
    master.serve(rec.ip)
    fields = {"newip": rec.ip, "name": "web-m"}
    if hostkey is not None:
        fields["hostkey"] = hostkey if hostkey != "served" else master.key
    assert rec.vmid is not None
    assert apply(rig.r, rig.queue, envid, rec.vmid, "net", fields, rig.clock, "m") == "applied"
    rig.callback(envid, "m", "MASTER_INIT_DONE")
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)                                         # the slave's announce: the first SSH connection
    return envid, jobid


def pinned(rig: Rig, envid: str) -> str | None:
    env = load(rig.r, envid)
    assert env is not None
    return install.pinned_hostkey(rig.r, pin_id(env, rig.vms(envid)["m"]))


def test_the_callback_key_checks_the_first_connection_and_is_pinned(rig: Rig, master: Master) -> None:
    envid, jobid = boot(rig, master, "served")
    assert rig.job(jobid)["status"] == "DONE"
    assert master.seen == [f"~/master.sh add {rig.vms(envid)['s0'].ip} 8080"]
    rec = rig.vms(envid)["m"]
    assert (rec.hostkey, rec.hostkey_pin) == (master.key, "callback") and pinned(rig, envid) == master.key
    assert f"master: host key pinned from callback ({hostkeys.fingerprint(master.key)})" in rig.events(envid)
    other = public_line(load_host_key(generate_host_key()))        # a later callback cannot change it
    apply(rig.r, rig.queue, envid, rec.vmid, "net", {"newip": rec.ip, "hostkey": other}, rig.clock, "m")
    assert rig.vms(envid)["m"].hostkey == master.key and pinned(rig, envid) == master.key
    assert any("host key differs from the one reported first: ignored" in m for m in rig.events(envid))


def test_without_a_key_in_the_callback_the_first_connection_is_trusted(rig: Rig, master: Master) -> None:
    envid, jobid = boot(rig, master, None)
    assert rig.job(jobid)["status"] == "DONE" and len(master.seen) == 1
    rec = rig.vms(envid)["m"]
    assert (rec.hostkey, rec.hostkey_pin) == ("", "first-use") and pinned(rig, envid) == master.key
    assert any(m.startswith("master: host key pinned on first use (SHA256:") for m in rig.events(envid))


def test_a_key_other_than_the_reported_one_is_refused_on_first_contact(rig: Rig, master: Master) -> None:
    forged = public_line(load_host_key(generate_host_key()))  # the callback names a key the server does not have
    envid, jobid = boot(rig, master, forged)
    job = rig.job(jobid)
    assert job["status"] == "FAIL" and "host key changed" in job["info"]
    assert master.seen == [] and pinned(rig, envid) is None    # nothing ran, nothing pinned
    assert rig.vms(envid)["m"].hostkey_pin == ""


def test_fingerprint_form(rig: Rig, master: Master) -> None:
    envid, jobid = rig.create(num_slaves=1, master_setup_time=0)
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    rec = rig.vms(envid)["m"]
    key = master.serve(rec.ip)
    assert rec.vmid is not None
    apply(rig.r, rig.queue, envid, rec.vmid, "net", {"newip": rec.ip, "hostkey": hostkeys.fingerprint(key)},
          rig.clock, "m")
    rig.callback(envid, "m", "MASTER_INIT_DONE")
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    assert rig.job(jobid)["status"] == "DONE" and len(master.seen) == 1
    assert pinned(rig, envid) == key and rig.vms(envid)["m"].hostkey_pin == "callback"
