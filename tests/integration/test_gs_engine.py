"""The global scheduler wired into the lifecycle engine, on the simulator (engine Rig: real Redis, in-process
simulator ticked by hand, one FakeClock): every VM an environment wants is a request; a VM is allocated only
once its request is ALLOCATED; quotas hold; a lower class borrowing a higher-class pool gives it back; capacity
returns when VMs go."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from functions.gs.model import ALLOCATED, CANCELLED, PEND, RELEASED
from functions.ops import gsadmin
from functions.store import envstore, gsstore, keys
from functions.upkeep import ticks
from tests.integration import gs_fixtures as gs
from tests.integration.engine_fixtures import SERVICE, Rig, SpyOne, create_ready, open_rig

GOLD = "gold1"


@pytest.fixture
def rig(rdb: redis.Redis) -> Iterator[Rig]:
    yield from open_rig(rdb)


def test_without_a_global_configuration_nothing_is_requested(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0)
    jobid = rig.scale(envid, "up")
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    assert rig.job(jobid)["status"] == "DONE"
    assert rig.r.keys(keys.PREFIX + "gs:*") == []
    assert gsadmin.env_tokens(rig.r, envid) == ([], 0)


def test_each_vm_waits_for_its_grant_then_is_bound_to_it(rig: Rig) -> None:
    gs.upload_global(rig, {"sim": ("silver", 8, 8192)}, {SERVICE: ("silver", 8, 8192)})
    rig.configure(master_setup_time=0)
    envid, jobid = gs.create(rig)
    assert rig.drive(envid) == "wait"                          # the master asked, nothing allocated yet
    assert rig.allocs == [] and rig.vms(envid) == {}
    env = rig.env(envid)
    assert env["phase"] == "capacity"
    assert env["info"].startswith("master m: waiting for capacity: request 1 PEND (1 vCPUs, 512 MB, pool sim)")
    assert gs.statuses(rig, envid) == [("m", PEND)]
    assert gsadmin.env_tokens(rig.r, envid) == ([], 1)
    assert rig.r.exists(keys.gs_alloc_mark())                  # an allocation job was queued
    assert gs.allocate(rig)["granted"] == 1
    rig.drive(envid)
    master = rig.vms(envid)["m"]
    assert master.vmid is not None and gsstore.slot_request(rig.r, envid, "m").nonce == master.nonce
    job = gs.settle(rig, envid, jobid)
    assert job["status"] == "DONE", rig.env(envid)["info"]
    assert gs.statuses(rig, envid) == [("m", ALLOCATED), ("s0", ALLOCATED), ("s1", ALLOCATED)]
    assert gsadmin.env_tokens(rig.r, envid) == (["1", "2", "3"], 0)
    assert gs.pool_free(rig) == {"sim": (5, 8192 - 3 * 512)}
    assert any(m.startswith("request 1 ALLOCATED: 1 vCPUs, 512 MB from pool sim") for m in rig.events(envid))
    gs.assert_consistent(rig)


def test_a_silver_service_borrows_a_gold_pool_and_gives_it_back(rig: Rig) -> None:
    gs.add_service(rig, GOLD, "gold", "sim-gold", num_slaves=1, master_setup_time=0)
    gs.upload_global(rig, {"sim": ("silver", 2, 4096), "sim-gold": ("gold", 2, 4096)},
                     {SERVICE: ("silver", 8, 8192), GOLD: ("gold", 8, 8192)})
    rig.configure(master_setup_time=0)
    silver, job = gs.create(rig)
    assert gs.settle(rig, silver, job)["status"] == "DONE"
    placed = {s.slot: s.req.pool for s in gsstore.listed(rig.r) if s.req.envid == silver}
    assert placed == {"m": "sim", "s0": "sim", "s1": "sim-gold"}           # the silver pool full: borrowed gold
    assert gs.pool_free(rig) == {"sim": (0, 4096 - 1024), "sim-gold": (1, 4096 - 512)}
    s1 = rig.vms(silver)["s1"]

    gold, gold_job = gs.create(rig, GOLD)
    rig.drive(gold)                                             # the master asks
    gs.allocate(rig)                                            # granted: 1 vCPU was left in sim-gold
    rig.drive(gold)
    rig.tick()
    rig.drive(gold)
    assert rig.vms(gold)["m"].state == "running"
    rig.callback(gold, "m", "MASTER_INIT_DONE")
    rig.drive(gold)                                             # the slave asks: no room anywhere for gold
    assert gs.statuses(rig, gold) == [("m", ALLOCATED), ("s0", PEND)]
    stats = gs.allocate(rig)                                    # ...so the borrowed VM is taken back
    assert stats["reclaims"] == 1
    down = envstore.get_job(rig.r, rig.env(silver)["job"])
    assert down["type"] == "SCALEDOWN" and down["origin"] == "scheduler" and down["slots"] == "s1"
    assert any("by the global scheduler: reclaim request 3" in m for m in rig.events(silver))
    assert gs.allocate(rig)["reclaims"] == 0                    # once per environment per minute
    rig.drive(silver)                                           # announced to the master, draining
    assert rig.ssh.commands()[-1] == f"~/master.sh remove {s1.ip} 8080"
    assert rig.env(silver)["op_slot"] == "s1"
    assert gs.settle(rig, silver, down["jobid"])["status"] == "DONE"
    assert sorted(rig.vms(silver)) == ["m", "s0"]
    assert gs.statuses(rig, silver)[-1] == ("s1", RELEASED)

    assert gs.settle(rig, gold, gold_job)["status"] == "DONE"
    assert {s.slot: s.req.pool for s in gsstore.listed(rig.r) if s.req.envid == gold} == {"m": "sim-gold",
                                                                                          "s0": "sim-gold"}
    assert gs.pool_free(rig) == {"sim": (0, 4096 - 1024), "sim-gold": (0, 4096 - 1024)}
    gs.assert_consistent(rig)


def test_a_quota_of_two_vcpus_never_holds_a_third_vm(rig: Rig) -> None:
    gs.upload_global(rig, {"sim": ("silver", 16, 16384)}, {SERVICE: ("silver", 2, 8192)})
    rig.configure(num_slaves=0, master_setup_time=0)
    envid, job = gs.create(rig)
    assert gs.settle(rig, envid, job)["status"] == "DONE"
    assert gs.settle(rig, envid, rig.scale(envid, "up"))["status"] == "DONE"
    third = rig.scale(envid, "up")
    for _ in range(3):
        gs.allocate(rig)
        rig.drive(envid)
        rig.tick(5)
    reason = "service quota: 2/2 vCPUs in use, this request needs 1"
    assert len(rig.vms(envid)) == 2 and len(rig.live(envid)) == 2
    assert gs.pending(rig)[0].reason == reason
    info = rig.env(envid)["info"]
    assert info.startswith("slave s1: waiting for capacity: request 3 PEND") and info.endswith(reason)
    assert sum(m.endswith(reason) for m in rig.events(envid)) == 1        # said once, not every re-check
    assert gsadmin.env_tokens(rig.r, envid) == (["1", "2"], 1)
    rig.tick(rig.settings.create_deadline)
    rig.drive(envid)
    job = rig.job(third)
    assert job["status"] == "FAIL" and reason in job["info"]
    assert gs.statuses(rig, envid)[-1] == ("s1", CANCELLED) and len(rig.vms(envid)) == 2
    gs.assert_consistent(rig)


def test_a_create_whose_master_cannot_be_placed_ends_at_its_deadline(rig: Rig) -> None:
    gs.upload_global(rig, {"sim": ("silver", 0, 0)}, {SERVICE: ("silver", 8, 8192)})
    rig.configure()
    envid, jobid = gs.create(rig)
    rig.drive(envid)
    gs.allocate(rig)                                            # the reason is stored and the env kicked
    rig.drive(envid)
    why = "no pool of class silver or better in zone lab is large enough for 1 vCPUs, 512 MB"
    assert rig.env(envid)["info"].endswith(why)
    rig.tick(rig.settings.create_deadline)
    rig.drive(envid)
    job = rig.job(jobid)
    assert job["status"] == "FAIL" and "the master VM did not reach RUNNING" in job["info"]
    assert f"no capacity granted: request 1 PEND (1 vCPUs, 512 MB, pool sim): {why}" in job["info"]
    assert gs.statuses(rig, envid) == [("m", CANCELLED)] and rig.allocs == []
    gs.assert_consistent(rig)


def test_capacity_returns_after_remove(rig: Rig) -> None:
    gs.upload_global(rig, {"sim": ("silver", 4, 4096)}, {SERVICE: ("silver", 8, 8192)})
    rig.configure(master_setup_time=0)
    envid, jobid = gs.create(rig)
    assert gs.settle(rig, envid, jobid)["status"] == "DONE"
    assert gs.pool_free(rig) == {"sim": (1, 4096 - 1536)}
    scale = rig.scale(envid, "up")
    rig.drive(envid)                                            # a 4th VM asks...
    assert gs.statuses(rig, envid)[-1] == ("s2", PEND)
    from functions.ops import operations
    remove = operations.request_remove(rig.r, rig.queue, SERVICE, envid, rig.clock)[0]
    assert gs.statuses(rig, envid)[-1] == ("s2", CANCELLED)     # ...and is withdrawn when the remove is asked
    assert rig.job(scale)["status"] == "FAIL"
    assert gs.settle(rig, envid, remove)["status"] == "DONE"
    assert envstore.get_env(rig.r, envid) is None
    assert gs.pool_free(rig) == {"sim": (4, 4096)}
    assert {s for _, s in gs.statuses(rig, envid)} <= {RELEASED, CANCELLED}
    assert gsstore.live(rig.r) == [] and gsstore.counters(rig.r) == ({}, {})
    assert not rig.r.exists(keys.gs_env_slots(envid))
    gs.assert_consistent(rig)


def test_a_service_may_ask_for_scale_ups_only(rig: Rig) -> None:
    gs.upload_global(rig, {"sim": ("silver", 8, 8192)}, {SERVICE: ("silver", 8, 8192)},
                     **{SERVICE: {"scaleups_only": True}})
    envid, _ = create_ready(rig, master_setup_time=0)           # the create asks for nothing
    assert gsstore.listed(rig.r) == []
    jobid = rig.scale(envid, "up")
    assert rig.drive(envid) == "wait"
    assert gs.statuses(rig, envid) == [("s2", PEND)]
    assert gs.settle(rig, envid, jobid)["status"] == "DONE"
    assert gsadmin.env_tokens(rig.r, envid) == (["1"], 0)
    gs.assert_consistent(rig)


def test_the_tick_allocates_and_checks(rig: Rig) -> None:
    gs.upload_global(rig, {"sim": ("silver", 8, 8192)}, {SERVICE: ("silver", 8, 8192)})
    rig.configure(num_slaves=0, master_setup_time=0)
    envid, _ = gs.create(rig)
    rig.drive(envid)
    assert gs.statuses(rig, envid) == [("m", PEND)]
    one = lambda url, auth: SpyOne(url, auth, rig)  # noqa: E731
    stats = ticks.tick(rig.r, rig.queue, rig.clock, one)        # a request arrived: the tick call allocates
    assert gs.statuses(rig, envid) == [("m", ALLOCATED)]
    assert stats is not None and stats["gs"]["drift"] == 0
    rig.r.hincrby(keys.gs_service_usage(), f"{SERVICE}:mem", 1)
    assert ticks.tick(rig.r, rig.queue, rig.clock, one) is None  # the same minute: only the pumps
    rig.clock.advance(60)
    assert ticks.tick(rig.r, rig.queue, rig.clock, one)["gs"]["drift"] == 1    # next minute: found and fixed
    gs.assert_consistent(rig)


def test_a_reclaim_pre_empts_the_borrowers_scaleup_that_waits_for_capacity(rig: Rig) -> None:
    gs.add_service(rig, GOLD, "gold", "sim-gold", num_slaves=0, master_setup_time=0)
    gs.upload_global(rig, {"sim": ("silver", 2, 4096), "sim-gold": ("gold", 1, 4096)},
                     {SERVICE: ("silver", 8, 8192), GOLD: ("gold", 8, 8192)})
    rig.configure(master_setup_time=0)
    silver, job = gs.create(rig)
    assert gs.settle(rig, silver, job)["status"] == "DONE"      # m, s0 in sim; s1 borrowed the whole gold pool
    up = rig.scale(silver, "up")
    rig.drive(silver)
    gs.allocate(rig)
    assert gs.statuses(rig, silver)[-1] == ("s2", PEND)         # the silver scale-up waits for room
    gold, gold_job = gs.create(rig, GOLD)
    rig.drive(gold)
    assert gs.allocate(rig)["reclaims"] == 1                    # the waiting scale-up gives way
    assert rig.job(up)["status"] == "FAIL" and "pre-empted by the global scheduler's reclaim" in rig.job(up)["info"]
    assert gs.statuses(rig, silver)[-1] == ("s2", CANCELLED)
    down = rig.env(silver)["job"]
    assert rig.job(down)["type"] == "SCALEDOWN" and rig.job(down)["slots"] == "s1"
    assert gs.settle(rig, silver, down)["status"] == "DONE"
    assert gs.settle(rig, gold, gold_job)["status"] == "DONE"
    assert [s.req.pool for s in gsstore.listed(rig.r) if s.req.envid == gold] == ["sim-gold"]
    gs.assert_consistent(rig)
