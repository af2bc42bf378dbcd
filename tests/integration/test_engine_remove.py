"""REMOVE driven step by step in-process: it pre-empts a running create or scale cleanly, leaving no VM
behind (recorded or only tagged), and a group remove takes every member (real Redis, in-process simulator)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from functions.ops import operations
from functions.store import envstore, guards
from tests.integration.engine_fixtures import SERVICE, Rig, create_ready, open_rig


@pytest.fixture
def rig(rdb: redis.Redis) -> Iterator[Rig]:
    yield from open_rig(rdb)


def remove_until_gone(rig: Rig, envid: str, steps: int = 10) -> None:
    for _ in range(steps):
        if envstore.get_env(rig.r, envid) is None:
            return
        rig.drive(envid)
        rig.tick()
    raise AssertionError(f"environment {envid} still there after {steps} drives")


def test_remove_preempts_a_create_mid_slaves_and_leaves_no_vm(rig: Rig) -> None:
    envid, create_job = rig.create(master_setup_time=0)
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    rig.callback(envid, "m", "MASTER_INIT_DONE")
    rig.drive(envid)                                          # slaves allocated, still booting
    assert sorted(rig.vms(envid)) == ["m", "s0", "s1"] and len(rig.live(envid)) == 3

    (remove_job,) = operations.request_remove(rig.r, rig.queue, SERVICE, envid, rig.clock)
    create = rig.job(create_job)
    assert create["status"] == "FAIL" and create["info"] == f"pre-empted by remove {remove_job}"
    remove_until_gone(rig, envid)

    assert rig.live(envid) == []                              # nothing left in OpenNebula
    assert rig.job(remove_job)["status"] == "DONE"
    assert guards.current_op(rig.r, envid) is None and envid not in envstore.inflight(rig.r)
    assert envid not in [e["envid"] for e in envstore.list_envs(rig.r, SERVICE)]


def test_remove_also_terminates_a_tagged_vm_missing_from_the_records(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0)
    s1 = rig.vms(envid)["s1"]
    envstore.del_vm(rig.r, envid, "s1")                       # e.g. a worker killed before recording it
    (remove_job,) = operations.request_remove(rig.r, rig.queue, SERVICE, envid, rig.clock)
    remove_until_gone(rig, envid)
    assert rig.live(envid) == [] and rig.sim_vm(s1.vmid).state == 6    # DONE
    assert rig.job(remove_job)["status"] == "DONE"


def test_remove_preempts_a_scaleup_before_its_vm_boots(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    scale_job = rig.scale(envid, "up")
    rig.drive(envid)                                          # the new slave is allocated
    assert len(rig.live(envid)) == 3
    (remove_job,) = operations.request_remove(rig.r, rig.queue, SERVICE, envid, rig.clock)
    assert rig.job(scale_job)["status"] == "FAIL"
    remove_until_gone(rig, envid)
    assert rig.live(envid) == [] and rig.job(remove_job)["status"] == "DONE"
