"""A rig for driving the lifecycle engine in-process: real Redis, the in-process simulator with manual ticks,
one FakeClock shared by the simulator and the engine, and recording SSH / allocate observers.

Nothing here replaces a part of Carina: the OneClient is the real one (a subclass that only notes what the
VM records looked like at the moment of each allocate), and the SSH function records the announce commands a
master would run and answers like a master whose script succeeds (real SSH is used where host keys matter).
"""

from __future__ import annotations

import re
import socket
import tempfile
import time
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml

from config.settings import Settings
from functions import tasks
from functions.cloud.one import OneClient
from functions.cloud.sshexec import SshResult
from functions.conf.schema import load_config
from functions.engine import kick, watch
from functions.engine import loop as engine
from functions.engine.context import Ctx
from functions.model.clock import FakeClock
from functions.ops import operations
from functions.ops.callbacks import apply
from functions.store import envstore, tenants
from functions.store.envstore import VmRecord
from functions.store.runtime import JsonQueue
from onesim import lifecycle as simlife
from onesim import states as S
from onesim.model import Vm
from onesim.server import SimHandle, start_simulator
from tests.harness import twin

SERVICE = "acme"
VM_TEXT = """NAME = "%NAME%"
CPU = %CPU%
MEMORY = %MEMORY%
DISK = [ IMAGE_ID = %IMAGE_ID% ]
NIC = [ NETWORK_ID = %NETWORK_ID% ]
CONTEXT = [ ENVID = "%ENVID%", IP = "$NIC[IP]", %APP_CONTEXT_VAR% ]
"""
BAD_VM_TEXT = VM_TEXT + 'FOO_ATTR = "%FOO%"\n'
FAKE_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFJlY29yZGluZ01hc3RlckZvckVuZ2luZVRlc3RzMDAw"  # a valid key line


def env_entry(**over: Any) -> dict[str, Any]:
    """The `web` environment of the test config: 1 master + 2 slaves, a 20 s setup time, 30 s drain."""
    entry: dict[str, Any] = {
        "type": "compute", "endpoint": "sim", "placement_policy": "pack", "master_template": "small",
        "master_context_script": "master.sh", "master_setup_time": 20, "master_context_var": "BALANCE_PORT=8080",
        "slave_template": "small", "slave_context_script": "slave.sh",
        "slave_context_var": "MASTER_IP=%MASTER%, SLAVE_ID=%SLAVE_INDEX%, SLAVES=%NUM_SLAVES%",
        "num_slaves": 2, "slavedata": "8080", "adminuser": "root", "app_url": "http://%MASTER%:8080/app",
        "drain_time": 30}
    entry.update(over)
    return {k: v for k, v in entry.items() if v is not None}


class SshRecorder:
    """Stands in for sshexec.run_remote: records each command and answers rc 0 with a fixed host key."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[dict[str, Any]] = []

    def __call__(self, host: str, port: int, user: str, private_pem: str, command: str, *,
                 known_key: str | None, timeout: float) -> tuple[SshResult, str]:
        assert "PRIVATE KEY" in private_pem and timeout > 0
        self.calls.append({"host": host, "port": port, "user": user, "command": command, "known_key": known_key,
                           "at": self.clock()})
        return SshResult(0, "", ""), FAKE_HOST_KEY

    def commands(self) -> list[str]:
        return [c["command"] for c in self.calls]


class SpyOne(OneClient):
    """The real OneClient; `allocate` also notes each attempt: slot, text, the slot's record as stored at that
    moment, and the VM id OpenNebula gave (None if the call failed)."""

    def __init__(self, proxy: str, session: str, rig: Rig) -> None:
        super().__init__(proxy, session, timeout=5.0)
        self.rig = rig

    def views(self, vmids: Any) -> dict[int, Any]:
        """The watcher's one call per endpoint; notes the ids asked for (and `info` notes each VM asked for)."""
        ids = sorted(vmids)
        self.rig.pool_calls.append(ids)
        return super().views(ids)

    def info(self, vmid: int) -> Any:
        self.rig.info_calls.append(int(vmid))
        return super().info(vmid)

    def allocate(self, template: str) -> int:
        envid = re.search(r'CARINA_ENVID = "(\d+)"', template)
        slot = re.search(r'CARINA_SLOT = "(\w+)"', template)
        assert envid and slot, "every allocated VM is tagged with its environment and slot"
        rec = envstore.get_vms(self.rig.r, envid.group(1)).get(slot.group(1))
        entry = {"envid": envid.group(1), "slot": slot.group(1), "text": template, "rec": rec, "vmid": None}
        self.rig.allocs.append(entry)
        entry["vmid"] = super().allocate(template)
        return entry["vmid"]


@dataclass
class Rig:
    """Everything a test needs to run the engine step by step."""

    r: redis.Redis
    queue: JsonQueue
    sim: SimHandle
    clock: FakeClock
    settings: Settings
    ssh: Any = None
    allocs: list[dict[str, Any]] = field(default_factory=list)
    pool_calls: list[list[int]] = field(default_factory=list)
    info_calls: list[int] = field(default_factory=list)

    def configure(self, **over: Any) -> None:
        """Upload the test config (the `web` entry changed by `over`) through the real validation."""
        self.configure_envs({"web": env_entry(**over)})

    def configure_envs(self, environments: dict[str, dict[str, Any]]) -> None:
        """Upload the test config with these ENVIRONMENT entries through the real validation."""
        cfg = {"ENDPOINT": {"sim": {"proxy": self.sim.url, "oneauth": self.sim.auth}},
               "TEMPLATE": {"small": {"file": "small.vm", "cpu": 1, "memory": 512, "network_id": {"sim": 0},
                                      "image_id": {"sim": 0}},
                            "bad": {"file": "bad.vm", "cpu": 1, "memory": 512, "network_id": {"sim": 0},
                                    "image_id": {"sim": 0}}},
               "ENVIRONMENT": environments}
        text = yaml.safe_dump(cfg)
        tenants.save_config(self.r, SERVICE, load_config(text, "yaml", {"small.vm", "bad.vm"}), text, "yaml",
                            self.clock)

    def ctx(self) -> Ctx:
        """A fresh Ctx (as a new worker would build) with the fake clock, the spy client and the SSH function."""
        extra = {} if self.ssh is None else {"ssh": self.ssh}
        return Ctx(r=self.r, queue=self.queue, settings=self.settings, clock=self.clock,
                   one_factory=lambda url, auth: SpyOne(url, auth, self), on_end=tasks.END_HOOKS,
                   capacity=tasks.CAPACITY, **extra)

    def create(self, **over: Any) -> tuple[str, str]:
        self.configure(**over)
        return operations.request_create(self.r, self.queue, SERVICE, "web", self.clock, self.settings)

    def scale(self, envid: str, direction: str) -> str:
        return operations.request_scale(self.r, self.queue, SERVICE, envid, direction, self.clock)

    def drive(self, envid: str) -> str:
        """One drive job, as RQ would run it (env lock, steps until the operation waits or ends). A drive job
        of the environment waiting on the queue is taken off it first, as a worker would take it."""
        self._take_drives(envid)
        return engine.step(self.ctx(), envid)

    def _take_drives(self, envid: str) -> list[str]:
        taken = []
        for job in self.queue.get_jobs():
            if job.func_name == kick.DRIVE and [str(a) for a in job.args] == [envid]:
                kick.clear_kick(self.queue.connection, envid, job.id)
                job.delete()
                taken.append(envid)
        return taken

    def watch(self) -> list[str]:
        """One watcher pass in-process (as the high-priority job would run it); returns the envids it kicked.
        Their drive jobs are taken off the queue as a worker would take them (the test drives them itself)."""
        before = {str(j.args[0]) for j in self.queue.get_jobs()}
        watch.run(self.r, self.queue, self.clock, lambda url, auth: SpyOne(url, auth, self))
        fresh = {str(j.args[0]) for j in self.queue.get_jobs()} - before
        return sorted((e for e in fresh for _ in self._take_drives(e)), key=int)

    def tick(self, seconds: float = 0.0) -> None:
        """Move the shared clock and let the simulator advance its VMs once."""
        self.clock.advance(seconds)
        with self.sim.model.lock:
            simlife.tick(self.sim.model)

    def callback(self, envid: str, slot: str, status: str) -> str:
        """The VM's status callback as the gateway's queued apply would record it."""
        vmid = self.vms(envid)[slot].vmid
        assert vmid is not None
        return apply(self.r, self.queue, envid, vmid, "status", {"status": status}, self.clock, slot)

    def rpc(self) -> Any:
        return xmlrpc.client.ServerProxy(self.sim.url)

    # ---- reading the outcome
    def env(self, envid: str) -> dict[str, Any]:
        data = envstore.get_env(self.r, envid)
        assert data is not None, f"environment {envid} is gone"
        return data

    def vms(self, envid: str) -> dict[str, VmRecord]:
        return envstore.get_vms(self.r, envid)

    def job(self, jobid: str) -> dict[str, str]:
        return envstore.get_job(self.r, jobid) or {}

    def events(self, envid: str) -> list[str]:
        return [e["msg"] for e in envstore.list_events(self.r, envid)]

    def sim_vm(self, vmid: int | None) -> Vm:
        assert vmid is not None
        with self.sim.model.lock:
            return self.sim.model.vms[vmid]

    def live(self, envid: str) -> list[Vm]:
        """The simulator's VMs of the environment that are not DONE (by their CARINA_ENVID tag)."""
        with self.sim.model.lock:
            return [vm for vm in self.sim.model.vms.values() if vm.state != S.DONE
                    and dict(vm.user_template).get("CARINA_ENVID") == envid]

    def running(self, vmid: int | None) -> bool:
        vm = self.sim_vm(vmid)
        return (vm.state, vm.lcm) == (S.ACTIVE, S.RUNNING)


def wait_refused(port: int, timeout: float = 5.0, host: str = "127.0.0.1") -> None:
    """Block until host:port refuses connections (the simulator's endpoint, or a guest's sshd, went down)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                pass
        except ConnectionRefusedError:
            return
        except OSError:
            pass                         # reset while the listener closes: not refused yet
        time.sleep(0.02)
    raise TimeoutError(f"{host}:{port} still accepts connections")


def open_rig(rdb: redis.Redis, **settings: Any) -> Iterator[Rig]:
    """A Rig on the flushed test Redis with service `acme` (its .vm files uploaded); stops the simulator after."""
    clock = FakeClock()
    sim = start_simulator(clock=clock, tick=False, guests="none")
    raw = twin(rdb)
    opts: dict[str, Any] = {"create_deadline": 600, "drain_time_default": 30, "ssh_timeout": 5.0,
                            "callback_addr": "127.0.0.1:4567", "home": Path(tempfile.mkdtemp(prefix="carina-home-")),
                            **settings}
    rig = Rig(r=rdb, queue=JsonQueue("carina", connection=raw), sim=sim, clock=clock, settings=Settings(**opts))
    rig.ssh = SshRecorder(clock)
    tenants.add_service(rdb, SERVICE, clock=clock)
    tenants.save_vm_file(rdb, SERVICE, "small.vm", VM_TEXT)
    tenants.save_vm_file(rdb, SERVICE, "bad.vm", BAD_VM_TEXT)
    try:
        yield rig
    finally:
        sim.stop()
        raw.close()


def retag(rig: Rig, vmid: int | None, **tags: str) -> None:
    """What a reset cloud does: VM id `vmid` now belongs to someone else (its USER_TEMPLATE says so)."""
    vm = rig.sim_vm(vmid)
    with rig.sim.model.lock:
        for name, value in tags.items():
            rig.sim.model.set_user_attr(vm, name, value)


def create_ready(rig: Rig, **over: Any) -> tuple[str, str]:
    """Create the environment and drive it to ACTIVE by the shortest path. Returns (envid, jobid)."""
    envid, jobid = rig.create(**over)
    return drive_ready(rig, envid, jobid, float(env_entry(**over).get("master_setup_time") or 0))


def drive_ready(rig: Rig, envid: str, jobid: str, setup_time: float = 0.0) -> tuple[str, str]:
    """Drive a CREATE just requested to its end by the shortest path. Returns (envid, jobid)."""
    rig.drive(envid)                     # master allocated
    rig.tick()                           # master RUNNING
    rig.drive(envid)                     # waiting for MASTER_INIT_DONE
    rig.callback(envid, "m", "MASTER_INIT_DONE")
    rig.clock.advance(setup_time)
    rig.drive(envid)                     # slaves allocated
    rig.tick()                           # slaves RUNNING
    rig.drive(envid)                     # slaves announced, READY -> ACTIVE
    assert rig.job(jobid)["status"] == "DONE", rig.env(envid).get("info")
    return envid, jobid
