"""The guide's active/passive pair (config/examples/config.rb: tomcat_ha_active / tomcat_ha_passive) failing over
and back through the minute tick: real Redis, the in-process simulator with injected host failures, the engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.integration.engine_fixtures import Rig, open_rig
from tests.integration.policy_fixtures import (
    ACTIVE,
    PASSIVE,
    create_named,
    env_doc,
    fail_vm,
    guide_pair,
    minute,
    policy_jobs,
    settle,
)


@pytest.fixture
def rig(rdb: redis.Redis) -> Iterator[Rig]:
    yield from open_rig(rdb)


def _drive(rig: Rig, envid: str) -> None:
    """Drive the env's operation to its end, answering a new master's MASTER_INIT_DONE as its script would."""
    settle(rig, envid, until="master_init")
    if rig.env(envid).get("phase") == "master_init" and rig.env(envid).get("op") == "RECREATE":
        rig.callback(envid, "m", "MASTER_INIT_DONE")
        settle(rig, envid)


def test_the_guide_pair_fails_over_and_back(rig: Rig) -> None:
    rig.configure_envs(guide_pair())
    active, passive = create_named(rig, ACTIVE), create_named(rig, PASSIVE)
    assert (rig.env(active)["policy_status"], rig.env(passive)["policy_status"]) == ("ACTIVE", "PASSIVE")
    minute(rig)
    minute(rig)                                          # past the boot grace; a PASSIVE env does not scale
    assert len(rig.vms(passive)) == 1 and env_doc(rig, passive)["policy_status"] == "PASSIVE"

    lost = rig.vms(active)
    fail_vm(rig, lost["m"].vmid, "UNKNOWN")              # the hypervisor of 2 of its 3 VMs goes down
    fail_vm(rig, lost["s0"].vmid, "UNKNOWN")
    history: list[tuple[str, str, int, int]] = []
    for _ in range(40):
        minute(rig)
        _drive(rig, active)
        _drive(rig, passive)
        history.append((rig.env(active)["policy_status"], rig.env(passive)["policy_status"],
                        len(rig.vms(active)), len(rig.vms(passive))))
        if len(history) > 4 and history[-1] == ("ACTIVE", "PASSIVE", 3, 1):
            break
    statuses = [h[:2] for h in history]
    assert statuses[:3] == [("ACTIVE", "PASSIVE"), ("ACTIVE", "PASSIVE"), ("FAILED", "ACTIVE")]   # period 3
    assert max(h[3] for h in history) == 4               # the passive's window min 4 while it is ACTIVE
    assert history[-1] == ("ACTIVE", "PASSIVE", 3, 1)    # failed back; the passive shed what it added

    a_jobs, p_jobs = policy_jobs(rig, active), policy_jobs(rig, passive)
    assert [(j["type"], j["slots"], j["status"]) for j in a_jobs] == [
        ("RECREATE", ["m"], "DONE"), ("RECREATE", ["s0"], "DONE")]                 # master first, then s0
    assert [(j["type"], j["source"]) for j in p_jobs] == [("SCALEUP", "elasticity")] * 3 + [
        ("SCALEDOWN", "failback")] * 3
    assert [j["slots"] for j in p_jobs[3:]] == [["s2"], ["s1"], ["s0"]]
    a_events, p_events = rig.events(active), rig.events(passive)
    assert ("AVAIL_POLICY_STATUS: Declaring environment as FAILED and triggering failover to environment "
            f"{passive}") in a_events
    assert "AVAIL_POLICY_STATUS: Failing back environment to ACTIVE status; environment " \
           f"{passive} returns to PASSIVE" in a_events
    assert ("AVAIL_POLICY_STATUS: Making environment ACTIVE due to failover of primary environment "
            f"{active}") in p_events
    assert ("AVAIL_POLICY_STATUS: Making environment PASSIVE after failing back to primary environment "
            f"{active}") in p_events
    assert "policy_status PASSIVE -> ACTIVE" in p_events and "policy_status ACTIVE -> PASSIVE" in p_events
    assert len(rig.live(active)) == 3 and len(rig.live(passive)) == 1
