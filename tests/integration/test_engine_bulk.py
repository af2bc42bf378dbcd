"""A create's slaves allocated at once (functions.engine.bulk): every intent written before its VM is
allocated, no duplicate VM when an allocate answer is lost or OpenNebula refuses one, the VMs of a drive that
lost its lock meanwhile terminated (real Redis, in-process simulator over XML-RPC, one FakeClock)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from functions.cloud.one import OneError, OneUnavailable
from functions.engine import loop
from functions.store import envstore, keys
from tests.integration.engine_fixtures import Rig, SpyOne, open_rig


@pytest.fixture
def rig(rdb: redis.Redis) -> Iterator[Rig]:
    yield from open_rig(rdb)


class FaultyOne(SpyOne):
    """SpyOne that runs `fault(slot)` right after OpenNebula allocated the VM of a slave slot (before the
    answer reaches the engine)."""

    fault: Callable[[str], None] = staticmethod(lambda slot: None)

    def allocate(self, template: str) -> int:
        vmid = super().allocate(template)
        self.fault(self.rig.allocs[-1]["slot"])
        return vmid


def master_ready(rig: Rig, num_slaves: int) -> tuple[str, str]:
    envid, jobid = rig.create(num_slaves=num_slaves, master_setup_time=0)
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    rig.callback(envid, "m", "MASTER_INIT_DONE")
    return envid, jobid


def drive_with(rig: Rig, envid: str, fault: Callable[[str], None]) -> str:
    """One drive whose OpenNebula client runs `fault` after each allocate."""
    rig._take_drives(envid)                                   # noqa: SLF001 - as Rig.drive does
    ctx = rig.ctx()

    def factory(url: str, auth: str) -> Any:
        one = FaultyOne(url, auth, rig)
        one.fault = fault
        return one

    ctx.one_factory = factory
    return loop.step(ctx, envid)


def test_every_slave_intent_is_written_before_its_vm_is_allocated(rig: Rig) -> None:
    envid, _ = master_ready(rig, 4)
    rig.drive(envid)
    slaves = [a for a in rig.allocs if a["slot"] != "m"]
    assert [a["slot"] for a in slaves] == ["s0", "s1", "s2", "s3"]
    for a in slaves:
        assert a["rec"] is not None and a["rec"].state == "allocating" and a["rec"].vmid is None
    vms = rig.vms(envid)
    assert {s: (vms[s].state, vms[s].vmid) for s in ("s0", "s1", "s2", "s3")} == {
        a["slot"]: ("allocated", a["vmid"]) for a in slaves}
    for a in slaves:
        assert rig.r.get(keys.vm_index("sim", a["vmid"])) == f"{envid} {a['slot']}"
        assert f"slave {a['slot']}: VM {a['vmid']} allocated" in rig.events(envid)


def test_a_lost_allocate_answer_is_adopted_by_its_tags_never_allocated_twice(rig: Rig) -> None:
    envid, jobid = master_ready(rig, 3)

    def lose(slot: str) -> None:
        if slot == "s1":
            raise OneUnavailable("connection reset before the answer")

    assert drive_with(rig, envid, lose) == "retry"
    vms = rig.vms(envid)
    assert vms["s0"].vmid is not None and vms["s1"].vmid is None and vms["s2"].vmid is None   # s2: intent only
    rig.drive(envid)
    vms = rig.vms(envid)
    assert f"slave s1: VM {vms['s1'].vmid} found by its tags after a restart" in rig.events(envid)
    assert len(rig.live(envid)) == 4                         # master + 3 slaves, no duplicate
    assert sorted(a["slot"] for a in rig.allocs) == ["m", "s0", "s1", "s2"]
    assert rig.job(jobid)["status"] == "RUNNING"


def test_an_allocate_refused_by_opennebula_fails_the_create_keeping_what_was_allocated(rig: Rig) -> None:
    envid, jobid = master_ready(rig, 3)

    def refuse(slot: str) -> None:
        if slot == "s1":
            raise OneError(2, "[one.vm.allocate] quota exceeded")

    assert drive_with(rig, envid, refuse) == "idle"
    job = rig.job(jobid)
    assert job["status"] == "FAIL" and job["info"] == "slave s1: OpenNebula error 0x2: [one.vm.allocate] quota exceeded"
    vms = rig.vms(envid)
    assert vms["s0"].state == "allocated" and vms["s0"].vmid is not None     # recorded: the user removes it


def test_a_drive_that_lost_its_lock_while_allocating_terminates_its_slaves(rig: Rig) -> None:
    envid, _ = master_ready(rig, 3)
    taken: list[str] = []

    def expire(slot: str) -> None:
        if slot == "s2":                                      # paused past the TTL; another holder took over
            rig.r.set(keys.env_lock(envid), "someone-else")
            taken.append(slot)

    assert drive_with(rig, envid, expire) == "lost"
    assert taken == ["s2"]
    slaves = [a for a in rig.allocs if a["slot"] != "m"]
    assert len(slaves) == 3 and all(not rig.running(a["vmid"]) for a in slaves)
    assert len(rig.live(envid)) == 1                          # the master only: the new holder adopted none
    assert all(v.vmid is None for s, v in rig.vms(envid).items() if s != "m")   # intents, for the new holder
    rig.r.delete(keys.env_lock(envid))
    rig.drive(envid)
    assert len(rig.live(envid)) == 4 and len(envstore.get_vms(rig.r, envid)) == 4
