"""The minute refresh records the address OpenNebula reports for each VM (`one_ip`, the only address a legacy
callback is accepted from), also for a VM the engine never asked about because it came up by its callback
(real Redis, in-process simulator over XML-RPC)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from functions.cloud.one import OneClient
from functions.ops.callbacks import CallbackRefused, find_caller
from functions.store import envstore
from functions.upkeep import ticks
from tests.integration.engine_fixtures import Rig, create_ready, open_rig
from tests.integration.test_engine_ownership import retag


@pytest.fixture
def rig(rdb: redis.Redis) -> Iterator[Rig]:
    yield from open_rig(rdb)


def _forget_one_ip(rig: Rig, envid: str) -> None:
    """What a VM that came up by its callback leaves: a record with its own ip claim and no one_ip."""
    for rec in rig.vms(envid).values():
        rec.one_ip, rec.ip = "", "192.0.2.77"                     # the VM's own claim, not OpenNebula's
        envstore.put_vm(rig.r, envid, rec)


def test_the_refresh_records_opennebulas_address(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    _forget_one_ip(rig, envid)
    retag(rig, rig.vms(envid)["s0"].vmid, CARINA_ENVID="99")    # a reused id: not ours, its address neither
    ticks.refresh_vms(rig.r, rig.clock, lambda url, auth: OneClient(url, auth))
    vms = rig.vms(envid)
    master_ip = OneClient(rig.sim.url, rig.sim.auth).info(vms["m"].vmid).ip
    assert master_ip and vms["m"].one_ip == master_ip
    assert vms["s0"].one_ip == "" and vms["s0"].one_state == "missing"

    env = envstore.get_env(rig.r, envid)
    assert find_caller(rig.r, env, vms["m"].vmid, None, "APP_X", True, master_ip).slot == "m"
    with pytest.raises(CallbackRefused):                       # the VM's own claim no longer counts
        find_caller(rig.r, env, vms["m"].vmid, None, "APP_X", True, "192.0.2.77")
