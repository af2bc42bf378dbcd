"""The VM state machine through pyone: delays, every action, wrong-state errors, recover, guest events."""

from __future__ import annotations

from collections.abc import Callable

import pyone
import pytest

from tests.onesim.conftest import Sim

SMALL = "CPU = 0.5\nMEMORY = 128\nNIC = [ NETWORK_ID = 0 ]\nCONTEXT = [ IP = \"$NIC[IP]\", ID = \"$VMID\" ]"


def state(one: pyone.OneServer, vmid: int) -> tuple[int, int]:
    vm = one.vm.info(vmid)
    return vm.STATE, vm.LCM_STATE


@pytest.fixture
def slow(make_sim: Callable[..., Sim]) -> Sim:
    """Delays of 1..5 s so every transient state can be observed with the fake clock."""
    return make_sim(delays={"schedule": 1, "prolog": 2, "boot": 3, "shutdown": 4, "epilog": 5, "save": 2})


def test_boot_and_terminate_walk_every_state_with_delays(slow: Sim) -> None:
    one = slow.client()
    vmid = one.vm.allocate(SMALL)
    seen = [state(one, vmid)]
    for step in (0, 1, 2, 3):
        slow.advance(step)
        seen.append(state(one, vmid))
    assert seen == [(1, 0), (1, 0), (3, 1), (3, 2), (3, 3)]  # PENDING, PENDING, PROLOG, BOOT, RUNNING
    one.vm.action("terminate", vmid)
    seen = [state(one, vmid)]
    for step in (4, 5):
        slow.advance(step)
        seen.append(state(one, vmid))
    assert seen == [(3, 12), (3, 11), (6, 0)]  # SHUTDOWN, EPILOG, DONE
    context = dict(one.vm.info(vmid).TEMPLATE["CONTEXT"])
    assert context == {"DISK_ID": "0", "ID": str(vmid), "IP": "127.0.1.1", "TARGET": "hda"}
    assert slow.guests.wait_for(2) == [("start", vmid, "127.0.1.1", context), ("stop", vmid)]
    assert slow.model.hosts[0].vms == set() and slow.model.networks[0].leased == {}
    vm = one.vm.info(vmid)
    assert vm.ETIME > 0 and vm.HISTORY_RECORDS.HISTORY[0].ETIME > 0


def test_actions_and_resumes(sim: Sim, one: pyone.OneServer) -> None:
    vmid = one.vm.allocate(SMALL)
    sim.advance()
    expected = [
        ("poweroff", (8, 0)), ("resume", (3, 3)), ("poweroff-hard", (8, 0)), ("undeploy", (9, 0)),
        ("resume", (3, 3)), ("suspend", (5, 0)), ("resume", (3, 3)), ("stop", (4, 0)), ("resume", (3, 3)),
        ("undeploy-hard", (9, 0)), ("resume", (3, 3)), ("reboot", (3, 3)), ("reboot-hard", (3, 3)),
        ("suspend", (5, 0)), ("stop", (4, 0)), ("terminate-hard", (6, 0)),
    ]
    for action, after in expected:
        assert one.vm.action(action, vmid) == vmid
        sim.advance()
        assert state(one, vmid) == after, action
    assert one.vm.action("terminate", vmid) == vmid  # DONE: terminate is a no-op success


def test_resume_after_stop_takes_the_resume_path(slow: Sim) -> None:
    one = slow.client()
    vmid = one.vm.allocate(SMALL)
    slow.advance(1)
    slow.advance(5)
    one.vm.action("stop", vmid)
    assert state(one, vmid) == (3, 5)  # SAVE_STOP
    slow.advance(2)
    assert state(one, vmid) == (3, 10)  # EPILOG_STOP
    slow.advance(5)
    assert state(one, vmid) == (4, 0) and slow.model.hosts[0].vms == set()
    one.vm.action("resume", vmid)
    assert state(one, vmid) == (1, 0)
    slow.advance(1)
    assert state(one, vmid) == (3, 9)  # PROLOG_RESUME
    slow.advance(2)
    assert state(one, vmid) == (3, 22)  # BOOT_STOPPED
    slow.advance(3)
    assert state(one, vmid) == (3, 3)


def test_hold_release_and_terminate_pending(sim: Sim, one: pyone.OneServer) -> None:
    held = one.vm.allocate(SMALL, True)
    sim.advance()
    assert state(one, held) == (2, 0)
    one.vm.action("release", held)
    assert state(one, held) == (1, 0)
    one.vm.action("hold", held)
    one.vm.action("terminate", held)
    assert state(one, held) == (6, 0)
    assert sim.model.networks[0].leased == {}


@pytest.mark.parametrize("action, setup", [
    ("hold", "running"), ("release", "running"), ("resume", "running"), ("suspend", "pending"),
    ("stop", "pending"), ("poweroff", "pending"), ("undeploy", "held"), ("reboot", "poweroff"),
    ("terminate", "boot"), ("poweroff", "boot"),
])
def test_wrong_state_is_an_action_error(make_sim: Callable[..., Sim], action: str, setup: str) -> None:
    sim = make_sim(delays={"boot": 5})
    one = sim.client()
    vmid = one.vm.allocate(SMALL, setup == "held")
    if setup in ("running", "poweroff"):
        sim.advance()
        sim.advance(5)
    if setup == "poweroff":
        one.vm.action("poweroff", vmid)
        sim.advance()
    if setup == "boot":
        sim.advance()
    before = state(one, vmid)
    with pytest.raises(pyone.OneActionException, match=rf'^\[one.vm.action\] Error performing action "{action}": '
                                                       rf"Could not {action} VM {vmid}, wrong state"):
        one.vm.action(action, vmid)
    assert state(one, vmid) == before


def test_unknown_action_and_missing_vm(sim: Sim, one: pyone.OneServer) -> None:
    vmid = one.vm.allocate(SMALL)
    with pytest.raises(pyone.OneActionException, match='Action "explode" is not supported'):
        one.vm.action("explode", vmid)
    with pytest.raises(pyone.OneNoExistsException, match=r"\[one.vm.action\] Error getting virtual machine \[77\]"):
        one.vm.action("terminate", 77)


def test_recover_operations(make_sim: Callable[..., Sim]) -> None:
    sim = make_sim(delays={"boot": 5})
    one = sim.client()
    vmid = one.vm.allocate(SMALL)
    sim.advance()
    assert state(one, vmid) == (3, 2)  # BOOT
    one.vm.recover(vmid, 0)  # failure
    assert state(one, vmid) == (3, 36)  # BOOT_FAILURE
    one.vm.recover(vmid, 2)  # retry
    assert state(one, vmid) == (3, 2)
    one.vm.recover(vmid, 1)  # success
    assert state(one, vmid) == (3, 3)
    with pytest.raises(pyone.OneActionException, match="not available for state RUNNING"):
        one.vm.recover(vmid, 1)
    one.vm.recover(vmid, 4)  # delete-recreate: same id, PENDING again, keeps its IP
    assert state(one, vmid) == (1, 0) and one.vm.info(vmid).TEMPLATE["NIC"]["IP"] == "127.0.1.1"
    sim.advance()
    sim.advance(5)
    assert state(one, vmid) == (3, 3)
    one.vm.recover(vmid, 3)  # delete
    assert state(one, vmid) == (6, 0)
    other = one.vm.allocate(SMALL)
    one.vm.recover(other, 5)  # delete-db: gone
    with pytest.raises(pyone.OneNoExistsException):
        one.vm.info(other)
    with pytest.raises(pyone.OneApiException):
        one.vm.recover(vmid, 9)


def test_unknown_recovers_and_terminate_from_failure(sim: Sim, one: pyone.OneServer) -> None:
    vmid = one.vm.allocate(SMALL)
    sim.advance()
    sim.handle.api.dispatch("onesim.vm.fail", (sim.handle.auth, vmid, "UNKNOWN"))
    assert state(one, vmid) == (3, 16)
    one.vm.recover(vmid, 1)
    assert state(one, vmid) == (3, 3)
    sim.handle.api.dispatch("onesim.vm.fail", (sim.handle.auth, vmid, "UNKNOWN"))
    one.vm.action("resume", vmid)
    sim.advance()
    assert state(one, vmid) == (3, 3)
    sim.handle.api.dispatch("onesim.vm.fail", (sim.handle.auth, vmid, "BOOT_FAILURE"))
    one.vm.action("terminate", vmid)
    assert state(one, vmid) == (6, 0)


def test_deploy_places_a_held_vm_on_the_chosen_host(sim: Sim, one: pyone.OneServer) -> None:
    vmid = one.vm.allocate(SMALL, True)
    assert one.vm.deploy(vmid, 3) == vmid
    sim.advance()
    vm = one.vm.info(vmid)
    assert (vm.STATE, vm.LCM_STATE, vm.HISTORY_RECORDS.HISTORY[0].HID) == (3, 3, 3)
    with pytest.raises(pyone.OneActionException, match="Deploy action is not available"):
        one.vm.deploy(vmid, 2)


def test_allocate_validation(sim: Sim, one: pyone.OneServer) -> None:
    for text, message in [
        ("CPU = 1", "MEMORY attribute must be a positive integer value."),
        ("CPU = 1\nMEMORY = 0", "MEMORY attribute must be a positive integer value."),
        ("CPU = 1\nMEMORY = 1.5", "MEMORY attribute must be a positive integer value."),
        ("MEMORY = 64", "CPU attribute must be a positive float or integer value."),
        ("CPU = -1\nMEMORY = 64", "CPU attribute must be a positive float or integer value."),
        ("CPU = abc\nMEMORY = 64", "CPU attribute must be a positive float or integer value."),
        ("CPU = 1\nMEMORY = 64\nVCPU = 0", "VCPU attribute must be a positive integer value."),
        ("CPU = 1\nMEMORY = 64\nNIC = [ NETWORK_ID = 9 ]", "Error getting virtual network [9]."),
        ("CPU = 1\nMEMORY = 64\nDISK = [ IMAGE_ID = 9 ]", "Error getting image [9]."),
        ("CPU = 1\nMEMORY = 64\nNIC = [ NETWORK_ID = 0, IP = 10.0.0.1 ]", "Cannot get IP/MAC lease"),
        ("CPU = 1\nMEMORY = [", "Parse error"),
    ]:
        with pytest.raises(pyone.OneException, match=rf"^\[one.vm.allocate\] {message.replace('[', chr(92) + '[')}"):
            one.vm.allocate(text)
    assert sim.model.vms == {} and sim.model.networks[0].leased == {}  # failed allocations leave nothing


def test_leases_are_unique_and_reused_after_done(sim: Sim, one: pyone.OneServer) -> None:
    ids = [one.vm.allocate(SMALL) for _ in range(3)]
    ips = [one.vm.info(i).TEMPLATE["NIC"]["IP"] for i in ids]
    assert ips == ["127.0.1.1", "127.0.1.2", "127.0.1.3"]
    fixed = one.vm.allocate("CPU=1\nMEMORY=8\nNIC = [ NETWORK = \"loopback\", IP = \"127.0.9.9\" ]")
    assert one.vm.info(fixed).TEMPLATE["NIC"]["IP"] == "127.0.9.9"
    with pytest.raises(pyone.OneInternalException, match="lease"):
        one.vm.allocate("CPU=1\nMEMORY=8\nNIC = [ NETWORK_ID = 0, IP = 127.0.1.2 ]")
    one.vm.action("terminate", ids[1])
    again = one.vm.allocate("CPU=1\nMEMORY=8\nNIC = [ NETWORK_ID = 0, IP = 127.0.1.2 ]")
    assert one.vm.info(again).TEMPLATE["NIC"]["IP"] == "127.0.1.2"
