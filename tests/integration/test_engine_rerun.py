"""A drive that finds the environment's lock taken asks the holder to rerun (guards.want_rerun), and a drive
that held the lock kicks a new drive at once when asked, instead of the asker's delayed kick (real Redis, the
in-process simulator, one FakeClock)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from functions.engine import kick, loop
from functions.store import guards, keys
from tests.integration.engine_fixtures import Rig, open_rig


@pytest.fixture
def rig(rdb: redis.Redis) -> Iterator[Rig]:
    yield from open_rig(rdb)


def queued_drives(rig: Rig, envid: str) -> int:
    return sum(1 for j in rig.queue.get_jobs() if j.func_name == kick.DRIVE and [str(a) for a in j.args] == [envid])


def test_a_busy_drive_asks_the_holder_to_rerun_and_leaves_a_delayed_kick(rig: Rig) -> None:
    envid, _ = rig.create(master_setup_time=0)
    rig._take_drives(envid)                                   # noqa: SLF001 - the queued drive is ours
    with guards.env_lock(rig.r, envid) as held:
        assert held and loop.step(rig.ctx(), envid) == "busy"
    assert rig.r.get(keys.env_rerun(envid)) == "1" and 0 < rig.r.ttl(keys.env_rerun(envid)) <= guards.RERUN_TTL
    due = rig.r.zscore(keys.kick_schedule(), envid)
    assert due is not None and due <= time.time() + loop.BUSY_RETRY
    assert queued_drives(rig, envid) == 0


def test_a_drive_asked_to_rerun_kicks_a_new_drive_at_once(rig: Rig) -> None:
    envid, _ = rig.create(master_setup_time=0)
    assert rig.drive(envid) == "wait"                         # the master allocated: watched, no drive queued
    assert queued_drives(rig, envid) == 0
    rig.tick()
    guards.want_rerun(rig.r, envid)                         # a drive came while this one would hold the lock
    assert rig.drive(envid) == "wait"
    assert queued_drives(rig, envid) == 1 and rig.r.get(keys.env_rerun(envid)) is None
    assert rig.drive(envid) == "wait" and queued_drives(rig, envid) == 0       # asked once, rerun once
