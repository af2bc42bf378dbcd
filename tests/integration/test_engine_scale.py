"""The lifecycle engine's SCALEUP / SCALEDOWN paths, host key pinning over real SSH, and OpenNebula outages,
driven step by step in-process (real Redis, in-process simulator ticked by hand, one FakeClock)."""

from __future__ import annotations

from collections.abc import Iterator

import paramiko
import pytest
import redis

from functions.engine import vmops
from functions.engine.context import load
from functions.store import envstore, guards, install, tenants
from functions.store.envstore import VmRecord
from onesim import states as S
from onesim.sshd import Endpoint, ExecResult, SshServer, generate_host_key, load_host_key, public_line
from tests.harness import free_port, wait_port
from tests.integration.engine_fixtures import SERVICE, Rig, create_ready, open_rig, wait_refused


@pytest.fixture
def rig(rdb: redis.Redis) -> Iterator[Rig]:
    yield from open_rig(rdb, ssh_port=free_port())


def test_scaledown_announces_drains_then_terminates(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0)
    before = rig.vms(envid)
    jobid = rig.scale(envid, "down")
    assert rig.drive(envid) == "wait"
    s1 = before["s1"]
    assert rig.ssh.commands()[-1] == f"~/master.sh remove {s1.ip} 8080"      # the highest slot, announced
    env = rig.env(envid)
    assert env["op_slot"] == "s1" and env["phase"] == "draining"
    assert float(env["drain_until"]) == rig.clock() + 30
    assert rig.running(s1.vmid) and rig.vms(envid)["s1"].state == "announced"
    rig.tick(29.9)
    rig.drive(envid)
    assert rig.running(s1.vmid) and "s1" in rig.vms(envid)                     # not before drain_until
    rig.tick(0.1)
    rig.drive(envid)
    assert rig.vms(envid)["s1"].state == "removing" and rig.job(jobid)["status"] == "RUNNING"
    rig.tick()
    rig.drive(envid)
    job = rig.job(jobid)
    assert job["status"] == "DONE" and job["info"] == f"removed slave s1 (VM {s1.vmid})"
    assert sorted(rig.vms(envid)) == ["m", "s0"] and rig.sim_vm(s1.vmid).state == S.DONE
    assert rig.running(before["s0"].vmid) and len(rig.live(envid)) == 2
    events = rig.events(envid)
    assert events.index(f"master: remove {s1.ip} 8080") < events.index(f"slave s1: terminating VM {s1.vmid}")
    assert guards.current_op(rig.r, envid) is None and envid not in envstore.inflight(rig.r)


def test_scaledown_without_slaves_is_a_done_noop(rig: Rig) -> None:
    envid, _ = create_ready(rig, num_slaves=0, master_setup_time=0)
    jobid = rig.scale(envid, "down")
    assert rig.drive(envid) == "idle"
    job = rig.job(jobid)
    assert job["status"] == "DONE" and job["info"] == "no slave to remove"
    assert set(rig.vms(envid)) == {"m"} and len(rig.live(envid)) == 1 and rig.ssh.calls == []
    assert guards.current_op(rig.r, envid) is None


def test_scaleup_boot_failure_terminates_the_new_vm(rig: Rig) -> None:
    envid, _ = create_ready(rig, num_slaves=1, master_setup_time=0)
    with rig.sim.model.lock:
        rig.sim.model.set_delay("boot", 10)
    jobid = rig.scale(envid, "up")
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    new = rig.vms(envid)["s1"]
    assert rig.env(envid)["op_slot"] == "s1" and rig.sim_vm(new.vmid).lcm == S.BOOT
    assert rig.rpc().onesim.vm.fail(rig.sim.auth, new.vmid, "BOOT_FAILURE")[0]
    rig.drive(envid)
    job = rig.job(jobid)
    assert job["status"] == "FAIL" and job["info"] == f"slave s1: VM {new.vmid} failed to boot (fail)"
    assert rig.env(envid)["status"].startswith("SLAVE_SCALEUP_FAIL: slave s1")
    assert sorted(rig.vms(envid)) == ["m", "s0"] and rig.env(envid)["desired_slaves"] == "1"
    assert rig.sim_vm(new.vmid).state == S.DONE and len(rig.live(envid)) == 2
    assert guards.current_op(rig.r, envid) is None


class _Master:
    """The master's SSH server (onesim's paramiko sshd) at the master VM's IP; records what it runs."""

    def __init__(self, rig: Rig) -> None:
        self.server = SshServer()
        self.seen: list[str] = []
        self.port = rig.settings.ssh_port
        self.public = tenants.service_keypair(rig.r, SERVICE)[1].split()[1]

    def serve(self, ip: str) -> str:
        """(Re)start serving on ip with a new host key; returns that key's public line."""
        key = load_host_key(generate_host_key())
        self.server.listen("m", ip, self.port, Endpoint(key, self._authorize, self._run))
        wait_port(self.port, host=ip)
        return public_line(key)

    def _authorize(self, user: str, key: paramiko.PKey) -> bool:
        return user == "root" and key.get_base64() == self.public

    def _run(self, command: str) -> ExecResult:
        self.seen.append(command)
        return ExecResult(b"", b"", 0)


@pytest.fixture
def master_sshd(rig: Rig) -> Iterator[_Master]:
    rig.ssh = None                                           # the engine uses the real sshexec.run_remote
    master = _Master(rig)
    yield master
    master.server.close()


def pin(rig: Rig, envid: str, rec: VmRecord) -> str:
    """The pin id of the record's VM incarnation (service, endpoint URL, vmid, nonce)."""
    env = load(rig.r, envid)
    assert env is not None
    return vmops.pin_id(env, rec)


def test_announce_refuses_a_changed_master_host_key(rig: Rig, master_sshd: _Master) -> None:
    envid, _ = rig.create(num_slaves=1, master_setup_time=0)
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    master = rig.vms(envid)["m"]
    first_key = master_sshd.serve(master.ip)
    rig.callback(envid, "m", "MASTER_INIT_DONE")
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)                                         # announce over real SSH: key pinned on first use
    assert master_sshd.seen == [f"~/master.sh add {rig.vms(envid)['s0'].ip} 8080"]
    assert install.pinned_hostkey(rig.r, pin(rig, envid, master)) == first_key

    master_sshd.serve(master.ip)                             # the master now presents another host key
    up = rig.scale(envid, "up")
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    job, env = rig.job(up), rig.env(envid)
    assert job["status"] == "FAIL" and "host key changed" in job["info"]       # a security event, not a blip
    assert env["status"] == "SLAVE_SCALEUP_FAIL: master host key changed"
    down = rig.scale(envid, "down")
    rig.drive(envid)
    job, env = rig.job(down), rig.env(envid)
    assert job["status"] == "FAIL" and "host key changed" in job["info"]
    assert env["status"] == "SLAVE_SCALEDOWN_FAIL: master host key changed"
    assert len(master_sshd.seen) == 1                        # nothing ran under the changed key
    assert install.pinned_hostkey(rig.r, pin(rig, envid, master)) == first_key       # never accepted
    assert rig.vms(envid)["s1"].state == "running" and len(rig.live(envid)) == 3  # nothing terminated


def test_create_fails_when_the_master_key_differs_from_the_pinned_one(rig: Rig, master_sshd: _Master) -> None:
    envid, jobid = rig.create(num_slaves=1, master_setup_time=0)
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    master = rig.vms(envid)["m"]
    master_sshd.serve(master.ip)
    other = public_line(load_host_key(generate_host_key()))
    install.pin_hostkey(rig.r, pin(rig, envid, master), other)   # contacted before with another key
    rig.callback(envid, "m", "MASTER_INIT_DONE")
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    job = rig.job(jobid)
    assert job["status"] == "FAIL" and job["info"].startswith("announce s0: ") and "host key changed" in job["info"]
    assert rig.env(envid)["status"] == "SLAVE_CREATE_FAIL: master host key changed"
    assert master_sshd.seen == [] and install.pinned_hostkey(rig.r, pin(rig, envid, master)) == other


def test_opennebula_down_is_retried_with_growing_delay_without_duplicates(rig: Rig) -> None:
    envid, jobid = rig.create(master_setup_time=0)
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    rig.callback(envid, "m", "MASTER_INIT_DONE")
    assert rig.rpc().onesim.sim.down(rig.sim.auth, 1.5)[0]
    wait_refused(rig.sim.port)
    assert rig.drive(envid) == "retry"                       # s0's intent is written, its allocate refused
    env = rig.env(envid)
    assert env["retries"] == "1" and env["info"] == "OpenNebula unreachable, retrying in 1s"
    assert rig.vms(envid)["s0"].vmid is None and rig.job(jobid)["status"] == "RUNNING"
    assert rig.drive(envid) == "retry"
    env = rig.env(envid)
    assert env["retries"] == "2" and env["info"] == "OpenNebula unreachable, retrying in 2s"
    errors = [m for m in rig.events(envid) if m.startswith("OpenNebula unreachable")]
    assert len(errors) == 2 and errors[1].endswith("retrying in 2s")
    wait_port(rig.sim.port)                                  # the endpoint comes back
    rig.drive(envid)
    assert rig.env(envid)["retries"] == "0"
    rig.tick()
    rig.drive(envid)
    assert rig.job(jobid)["status"] == "DONE", rig.env(envid)["info"]
    assert [(a["slot"], a["vmid"] is not None) for a in rig.allocs] == [
        ("m", True), ("s0", False), ("s0", True), ("s1", True)]                # the refused call, then once
    assert len(rig.live(envid)) == 3                                           # no duplicate VM
