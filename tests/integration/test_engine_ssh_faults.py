"""The engine's SSH failure branches against a real SSH server (onesim's paramiko sshd at the master VM's IP),
whose master fails on purpose: its script exits non-zero, it refuses connections, drops them during the
handshake, or refuses our key. Announce retries (create and scale-up), SLAVE_SCALEUP_FAIL after the last
attempt, and scale-down's "removing anyway" are checked by job status/info, env status, ssh_tries and events
(real Redis, the in-process simulator over XML-RPC, one FakeClock)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import paramiko
import pytest
import redis

from functions.engine.steps import scale
from functions.store import envstore, guards, tenants
from onesim import states as S
from onesim.sshd import Endpoint, ExecResult, SshServer, generate_host_key, load_host_key
from tests.harness import free_port, wait_port
from tests.integration.engine_fixtures import SERVICE, Rig, open_rig, wait_refused


@pytest.fixture
def rig(rdb: redis.Redis) -> Iterator[Rig]:
    yield from open_rig(rdb, ssh_port=free_port(), ssh_timeout=5.0)


class Dropper:
    """A TCP listener that accepts and closes at once (a master whose sshd dies on every connection)."""

    def __init__(self, ip: str, port: int) -> None:
        self.sock = socket.create_server((ip, port))
        self.accepted = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)                # wakes the blocked accept (close alone does not)
        self.sock.close()
        self.thread.join(5)


class FailingMaster:
    """The master VM's SSH side: `mode` is "ok", "exit" (the script exits 3), "auth" (our key refused),
    "drop" (connections closed before the handshake) or "refuse" (nothing listens). Records what it ran."""

    def __init__(self, rig: Rig) -> None:
        self.server = SshServer()
        self.port = rig.settings.ssh_port
        self.public = tenants.service_keypair(rig.r, SERVICE)[1].split()[1]
        self.key = load_host_key(generate_host_key())
        self.ran: list[str] = []
        self.logins = 0
        self.fail_ips: set[str] = set()                      # "ok" mode: `add`/`remove` of these IPs exit 3
        self.dropper: Dropper | None = None
        self.ip = ""

    def set(self, ip: str, mode: str) -> None:
        """Serve `ip` the way `mode` says (same host key throughout, so the pin holds)."""
        self.ip = ip
        self.server.unlisten("m")
        if self.dropper is not None:
            self.dropper.close()
            self.dropper = None
        if mode == "refuse":
            wait_refused(self.port, host=ip)
        elif mode == "drop":
            self.dropper = Dropper(ip, self.port)
        else:
            run = self._ok if mode in ("ok", "auth") else self._exit
            auth = self._refuse if mode == "auth" else self._authorize
            self.server.listen("m", ip, self.port, Endpoint(self.key, auth, run))
            wait_port(self.port, host=ip)

    def _authorize(self, user: str, key: paramiko.PKey) -> bool:
        self.logins += 1
        return user == "root" and key.get_base64() == self.public

    def _refuse(self, user: str, key: paramiko.PKey) -> bool:
        return False

    def _ok(self, command: str) -> ExecResult:
        self.ran.append(command)
        if command.split()[2:3] and command.split()[2] in self.fail_ips:
            return ExecResult(b"", b"backend pool is full\n", 3)
        return ExecResult(b"", b"", 0)

    def _exit(self, command: str) -> ExecResult:
        self.ran.append(command)
        return ExecResult(b"", b"backend pool is full\n", 3)

    def close(self) -> None:
        self.server.close()
        if self.dropper is not None:
            self.dropper.close()


@pytest.fixture
def master(rig: Rig) -> Iterator[FailingMaster]:
    rig.ssh = None                                           # the engine uses the real sshexec.run_remote
    fm = FailingMaster(rig)
    yield fm
    fm.close()


def ready_with_real_ssh(rig: Rig, master: FailingMaster, num_slaves: int) -> str:
    """An ACTIVE environment whose slaves were announced over real SSH to a master that answered."""
    envid, jobid = rig.create(num_slaves=num_slaves, master_setup_time=0)
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    master.set(rig.vms(envid)["m"].ip, "ok")
    rig.callback(envid, "m", "MASTER_INIT_DONE")
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    assert rig.job(jobid)["status"] == "DONE", rig.env(envid)
    assert len(master.ran) == num_slaves
    return envid


def _errors(rig: Rig, envid: str) -> list[str]:
    return [e["msg"] for e in envstore.list_events(rig.r, envid) if e["type"] == "error"]


def test_scaleup_whose_master_script_keeps_failing_ends_slave_scaleup_fail(rig: Rig, master: FailingMaster) -> None:
    envid = ready_with_real_ssh(rig, master, num_slaves=1)
    master.set(master.ip, "exit")
    jobid = rig.scale(envid, "up")
    rig.drive(envid)                                         # s1 allocated
    rig.tick()
    s1 = rig.vms(envid)["s1"]
    for attempt in (1, 2):
        assert rig.drive(envid) == "wait"
        env = rig.env(envid)
        assert env["ssh_tries"] == str(attempt) and rig.job(jobid)["status"] == "RUNNING"
        rig.clock.advance(scale.SSH_RETRY)
    assert rig.drive(envid) == "idle"
    why = "`add` on the master exited 3: backend pool is full\n"
    job, env = rig.job(jobid), rig.env(envid)
    assert job["status"] == "DONE" and job["info"] == f"slave s1 added but not announced: {why}"
    assert env["status"] == f"SLAVE_SCALEUP_FAIL: ssh to master failed: {why}"
    assert env["ssh_tries"] == "2"                          # the third attempt ended the job
    assert master.ran[1:] == [f"~/master.sh add {rig.vms(envid)['s1'].ip} 8080"] * 3
    errors = [m for m in _errors(rig, envid) if m.startswith("announce s1")]
    assert errors == [f"announce s1 to the master failed ({n}/3): {why}" for n in (1, 2, 3)]
    vms = rig.vms(envid)
    assert vms["s1"].state == "running" and vms["s1"].vmid == s1.vmid  # kept, as the original did
    assert rig.running(s1.vmid) and len(rig.live(envid)) == 3
    assert guards.current_op(rig.r, envid) is None and envid not in envstore.inflight(rig.r)


def test_scaleup_retries_a_refusing_master_then_announces(rig: Rig, master: FailingMaster) -> None:
    envid = ready_with_real_ssh(rig, master, num_slaves=0)
    master.set(master.ip, "refuse")
    jobid = rig.scale(envid, "up")
    rig.drive(envid)
    rig.tick()
    assert rig.drive(envid) == "wait"
    assert rig.drive(envid) == "wait"
    assert rig.env(envid)["ssh_tries"] == "2"
    errors = _errors(rig, envid)
    assert len(errors) == 2 and all(f"connect {master.ip}:{master.port}" in m for m in errors), errors
    assert [m.split(":")[0] for m in errors] == ["announce s0 to the master failed (1/3)",
                                                 "announce s0 to the master failed (2/3)"]
    master.set(master.ip, "ok")                              # the master's sshd is back before the last try
    assert rig.drive(envid) == "idle"
    s0 = rig.vms(envid)["s0"]
    job, env = rig.job(jobid), rig.env(envid)
    assert job["status"] == "DONE" and job["info"] == f"added slave s0 (VM {s0.vmid}, {s0.ip})"
    assert env["status"] == "SLAVE_SCALEUP_SUCCESS" and s0.state == "announced"
    assert master.ran == [f"~/master.sh add {s0.ip} 8080"]   # exactly once, when it answered


@pytest.mark.parametrize("mode", ["drop", "auth"])
def test_create_keeps_retrying_the_announce_until_the_master_answers(rig: Rig, master: FailingMaster,
                                                                     mode: str) -> None:
    envid, jobid = rig.create(num_slaves=1, master_setup_time=0)
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    master.set(rig.vms(envid)["m"].ip, mode)
    rig.callback(envid, "m", "MASTER_INIT_DONE")
    rig.drive(envid)
    rig.tick()
    for _ in range(4):                                       # create has no attempt limit: its deadline rules
        assert rig.drive(envid) == "wait"
        rig.clock.advance(2)
    assert rig.job(jobid)["status"] == "RUNNING" and rig.vms(envid)["s0"].state == "running"
    errors = [m for m in _errors(rig, envid) if m.startswith("announce s0")]
    expect = "ssh handshake with" if mode == "drop" else "ssh auth as 'root'"
    assert len(errors) == 4 and all(m.startswith("announce s0 to the master failed, retrying: ") and expect in m
                                    for m in errors), errors
    if mode == "drop":
        assert master.dropper is not None and master.dropper.accepted == 4
    assert master.ran == [] and rig.env(envid)["phase"] == "slaves"
    master.set(master.ip, "ok")
    assert rig.drive(envid) == "idle"
    assert rig.job(jobid)["status"] == "DONE" and rig.vms(envid)["s0"].state == "announced"
    assert master.ran == [f"~/master.sh add {rig.vms(envid)['s0'].ip} 8080"]


def test_create_whose_announce_never_succeeds_times_out(rig: Rig, master: FailingMaster) -> None:
    envid, jobid = rig.create(num_slaves=1, master_setup_time=0)
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    master.set(rig.vms(envid)["m"].ip, "exit")
    rig.callback(envid, "m", "MASTER_INIT_DONE")
    rig.drive(envid)
    rig.tick()
    assert rig.drive(envid) == "wait"
    rig.clock.advance(rig.settings.create_deadline)
    assert rig.drive(envid) == "idle"
    job, env = rig.job(jobid), rig.env(envid)
    why = f"the slaves were not all running and announced within {rig.settings.create_deadline}s (deadline)"
    assert job["status"] == "FAIL" and job["info"] == why
    assert env["status"] == "CREATE_TIMEOUT" and env["policy_status"] == "INIT"
    assert master.ran == [f"~/master.sh add {rig.vms(envid)['s0'].ip} 8080"]
    assert sorted(rig.vms(envid)) == ["m", "s0"] and len(rig.live(envid)) == 2      # VMs kept for the user


@pytest.mark.parametrize(("mode", "reason"), [
    ("exit", "`remove` on the master exited 3: backend pool is full\n"),
    ("refuse", "connect "), ("drop", "ssh handshake with "), ("auth", "ssh auth as 'root'")])
def test_scaledown_removes_anyway_when_the_master_cannot_be_told(rig: Rig, master: FailingMaster, mode: str,
                                                                 reason: str) -> None:
    envid = ready_with_real_ssh(rig, master, num_slaves=2)
    s1 = rig.vms(envid)["s1"]
    master.set(master.ip, mode)
    jobid = rig.scale(envid, "down")
    assert rig.drive(envid) == "wait"                        # announce failed once, then the drain starts
    (error,) = _errors(rig, envid)
    assert error.startswith(f"could not announce `remove {s1.ip}` to the master, removing anyway: ")
    assert reason in error
    env = rig.env(envid)
    assert env["phase"] == "draining" and float(env["drain_until"]) == rig.clock() + 30
    rig.tick(30)
    rig.drive(envid)
    rig.tick()
    assert rig.drive(envid) == "idle"
    job = rig.job(jobid)
    assert job["status"] == "DONE" and job["info"] == f"removed slave s1 (VM {s1.vmid})"
    assert sorted(rig.vms(envid)) == ["m", "s0"] and rig.sim_vm(s1.vmid).state == S.DONE
    assert len(_errors(rig, envid)) == 1                     # tried once, not on every drive
    assert master.ran[2:] == ([f"~/master.sh remove {s1.ip} 8080"] if mode == "exit" else [])


def test_create_announces_every_slave_over_one_connection_and_retries_only_the_one_that_failed(
        rig: Rig, master: FailingMaster) -> None:
    envid, jobid = rig.create(num_slaves=3, master_setup_time=0)
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    master.set(rig.vms(envid)["m"].ip, "ok")
    rig.callback(envid, "m", "MASTER_INIT_DONE")
    rig.drive(envid)                                         # the three slaves allocated
    ips = {slot: rig.sim_vm(rec.vmid).ip() for slot, rec in rig.vms(envid).items() if slot != "m"}
    master.fail_ips = {ips["s1"]}
    rig.tick()
    assert rig.drive(envid) == "wait"
    assert master.logins == 1                                # one connection for the three announces
    assert sorted(master.ran) == sorted(f"~/master.sh add {ip} 8080" for ip in ips.values())
    vms = rig.vms(envid)
    assert (vms["s0"].state, vms["s1"].state, vms["s2"].state) == ("announced", "running", "announced")
    why = "`add` on the master exited 3: backend pool is full\n"
    assert [m for m in _errors(rig, envid) if m.startswith("announce")] == [
        f"announce s1 to the master failed, retrying: {why}"]
    assert rig.job(jobid)["status"] == "RUNNING"
    master.fail_ips.clear()
    rig.clock.advance(2)
    assert rig.drive(envid) == "idle"
    assert rig.job(jobid)["status"] == "DONE" and rig.vms(envid)["s1"].state == "announced"
    assert master.ran[3:] == [f"~/master.sh add {ips['s1']} 8080"] and master.logins == 2   # only s1 again
