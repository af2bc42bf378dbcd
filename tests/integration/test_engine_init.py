"""A VM's init verdict is a fact of that incarnation: statuses reported after MASTER_INIT_DONE (during
master_setup_time, or a callback re-applied late) cannot lose it, and SLAVE_<n>_INIT_FAIL is kept on the slave
(real Redis, in-process simulator, fake clock)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.integration.engine_fixtures import Rig, create_ready, open_rig


@pytest.fixture
def rig(rdb: redis.Redis) -> Iterator[Rig]:
    yield from open_rig(rdb)


def test_a_status_after_master_init_done_does_not_lose_it(rig: Rig) -> None:
    envid, jobid = rig.create(master_setup_time=20, num_slaves=1)
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    assert rig.callback(envid, "m", "MASTER_INIT_DONE") == "applied"
    rig.drive(envid)                                        # master_setup_time still running
    assert rig.callback(envid, "m", "APP_RUNNING") == "applied"   # the app reports progress meanwhile
    assert rig.vms(envid)["m"].status == "APP_RUNNING"      # the status column stays last-writer-wins
    rig.clock.advance(25)
    rig.drive(envid)                                        # setup time over: slaves start
    assert sorted(rig.vms(envid)) == ["m", "s0"]
    rig.tick()
    rig.drive(envid)
    assert rig.job(jobid)["status"] == "DONE"


def test_a_late_master_init_fail_cannot_undo_done(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    rig.callback(envid, "m", "MASTER_INIT_FAIL:late")
    assert rig.vms(envid)["m"].init == "done"


def test_slave_init_fail_is_recorded_on_the_slave(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=2)
    rig.callback(envid, "s1", "SLAVE_1_INIT_FAIL:disk")
    rig.callback(envid, "s1", "APP_RUNNING")
    vms = rig.vms(envid)
    assert vms["s1"].init == "fail:SLAVE_1_INIT_FAIL:disk" and vms["s0"].init == ""
    assert vms["m"].init == "done"


def test_a_slave_init_report_without_its_index_is_that_slaves_verdict(rig: Rig) -> None:
    """The guide's tomcat-slave.sh has no SLAVE_ID and reports SLAVE__INIT_DONE: still the slave's own report."""
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=2)
    rig.callback(envid, "s0", "SLAVE__INIT_DONE")
    rig.callback(envid, "s1", "SLAVE__INIT_FAIL:disk")
    rig.callback(envid, "s1", "SLAVE_1_INIT_DONE")           # the first verdict stays
    vms = rig.vms(envid)
    assert (vms["s0"].init, vms["s1"].init) == ("done", "fail:SLAVE__INIT_FAIL:disk")
