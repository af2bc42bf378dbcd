"""Carina never acts on a VM it cannot prove is its own (issue: a restarted cloud reuses VM ids): a record
whose VM id now carries another environment's tags is MISSING after the refresh, a remove never terminates
it and says so, and a replayed intent never adopts a VM of another incarnation (real Redis, in-process
simulator over XML-RPC)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from functions.cloud.one import OneClient
from functions.engine import loop
from functions.ops import operations
from functions.store import envstore, guards, keys
from functions.upkeep import ticks
from onesim import states as S
from tests.integration.engine_fixtures import SERVICE, Rig, create_ready, open_rig, retag


@pytest.fixture
def rig(rdb: redis.Redis) -> Iterator[Rig]:
    yield from open_rig(rdb)


def refresh(rig: Rig) -> None:
    ticks.refresh_vms(rig.r, rig.clock, lambda url, auth: OneClient(url, auth))


def test_a_reused_vm_id_makes_the_record_missing_and_remove_leaves_it_alone(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    vms = rig.vms(envid)
    master, slave = vms["m"].vmid, vms["s0"].vmid
    retag(rig, master, CARINA_ENVID="99", CARINA_NONCE="someone-else")       # the id now is env 99's
    refresh(rig)
    after = rig.vms(envid)
    assert after["m"].one_state == "missing" and after["s0"].one_state != "missing"

    (remove_job,) = operations.request_remove(rig.r, rig.queue, SERVICE, envid, rig.clock)
    for _ in range(10):
        if envstore.get_env(rig.r, envid) is None:
            break
        rig.drive(envid)
        rig.tick()
    assert envstore.get_env(rig.r, envid) is None and rig.job(remove_job)["status"] == "DONE"
    assert rig.sim_vm(master).state != S.DONE                                 # env 99's VM untouched
    assert rig.sim_vm(slave).state == S.DONE                                  # ours terminated
    assert any(f"not terminating VM {master}" in m and "environment 99" in m
               for m in (e["msg"] for e in envstore.list_events(rig.r, envid)))


def test_a_vm_of_the_same_envid_from_another_installation_is_neither_removed_nor_counted(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    slave = rig.vms(envid)["s0"].vmid
    retag(rig, slave, CARINA_INSTALL="another-installation")
    refresh(rig)
    assert rig.vms(envid)["s0"].one_state == "missing"
    operations.request_remove(rig.r, rig.queue, SERVICE, envid, rig.clock)
    for _ in range(10):
        if envstore.get_env(rig.r, envid) is None:
            break
        rig.drive(envid)
        rig.tick()
    assert envstore.get_env(rig.r, envid) is None
    assert rig.sim_vm(slave).state != S.DONE                                  # found by envid tag, not ours


def test_a_replayed_intent_never_adopts_a_vm_of_another_incarnation(rig: Rig) -> None:
    envid, _ = rig.create(master_setup_time=0)
    rig.drive(envid)                                                          # master allocated
    first = rig.vms(envid)["m"]
    retag(rig, first.vmid, CARINA_NONCE="an-older-incarnation")
    rec = rig.vms(envid)["m"]
    rec.vmid, rec.state = None, "allocating"                                  # as if the allocate's answer was lost
    envstore.put_vm(rig.r, envid, rec)
    rig.drive(envid)
    again = rig.vms(envid)["m"]
    assert again.vmid is not None and again.vmid != first.vmid                # a new VM, not the foreign one


def test_a_drive_that_lost_its_lock_allocates_nothing(rig: Rig) -> None:
    """Fencing: a holder paused past the lock's TTL (another worker holds the env now) cannot write an intent,
    so it never allocates a second VM for the slot."""
    envid, _ = rig.create(master_setup_time=0)
    with guards.env_lock(rig.r, envid) as stale:
        rig.r.delete(keys.env_lock(envid))                                   # expired during a long pause
        with guards.env_lock(rig.r, envid) as current:
            assert current and current != stale
            ctx = rig.ctx()
            ctx.fence = stale
            with pytest.raises(envstore.LockLost):
                loop.run_steps(ctx, envid)
            assert rig.live(envid) == [] and "m" not in rig.vms(envid)       # no intent, no VM
    assert rig.drive(envid) in ("wait", "idle") and len(rig.live(envid)) == 1
