"""Scale-down and remove have deadlines too: a terminate OpenNebula keeps refusing is surfaced (env info and an
event, not swallowed) and the job ends FAIL with the reason when the deadline passes; a new remove can be asked
afterwards and finishes (real Redis, in-process simulator over XML-RPC, fake clock)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from functions.ops import operations
from functions.store import envstore, guards
from tests.integration.engine_fixtures import SERVICE, Rig, create_ready, open_rig


@pytest.fixture
def rig(rdb: redis.Redis) -> Iterator[Rig]:
    yield from open_rig(rdb, op_deadline=120)


def stuck_booting_slave(rig: Rig) -> str:
    """An ACTIVE 1+0 environment scaled up to a slave that stays in BOOT (OpenNebula refuses terminate there)."""
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=0)
    rig.sim.model.set_delay("boot", 86400)
    rig.scale(envid, "up")
    rig.drive(envid)
    rig.tick(1)
    rig.tick(1)
    slave = rig.vms(envid)["s0"]
    assert rig.sim_vm(slave.vmid).lcm == 1 or not rig.running(slave.vmid)     # allocated, not RUNNING
    return envid


def test_a_refused_terminate_is_surfaced_and_the_remove_fails_at_its_deadline(rig: Rig) -> None:
    envid = stuck_booting_slave(rig)
    (remove,) = operations.request_remove(rig.r, rig.queue, SERVICE, envid, rig.clock)
    rig.drive(envid)
    slave = rig.vms(envid)["s0"]
    info = rig.env(envid)["info"]
    assert f"OpenNebula refused to terminate VM {slave.vmid}:" in info and "wrong state" in info
    assert sum("refused to terminate" in m for m in rig.events(envid)) == 1     # said once, not every poll
    rig.clock.advance(60)
    rig.drive(envid)
    assert rig.job(remove)["status"] == "RUNNING"                              # still trying
    rig.clock.advance(61)
    rig.drive(envid)
    job = rig.job(remove)
    assert job["status"] == "FAIL" and "within 120s (deadline)" in job["info"] and "refused" in job["info"]
    assert guards.current_op(rig.r, envid) is None

    rig.sim.model.set_delay("boot", 0)                                         # the VM gets out of BOOT
    rig.tick(1)
    (again,) = operations.request_remove(rig.r, rig.queue, SERVICE, envid, rig.clock)
    assert again != remove
    for _ in range(10):
        if envstore.get_env(rig.r, envid) is None:
            break
        rig.drive(envid)
        rig.tick(1)
    assert envstore.get_env(rig.r, envid) is None and rig.job(again)["status"] == "DONE"


def test_a_scale_down_with_opennebula_down_fails_at_its_deadline(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=1, drain_time=0)
    down = rig.scale(envid, "down")
    rig.sim.stop()                                                             # the endpoint is gone
    assert rig.drive(envid) == "retry"
    rig.clock.advance(121)
    rig.drive(envid)
    job = rig.job(down)
    assert job["status"] == "FAIL" and "scaledown did not complete within 120s" in job["info"]
    assert guards.current_op(rig.r, envid) is None
