"""The minute refresh's memory (functions.upkeep.recall): records are read again only when a writer marked them
(every store writer does, in the same atomic step), when the Redis server is another or was emptied, and at least
every FULL_EVERY minutes; whatever changed through the store between two minutes is what the next refresh and the
policy pass see (real Redis, the real simulator over XML-RPC)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from functions.cloud.one import OneClient
from functions.store import envstore, keys
from functions.upkeep import policyread, recall
from functions.upkeep import refresh as refresh_mod
from tests.integration.engine_fixtures import Rig, create_ready, open_rig


@pytest.fixture
def rig(rdb: redis.Redis) -> Iterator[Rig]:
    recall.forget(rdb)
    yield from open_rig(rdb)


def minute(rig: Rig) -> tuple[dict[str, Any], dict[str, policyread.Handed]]:
    """One minute's refresh (the clock moved on a minute first)."""
    rig.clock.advance(60)
    return refresh_mod.refresh(rig.r, rig.clock, lambda url, auth: OneClient(url, auth))


def by_slot(known: dict[str, policyread.Handed], envid: str) -> dict[str, dict[str, Any]]:
    """The env's handed-over records by slot; what the refresh made of them for the policies (remembered from
    minute to minute) is checked to be what the policy pass would make of them itself."""
    records, vms = known[envid]
    if vms is not None:
        assert sorted(vms, key=lambda o: o.slot) == sorted(filter(None, map(policyread.vm_obs, records)),
                                                           key=lambda o: o.slot)
    return {str(rec["slot"]): rec for rec in records}


def test_records_are_read_once_then_only_when_a_writer_marked_them(rig: Rig) -> None:
    a, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    b, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    first, _ = minute(rig)
    assert first["reread"] == 2                        # nothing remembered yet: every env read
    minute(rig)                                        # the first minute's own writes (tags checked) marked both
    steady, known = minute(rig)
    assert steady["reread"] == 0 and steady["changed"] == 0 and set(known) == {a, b}

    rec = rig.vms(b)["s0"]
    rec.one_state = "unkn"                             # a writer's stale view of the VM, through the store
    envstore.put_vm(rig.r, b, rec)
    after, known = minute(rig)
    assert after["reread"] == 1 and after["changed"] == 1
    assert rig.vms(b)["s0"].one_state == "runn" and by_slot(known, b)["s0"]["one_state"] == "runn"


def test_a_deleted_record_and_a_callback_written_record_are_seen_the_next_minute(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=2)
    minute(rig)
    minute(rig)
    envstore.del_vm(rig.r, envid, "s1")
    rig.callback(envid, "s0", "SLAVE_0_INIT_FAIL:disk")      # the callback drain writes the record (callback_step)
    stats, known = minute(rig)
    assert stats["reread"] == 1
    assert set(by_slot(known, envid)) == {"m", "s0"} and by_slot(known, envid)["s0"]["init"].startswith("fail:")


def test_a_new_cpu_figure_of_a_remembered_record_is_written_and_handed_over(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    minute(rig)
    minute(rig)
    rig.rpc().onesim.vm.setcpu(rig.sim.auth, rig.vms(envid)["s0"].vmid, 77.5)
    stats, known = minute(rig)
    assert stats["reread"] == 0 and stats["cpu"] == 1
    assert rig.vms(envid)["s0"].cpu == 77.5 and by_slot(known, envid)["s0"]["cpu"] == 77.5


def test_a_vm_whose_state_changed_is_judged_again_without_reading_its_record(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    minute(rig)
    minute(rig)
    rig.rpc().onesim.vm.fail(rig.sim.auth, rig.vms(envid)["s0"].vmid, "UNKNOWN")
    stats, known = minute(rig)
    assert stats["reread"] == 0 and stats["changed"] == 1
    assert rig.vms(envid)["s0"].one_state == "unkn" and by_slot(known, envid)["s0"]["one_state"] == "unkn"


def test_a_write_behind_the_stores_back_is_seen_within_full_every_minutes(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    minute(rig)
    minute(rig)
    data = json.loads(rig.r.hget(keys.env_vms(envid), "s0"))
    rig.r.hset(keys.env_vms(envid), "s0", json.dumps(dict(data, one_state="unkn")))   # no mark: not a store writer
    seen = []
    for _ in range(recall.FULL_EVERY):
        stats, _ = minute(rig)
        seen.append(rig.vms(envid)["s0"].one_state)
    assert seen[0] == "unkn" and seen[-1] == "runn"     # the memory is trusted, but at most FULL_EVERY minutes


def test_an_emptied_or_other_redis_is_read_in_full(rig: Rig) -> None:
    create_ready(rig, master_setup_time=0, num_slaves=1)
    minute(rig)
    minute(rig)
    assert minute(rig)[0]["reread"] == 0
    rig.r.delete(keys.vms_epoch())                     # as FLUSHALL would: a new epoch, every env read again
    assert minute(rig)[0]["reread"] == 1
    assert minute(rig)[0]["reread"] == 0
    rig.clock.advance(-3600)                           # the clock went back: nothing remembered is trusted
    assert minute(rig)[0]["reread"] == 1
