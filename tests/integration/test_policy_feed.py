"""The tick's policy pass woven into the VM refresh (functions.upkeep.policies.Pass, functions.upkeep.refresh
`each`): the environments of an endpoint that has answered are decided and written while another endpoint is
still being asked, and a passive env waits for its partner, so it still follows it in the same minute when the
partner's endpoint answers last. Real Redis, the in-process simulator over XML-RPC, two (proxy) groups."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from functions.cloud.one import OneClient
from functions.store import keys
from functions.upkeep import ticks
from tests.integration.engine_fixtures import Rig, env_entry, open_rig
from tests.integration.policy_fixtures import ACTIVE, GRACE, PASSIVE, create_named, fail_vm, guide_pair

PLAIN = "plain"


@pytest.fixture
def rig(rdb: redis.Redis) -> Iterator[Rig]:
    yield from open_rig(rdb)


def _entries() -> dict[str, dict[str, Any]]:
    return {PLAIN: env_entry(num_slaves=0, master_setup_time=0, drain_time=0), **guide_pair()}


def test_an_answered_endpoints_envs_are_decided_while_another_is_asked_and_a_passive_follows_its_partner(
        rig: Rig) -> None:
    rig.configure_envs(_entries())
    active, passive, plain = (create_named(rig, name) for name in (ACTIVE, PASSIVE, PLAIN))
    slow = rig.sim.url                                         # the active's endpoint answers last
    for envid in (passive, plain):                             # the same simulator by another URL: another group
        rig.r.hset(keys.env(envid), "proxy", slow.replace("127.0.0.1", "localhost"))
    while_asked: list[tuple[bool, bool]] = []

    class SlowOne(OneClient):
        """The active's endpoint: notes, before it answers, whether the other group's envs were decided."""

        def observe_rows(self, vmids: Any) -> Any:
            if self.proxy == slow:
                now = str(int(rig.clock() // 60))
                deadline = time.monotonic() + 15
                while rig.r.hget(keys.env(plain), "pol_minute") != now and time.monotonic() < deadline:
                    time.sleep(0.01)
                while_asked.append((rig.r.hget(keys.env(plain), "pol_minute") == now,
                                    rig.r.hget(keys.env(passive), "pol_minute") == now))
            return super().observe_rows(vmids)

    def minute() -> tuple[str, str]:
        rig.tick(60.0)
        stats = ticks.tick(rig.r, rig.queue, rig.clock, one_factory=lambda url, auth: SlowOne(url, auth),
                           grace=GRACE)
        assert stats is not None and stats["endpoints"] == 2 and stats["policies"]["fed_seconds"] > 0
        return rig.env(active)["policy_status"], rig.env(passive)["policy_status"]

    assert [minute(), minute()] == [("ACTIVE", "PASSIVE")] * 2    # past the boot grace
    lost = rig.vms(active)
    fail_vm(rig, lost["m"].vmid, "UNKNOWN")
    fail_vm(rig, lost["s0"].vmid, "UNKNOWN")
    # failover_expr true for its period (3): the active FAILED, and its passive ACTIVE in that same minute
    assert [minute() for _ in range(3)] == [("ACTIVE", "PASSIVE")] * 2 + [("FAILED", "ACTIVE")]
    # every minute: the plain env (the fast group) was decided before the slow group answered; the passive not
    assert while_asked == [(True, False)] * 5
