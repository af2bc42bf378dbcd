"""Placement through the simulator: pack / stripe / load place differently, requirements filter,
no room keeps VMs PENDING until capacity frees up."""

from __future__ import annotations

import xmlrpc.client
from collections.abc import Callable
from pathlib import Path

import pyone
import pytest

from tests.onesim.conftest import Sim

INVENTORY = """
hosts:
  - {name: h0, cores: 4, memory_mb: 8192, attributes: {PRIORITY: 1}}
  - {name: h1, cores: 4, memory_mb: 8192, attributes: {PRIORITY: 9}}
  - {name: h2, cores: 8, memory_mb: 8192, attributes: {PRIORITY: 5}}
networks:
  - {id: 0, name: lo, ip_start: 127.0.1.1, size: 1000}
images:
  - {id: 0, name: img, size_mb: 10}
"""


@pytest.fixture
def small(make_sim: Callable[..., Sim], tmp_path: Path) -> Sim:
    path = tmp_path / "inventory.yaml"
    path.write_text(INVENTORY)
    return make_sim(inventory=path)


def host_of(one: pyone.OneServer, vmid: int) -> int | None:
    vm = one.vm.info(vmid)
    return vm.HISTORY_RECORDS.HISTORY[-1].HID if vm.HISTORY_RECORDS.HISTORY else None


def place(sim: Sim, count: int, extra: str, tick_each: bool = True) -> list[int | None]:
    one = sim.client()
    ids = []
    for _ in range(count):
        ids.append(one.vm.allocate(f"CPU = 1\nMEMORY = 128\n{extra}"))
        if tick_each:
            sim.advance()
    sim.advance()
    return [host_of(one, i) for i in ids]


def test_pack_stripe_and_load_place_differently(make_sim: Callable[..., Sim], tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(INVENTORY)
    results = {}
    for policy, rank in [("pack", 'SCHED_RANK = "RUNNING_VMS"'), ("stripe", 'SCHED_RANK = "- RUNNING_VMS"'),
                         ("load", 'SCHED_RANK = "FREE_CPU"'), ("legacy-pack", 'RANK = "RUNNING_VMS"')]:
        results[policy] = place(make_sim(inventory=path), 6, rank)
    assert results["pack"] == [0, 0, 0, 0, 1, 1]  # fill the first host, then the next
    assert results["stripe"] == [0, 1, 2, 0, 1, 2]  # spread, ties by host id
    assert results["load"] == [2, 2, 2, 2, 2, 2]  # the host with the most free (monitored) CPU
    assert results["legacy-pack"] == results["pack"]
    assert len({tuple(v) for v in results.values()}) == 3


def test_load_aware_follows_monitored_cpu(small: Sim) -> None:
    one = small.client()
    proxy = xmlrpc.client.ServerProxy(small.handle.url)
    first = one.vm.allocate('CPU = 1\nMEMORY = 128\nSCHED_RANK = "FREE_CPU"')
    small.advance()
    assert host_of(one, first) == 2
    proxy.onesim.vm.setcpu(small.handle.auth, first, 700.0)  # h2: 800 - 700 = 100 free
    second = one.vm.allocate('CPU = 1\nMEMORY = 128\nSCHED_RANK = "FREE_CPU"')
    small.advance()
    assert host_of(one, second) == 0  # h0 and h1 tie at 400 free: lowest id


def test_default_rank_is_striping(small: Sim) -> None:
    assert place(small, 3, "") == [0, 1, 2]


def test_fixed_priority_and_arithmetic_rank(small: Sim) -> None:
    assert place(small, 2, 'SCHED_RANK = "PRIORITY"') == [1, 1]
    assert place(small, 1, 'SCHED_RANK = "-(PRIORITY * 2) + 1"') == [0]


@pytest.mark.parametrize("requirements, expected", [
    ('NAME = "h1"', [1, 1, 1]),
    ('NAME = "h*" & PRIORITY > 4', [1, 2, 1]),
    ("!(NAME = h0) & !(NAME = h1)", [2, 2, 2]),
    ("MAX_CPU > 400 | PRIORITY < 2", [0, 2, 0]),
])
def test_sched_requirements_filter(small: Sim, requirements: str, expected: list[int]) -> None:
    escaped = requirements.replace('"', '\\"')
    assert place(small, 3, f'SCHED_REQUIREMENTS = "{escaped}"') == expected


def test_colocation_with_current_vms_and_dollar_vars(small: Sim) -> None:
    one = small.client()
    anchor = one.vm.allocate('CPU = 1\nMEMORY = 128\nSCHED_REQUIREMENTS = "NAME = h2"')
    small.advance()
    follower = one.vm.allocate(f'CPU = 1\nMEMORY = 128\nPEER = {anchor}\nSCHED_REQUIREMENTS = "CURRENT_VMS @> $PEER"')
    avoider = one.vm.allocate(f'CPU = 1\nMEMORY = 128\nSCHED_REQUIREMENTS = "!(CURRENT_VMS @> {anchor})"\n'
                              'SCHED_RANK = "PRIORITY"')
    small.advance()
    assert (host_of(one, follower), host_of(one, avoider)) == (2, 1)


def test_no_room_stays_pending_until_capacity_frees(small: Sim) -> None:
    one = small.client()
    big = [one.vm.allocate("CPU = 4\nMEMORY = 128") for _ in range(4)]  # h0, h1, h2 (x2) exactly full
    small.advance()
    assert sorted(host_of(one, i) for i in big) == [0, 1, 2, 2]
    waiting = one.vm.allocate("CPU = 1\nMEMORY = 128")
    small.advance()
    vm = one.vm.info(waiting)
    assert vm.STATE == 1 and "enough capacity" in vm.USER_TEMPLATE["SCHED_MESSAGE"]
    small.advance(60)  # retried every scheduler cycle, still no room
    assert one.vm.info(waiting).STATE == 1 and small.model.vms[waiting].sched_tried_at == small.clock.now
    one.vm.action("terminate", big[1])
    small.advance()
    vm = one.vm.info(waiting)
    assert (vm.STATE, vm.LCM_STATE, host_of(one, waiting)) == (3, 3, 1) and "SCHED_MESSAGE" not in vm.USER_TEMPLATE


def test_memory_is_capacity_too(small: Sim) -> None:
    one = small.client()
    vmid = one.vm.allocate("CPU = 0.1\nMEMORY = 9000")
    small.advance()
    assert one.vm.info(vmid).STATE == 1


def test_unsatisfiable_or_broken_requirements_stay_pending_with_reason(small: Sim) -> None:
    one = small.client()
    nowhere = one.vm.allocate('CPU = 1\nMEMORY = 8\nSCHED_REQUIREMENTS = "NAME = nope"')
    broken = one.vm.allocate('CPU = 1\nMEMORY = 8\nSCHED_REQUIREMENTS = "NAME = = 3"')
    small.advance()
    assert "No host meets SCHED_REQUIREMENTS" in one.vm.info(nowhere).USER_TEMPLATE["SCHED_MESSAGE"]
    assert "error in SCHED_REQUIREMENTS" in one.vm.info(broken).USER_TEMPLATE["SCHED_MESSAGE"]
    one.vm.update(broken, 'SCHED_REQUIREMENTS = "NAME = h1"')
    small.advance()
    assert host_of(one, broken) == 1  # an update triggers a fresh attempt
    one.vm.update(nowhere, 'SCHED_REQUIREMENTS = "NAME = h2"', 1)
    small.advance()
    assert host_of(one, nowhere) == 2


def test_fill_and_disabled_hosts(small: Sim) -> None:
    one = small.client()
    proxy = xmlrpc.client.ServerProxy(small.handle.url)
    assert proxy.onesim.host.fill(small.handle.auth, True) == [True, 0, 0]
    vmid = one.vm.allocate("CPU = 1\nMEMORY = 8")
    small.advance()
    assert one.vm.info(vmid).STATE == 1
    proxy.onesim.host.fill(small.handle.auth, False)
    one.host.status(0, 1)  # disable h0 and h1: only h2 can take it
    one.host.status(1, 2)
    small.advance()
    assert host_of(one, vmid) == 2
    assert one.host.info(0).STATE == 4 and one.host.info(1).STATE == 8
