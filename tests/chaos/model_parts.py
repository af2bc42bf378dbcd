"""Parts of the model-based chaos run (tests/chaos/test_model.py): a worker that dies, stalls or sees a call
fail at the Nth Redis write or OpenNebula allocate/terminate of a drive (Fuse), an SSH function whose master
can be made to fail, a Rig reset
between hypothesis examples (one simulator and one redis-server per test), and the invariants checked once
everything has settled.

Nothing here replaces a part of Carina: the drive is the real engine.loop.step; the "kill" raises a
BaseException (which no `except Exception` in Carina catches) from inside a real Redis client or OneClient,
so nothing after that point runs, exactly as if the worker process had died there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
import yaml

from functions import tasks
from functions.cloud import sshexec
from functions.cloud.sshexec import SshResult
from functions.conf.schema import load_config
from functions.engine.context import FINAL, Ctx
from functions.model.clock import FakeClock
from functions.store import envstore, guards, keys, scripts, tenants
from onesim import lifecycle as simlife
from onesim import states as S
from tests.integration.engine_fixtures import BAD_VM_TEXT, FAKE_HOST_KEY, SERVICE, VM_TEXT, Rig, SpyOne, env_entry

# The three environment kinds of the model: (num_slaves, master_setup_time, drain_time).
KINDS = {"w0": (0, 0, 0), "w1": (1, 0, 0), "w2": (2, 20, 30)}


class Killed(BaseException):
    """The worker running the drive died at this point: nothing after it runs (not caught by `except Exception`)."""


# Redis commands that change nothing: a death just before one is the same as a death before the next write.
READS = frozenset({"GET", "MGET", "HGET", "HGETALL", "HMGET", "HEXISTS", "EXISTS", "SMEMBERS", "SISMEMBER",
                   "ZRANGE", "ZRANGEBYSCORE", "ZSCORE", "ZCARD", "XRANGE", "XREVRANGE", "XLEN", "TTL", "PTTL",
                   "SCAN", "TYPE", "LRANGE", "LLEN", "PING", "SCRIPT"})
# OpenNebula calls that change something (allocate, terminate).
ONE_WRITES = frozenset({"vm.allocate", "vm.action"})


@dataclass
class Fuse:
    """Runs `action` once, at the `at`-th point of kind `where` of a drive: "write" (just before a Redis
    write; a pipeline counts as one), "one" (just before an OpenNebula allocate / terminate) or "answered" (just
    after OpenNebula answered one, before anything was recorded). Only the thread that made it counts (not the
    lock keeper). After a kill every further call of the drive dies too."""

    where: str
    at: int
    action: Callable[[], None] = lambda: None
    counts: dict[str, int] = field(default_factory=dict)
    blown: bool = False
    dead: bool = False
    owner: int = field(default_factory=threading.get_ident)

    def tick(self, where: str) -> None:
        if threading.get_ident() != self.owner:
            return
        if self.dead:
            raise Killed
        self.counts[where] = self.counts.get(where, 0) + 1
        if where == self.where and self.counts[where] == self.at:
            self.blown = True
            self.action()

    def check(self) -> None:
        """Before a read: a dead worker reads nothing either."""
        if self.dead and threading.get_ident() == self.owner:
            raise Killed

    def kill(self) -> None:
        self.dead = True
        raise Killed


class FusedRedis(redis.Redis):
    """The real client on the rig's connection pool, ticking the fuse before each write and pipeline."""

    def __init__(self, pool: redis.ConnectionPool, fuse: Fuse) -> None:
        super().__init__(connection_pool=pool)
        self.fuse = fuse

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if str(args[0]).upper() in READS:
            self.fuse.check()
        else:
            self.fuse.tick("write")
        return super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        self.fuse.tick("write")
        return super().pipeline(transaction, shard_hint)


class FusedOne(SpyOne):
    """The rig's OneClient, ticking the fuse before and after each allocate / terminate."""

    def __init__(self, proxy: str, session: str, rig: Rig, fuse: Fuse) -> None:
        super().__init__(proxy, session, rig)
        self.fuse = fuse

    def _call(self, method: str, *args: Any) -> Any:
        if method not in ONE_WRITES:
            self.fuse.check()
            return super()._call(method, *args)
        self.fuse.tick("one")
        result = super()._call(method, *args)
        self.fuse.tick("answered")
        return result


def fused_ctx(rig: Rig, fuse: Fuse) -> Ctx:
    """A worker's context whose Redis and OpenNebula calls go through `fuse`."""
    return Ctx(r=FusedRedis(rig.r.connection_pool, fuse), queue=rig.queue, settings=rig.settings, clock=rig.clock,
               one_factory=lambda url, auth: FusedOne(url, auth, rig, fuse), on_end=tasks.END_HOOKS, ssh=rig.ssh)


class FlakySsh:
    """sshexec.run_remote's stand-in for the model: answers like a master, or fails as `mode` says
    ("exit": the script exits 3; "down": connection refused)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.mode = "ok"
        self.calls: list[str] = []

    def __call__(self, host: str, port: int, user: str, private_pem: str, command: str, *,
                 known_key: str | None, timeout: float) -> tuple[SshResult, str]:
        self.calls.append(command)
        if self.mode == "down":
            raise sshexec.SshFailed(f"connect {host}:{port}: [Errno 111] Connection refused")
        return SshResult(3 if self.mode == "exit" else 0, "", "boom" if self.mode == "exit" else ""), FAKE_HOST_KEY


def load_scripts(r: redis.Redis) -> None:
    """Every Lua script of Carina loaded into Redis (as after a first run), so no drive meets NOSCRIPT (which
    would add calls and make an example's fuse points depend on the ones before it)."""
    for text in scripts.LUA.values():
        r.script_load(text)


def reset(rig: Rig) -> None:
    """A clean slate for one hypothesis example, the same for every example (hypothesis replays them): Redis
    flushed (service, files and config uploaded again, scripts loaded), every simulator VM dropped, the clock
    back at its start, SSH answering."""
    with rig.sim.model.lock:
        for vm in list(rig.sim.model.vms.values()):
            simlife.remove(rig.sim.model, vm)
    rig.clock.now = FakeClock().now
    rig.r.flushall()
    load_scripts(rig.r)
    rig.allocs.clear()
    rig.ssh = FlakySsh(rig.clock)
    tenants.add_service(rig.r, SERVICE, clock=rig.clock)
    tenants.save_vm_file(rig.r, SERVICE, "small.vm", VM_TEXT)
    tenants.save_vm_file(rig.r, SERVICE, "bad.vm", BAD_VM_TEXT)
    envs = {name: env_entry(num_slaves=n, master_setup_time=setup, drain_time=drain)
            for name, (n, setup, drain) in KINDS.items()}
    cfg = {"ENDPOINT": {"sim": {"proxy": rig.sim.url, "oneauth": rig.sim.auth}},
           "TEMPLATE": {"small": {"file": "small.vm", "cpu": 1, "memory": 512, "network_id": {"sim": 0},
                                  "image_id": {"sim": 0}}},
           "ENVIRONMENT": envs}
    text = yaml.safe_dump(cfg)
    tenants.save_config(rig.r, SERVICE, load_config(text, "yaml", {"small.vm"}), text, "yaml", rig.clock)


def live_tagged(rig: Rig) -> dict[str, list[tuple[int, str]]]:
    """envid -> [(vmid, slot tag)] of the simulator's VMs that are not DONE, by their CARINA_ENVID tag."""
    out: dict[str, list[tuple[int, str]]] = {}
    with rig.sim.model.lock:
        for vm in rig.sim.model.vms.values():
            tags = dict(vm.user_template)
            if vm.state != S.DONE and "CARINA_ENVID" in tags:
                out.setdefault(str(tags["CARINA_ENVID"]), []).append((vm.id, str(tags.get("CARINA_SLOT"))))
    return out


def check_settled(rig: Rig, envids: list[str], vanished: set[int]) -> None:
    """The invariants once every environment is idle: see each assertion's message."""
    r = rig.r
    assert envstore.inflight(r) == [], "environments still in flight after settling"
    jobs = envstore.list_jobs(r, SERVICE)
    unfinished = [(j["jobid"], j["type"], j["status"], j.get("envid")) for j in jobs if j["status"] not in FINAL]
    assert unfinished == [], f"jobs that never ended: {unfinished}"
    tagged = live_tagged(rig)
    for envid in envids:
        holder = guards.current_op(r, envid)
        assert holder is None, f"env {envid}: guard held by job {holder} ({envstore.get_job(r, holder)})"
        assert r.get(keys.env_lock(envid)) is None, f"env {envid}: lock still held"
        env = envstore.get_env(r, envid)
        live = sorted(tagged.get(envid, []))
        if env is None:
            assert live == [], f"removed env {envid} left live VMs {live}"
            continue
        recs = envstore.get_vms(r, envid)
        held = sorted((rec.vmid, slot) for slot, rec in recs.items() if rec.vmid is not None)
        orphans = [vm for vm in live if vm not in held]
        assert orphans == [], f"env {envid}: live VMs no record holds (vmid, slot) {orphans}; records {held}"
        vmids = [vmid for vmid, _ in held]
        assert len(vmids) == len(set(vmids)), f"env {envid}: two records share a VM: {held}"
        dead = [h for h in held if h not in live and h[0] not in vanished]
        assert dead == [], f"env {envid}: records of VMs Carina itself ended {dead}"
        last = envstore.get_job(r, str(env.get("job") or "")) or {}
        assert (last.get("type"), last.get("status")) != ("REMOVE", "DONE"), f"env {envid}: removed, still there"
        if last.get("status") == "DONE":
            slaves = sum(1 for rec in recs.values() if rec.role == "slave")
            assert int(env.get("desired_slaves") or 0) == slaves, \
                f"env {envid}: desired_slaves {env.get('desired_slaves')} but {slaves} slave records after " \
                f"{last.get('type')} DONE"
