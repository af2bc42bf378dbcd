"""The global scheduler under failures, on the engine Rig: nothing leaks when a create fails, a scale-up's VM is
rolled back or an environment is removed mid-operation; the usage counters always equal what the requests hold,
after drives and allocation passes killed at Redis commands along the way and after a Redis crash and restart."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from functions.gs.model import ALLOCATED, CANCELLED, PEND, RELEASED
from functions.ops import gsched, operations
from functions.store import envstore, gsstore, keys
from onesim import states as S
from tests.faultredis import TickingRedis
from tests.harness import RedisServer, url_of
from tests.integration import gs_fixtures as gs
from tests.integration.engine_fixtures import SERVICE, Rig, open_rig


@pytest.fixture
def rig(rdb: redis.Redis) -> Iterator[Rig]:
    yield from open_rig(rdb)


def _pools(rig: Rig, cpus: int = 8) -> None:
    gs.upload_global(rig, {"sim": ("silver", cpus, 8192)}, {SERVICE: ("silver", 16, 16384)})


def test_a_failed_create_keeps_what_its_vms_hold_and_remove_gives_it_back(rig: Rig) -> None:
    _pools(rig)
    rig.configure(master_setup_time=0)
    with rig.sim.model.lock:
        rig.sim.model.set_delay("boot", 10)
    envid, jobid = gs.create(rig)
    rig.drive(envid)
    gs.allocate(rig)
    rig.drive(envid)
    rig.tick()
    assert rig.rpc().onesim.vm.fail(rig.sim.auth, rig.vms(envid)["m"].vmid, "BOOT_FAILURE")[0]
    rig.drive(envid)
    assert rig.job(jobid)["status"] == "FAIL"
    assert gs.statuses(rig, envid) == [("m", ALLOCATED)]      # the failed VM still exists: it still holds
    gs.assert_consistent(rig)
    remove = operations.request_remove(rig.r, rig.queue, SERVICE, envid, rig.clock)[0]
    assert gs.settle(rig, envid, remove)["status"] == "DONE"
    assert gs.statuses(rig, envid) == [("m", RELEASED)] and gs.pool_free(rig) == {"sim": (8, 8192)}


def test_a_rolled_back_scaleup_releases_its_request(rig: Rig) -> None:
    _pools(rig)
    rig.configure(num_slaves=1, master_setup_time=0)
    envid, jobid = gs.create(rig)
    assert gs.settle(rig, envid, jobid)["status"] == "DONE"
    with rig.sim.model.lock:
        rig.sim.model.set_delay("boot", 10)
    up = rig.scale(envid, "up")
    rig.drive(envid)
    gs.allocate(rig)
    rig.drive(envid)
    rig.tick()
    new = rig.vms(envid)["s1"]
    assert rig.rpc().onesim.vm.fail(rig.sim.auth, new.vmid, "BOOT_FAILURE")[0]
    rig.drive(envid)
    assert rig.job(up)["status"] == "FAIL" and rig.sim_vm(new.vmid).state == S.DONE
    assert gs.statuses(rig, envid)[-1] == ("s1", RELEASED) and gs.held(rig).vcpus == 2
    gs.assert_consistent(rig)


def test_remove_while_a_grant_is_not_yet_used_cancels_it(rig: Rig) -> None:
    _pools(rig)
    rig.configure(master_setup_time=0)
    envid, _ = gs.create(rig)
    rig.drive(envid)
    gs.allocate(rig)                                            # granted, but the drive never allocated the VM
    assert gs.statuses(rig, envid) == [("m", ALLOCATED)] and rig.vms(envid) == {}
    remove = operations.request_remove(rig.r, rig.queue, SERVICE, envid, rig.clock)[0]
    assert gs.settle(rig, envid, remove)["status"] == "DONE"
    assert gs.statuses(rig, envid) == [("m", CANCELLED)] and gs.held(rig).vcpus == 0
    assert gsstore.counters(rig.r) == ({}, {}) and rig.allocs == []


def test_the_minute_check_ends_orphans_and_fixes_counter_drift(rig: Rig) -> None:
    _pools(rig)
    rig.configure(num_slaves=0, master_setup_time=0)
    envid, jobid = gs.create(rig)
    assert gs.settle(rig, envid, jobid)["status"] == "DONE"
    rig.r.hincrby("carina:gs:usage:pool", "sim:vcpus", 5)       # drift, as a lost write would leave it
    envstore.delete_env(rig.r, envid)                           # an env gone without its remove step
    stats = gsched.check(rig.r, rig.clock)
    assert stats["drift"] == 1 and stats["orphans"] == 1
    assert gs.statuses(rig, envid) == [("m", CANCELLED)] and gsstore.counters(rig.r) == ({}, {})
    assert gsched.check(rig.r, rig.clock) == {"drift": 0, "orphans": 0, "trimmed": 0}


# ---------------------------------------------------------------- killed drives, a crashed Redis


class Killed(BaseException):
    """The worker died here (not an Exception: nothing in Carina catches it)."""


class KillingRedis(TickingRedis):
    """A real client whose `kill_at`-th command run by a job (`armed`; a pipeline's EXEC counting as one) raises
    Killed."""

    kill_at = 0
    count = 0
    armed = False

    def tick(self) -> None:
        if not self.armed or threading.current_thread() is not threading.main_thread():
            return
        self.count += 1
        if self.count == self.kill_at:
            raise Killed(f"killed at command {self.count}")


def _survive(rig: Rig, call: Callable[[], Any]) -> None:
    """Run one job's work; its Redis commands count towards the kill."""
    client = rig.r
    assert isinstance(client, KillingRedis)
    client.armed = True
    try:
        call()
    except Killed:                                              # the job died; RQ / the tick runs it again...
        client.armed = False
        for key in client.keys(keys.PREFIX + "*lock*"):         # ...once the locks it held expired
            client.delete(key)
    finally:
        client.armed = False


def _lifecycle(rig: Rig) -> None:
    """Create (3 VMs in a 3-vCPU pool), a scale-up that has to wait, then remove, every job run to its end with
    allocation passes, minute checks and the simulator in between."""
    envid, jobid = gs.create(rig)
    up = remove = ""
    for _ in range(120):
        for call in (lambda: gs.allocate(rig), lambda: rig.drive(envid)):
            _survive(rig, call)
        if rig.vms(envid).get("m") and rig.vms(envid)["m"].state == "running" and not rig.vms(envid)["m"].init:
            _survive(rig, lambda: rig.callback(envid, "m", "MASTER_INIT_DONE"))
        rig.tick(5.0)
        _survive(rig, lambda: gsched.check(rig.r, rig.clock))
        gs.assert_consistent(rig)                               # at every point, not only at the end
        if not up and rig.job(jobid).get("status") == "DONE":
            assert [s for _, s in gs.statuses(rig, envid)] == [ALLOCATED] * 3 and len(rig.vms(envid)) == 3
            up = rig.scale(envid, "up")
        elif up and not remove and gs.pending(rig):
            remove = operations.request_remove(rig.r, rig.queue, SERVICE, envid, rig.clock)[0]
        elif remove and rig.job(remove).get("status") == "DONE":
            return
    raise AssertionError(f"the lifecycle did not end: {rig.job(jobid)}, {rig.job(up)}, {rig.job(remove)}")


def _run_killed_at(rdb: redis.Redis, kill_at: int) -> int:
    """The lifecycle with the `kill_at`-th Redis command killing its job; returns how many commands it took."""
    client = KillingRedis(connection_pool=redis.ConnectionPool.from_url(url_of(rdb), decode_responses=True))
    client.flushall()
    rigs = open_rig(client)
    rig = next(rigs)
    try:
        _pools(rig, cpus=3)
        rig.configure(master_setup_time=0)
        client.count, client.kill_at = 0, kill_at
        _lifecycle(rig)
        client.kill_at = 0
        gs.assert_consistent(rig)
        assert gsstore.live(rig.r) == [] and gsstore.counters(rig.r) == ({}, {})
        assert gs.pool_free(rig) == {"sim": (3, 8192)}
        statuses = {s.req.status for s in gsstore.listed(rig.r)}
        assert statuses <= {RELEASED, CANCELLED} and PEND not in statuses
        return client.count
    finally:
        rigs.close()
        client.close()


def test_killed_jobs_leak_nothing_and_the_counters_match(rdb: redis.Redis) -> None:
    total = _run_killed_at(rdb, 0)
    stride = max(1, total // 20)
    for kill_at in range(1, total, stride):
        _run_killed_at(rdb, kill_at)


def test_a_redis_crash_and_restart_loses_no_allocation(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    rigs = open_rig(client)
    rig = next(rigs)
    try:
        _pools(rig, cpus=3)
        rig.configure(master_setup_time=0)
        envid, jobid = gs.create(rig)
        assert gs.settle(rig, envid, jobid)["status"] == "DONE"
        up = rig.scale(envid, "up")
        rig.drive(envid)                                        # waits: the pool is full
        before = (gsstore.listed(rig.r), gsstore.counters(rig.r), gs.pool_free(rig))
        server.kill()
        server.start()                                          # same port, same AOF (appendfsync always)
        assert (gsstore.listed(rig.r), gsstore.counters(rig.r), gs.pool_free(rig)) == before
        gs.assert_consistent(rig)
        assert gs.allocate(rig)["waiting"] == 1                 # still PEND, still counted out of a full pool
        rig.tick(rig.settings.create_deadline)
        rig.drive(envid)
        assert rig.job(up)["status"] == "FAIL"
        remove = operations.request_remove(rig.r, rig.queue, SERVICE, envid, rig.clock)[0]
        assert gs.settle(rig, envid, remove)["status"] == "DONE"
        assert gs.pool_free(rig) == {"sim": (3, 8192)} and gsstore.live(rig.r) == []
    finally:
        rigs.close()
        client.close()
        server.stop()
