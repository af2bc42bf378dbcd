"""The lifecycle engine's CREATE path driven step by step in-process: real Redis, the in-process simulator
ticked by hand, one FakeClock for both, a recording SSH function. No sleeps: time moves only when told to.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from functions.engine import loop as engine
from functions.model import tokens
from functions.store import envstore, guards, install
from onesim import states as S
from tests.integration.engine_fixtures import FAKE_HOST_KEY, Rig, create_ready, open_rig


@pytest.fixture
def rig(rdb: redis.Redis) -> Iterator[Rig]:
    yield from open_rig(rdb)


def _finished(rig: Rig, envid: str, jobid: str, status: str) -> dict[str, str]:
    """Assert the job ended `status` and the environment let go of it (guard, in-flight set)."""
    job = rig.job(jobid)
    assert job["status"] == status, job
    assert guards.current_op(rig.r, envid) is None
    assert envid not in envstore.inflight(rig.r)
    return job


def test_create_one_master_two_slaves(rig: Rig) -> None:
    envid, jobid = rig.create()
    assert rig.drive(envid) == "wait"
    (intent,) = rig.allocs                                   # the record as it stood when allocate was called
    assert intent["slot"] == "m" and intent["rec"].state == "allocating" and intent["rec"].vmid is None
    master = rig.vms(envid)["m"]
    assert master.state == "allocated" and master.nonce == intent["rec"].nonce and master.vmid is not None
    token = tokens.vm_token(install.callback_secret(rig.r), envid, "m", master.nonce)
    assert rig.sim_vm(master.vmid).context["CARINA_TOKEN"] == token
    assert rig.sim_vm(master.vmid).context["BALANCE_PORT"] == "8080"
    assert rig.env(envid)["phase"] == "master_boot"

    rig.tick()
    assert rig.drive(envid) == "wait"
    master = rig.vms(envid)["m"]
    assert master.state == "running" and master.ip == rig.sim_vm(master.vmid).ip()
    rig.clock.advance(25)                                    # master_setup_time (20 s) passes first ...
    rig.drive(envid)
    assert set(rig.vms(envid)) == {"m"} and rig.env(envid)["phase"] == "master_init"
    assert rig.callback(envid, "m", "MASTER_INIT_DONE") == "applied"   # ... then the callback
    rig.drive(envid)
    vms = rig.vms(envid)
    assert sorted(vms) == ["m", "s0", "s1"] and rig.ssh.calls == []
    for i, slot in enumerate(("s0", "s1")):
        ctx = rig.sim_vm(vms[slot].vmid).context
        assert (ctx["MASTER_IP"], ctx["SLAVE_ID"], ctx["SLAVES"]) == (master.ip, str(i), "2")
        assert ctx["CARINA_SLOT"] == slot and ctx["CARINA_ROLE"] == "slave"

    assert rig.env(envid)["policy_status"] == "INIT"
    rig.tick()
    rig.drive(envid)
    vms = rig.vms(envid)
    assert rig.ssh.commands() == [f"~/master.sh add {vms['s0'].ip} 8080", f"~/master.sh add {vms['s1'].ip} 8080"]
    assert {(c["host"], c["port"], c["user"]) for c in rig.ssh.calls} == {(master.ip, rig.settings.ssh_port, "root")}
    assert [c["known_key"] for c in rig.ssh.calls] == [None, FAKE_HOST_KEY]    # pinned on first contact
    assert [v.state for v in vms.values()] == ["running", "announced", "announced"]
    env = rig.env(envid)
    assert env["policy_status"] == "ACTIVE" and env["app_url"] == f"http://{master.ip}:8080/app"
    job = _finished(rig, envid, jobid, "DONE")
    assert job["info"] == "created: 1 master + 2 slaves"
    events = rig.events(envid)
    ready = events.index(f"environment READY at http://{master.ip}:8080/app")
    assert ready < events.index(f"CREATE job {jobid} DONE: created: 1 master + 2 slaves")
    assert len(rig.allocs) == 3 and len(rig.live(envid)) == 3


def test_setup_time_still_runs_after_an_early_callback(rig: Rig) -> None:
    envid, _ = rig.create()
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    rig.callback(envid, "m", "MASTER_INIT_DONE")             # the callback comes first ...
    rig.drive(envid)
    assert set(rig.vms(envid)) == {"m"} and rig.env(envid)["phase"] == "master_setup"
    rig.clock.advance(19.5)
    rig.drive(envid)
    assert set(rig.vms(envid)) == {"m"}                      # ... but 20 s of setup time are not over
    rig.clock.advance(0.5)
    rig.drive(envid)
    assert sorted(rig.vms(envid)) == ["m", "s0", "s1"]


@pytest.mark.parametrize(("policy", "rank", "hosts"), [
    ("pack", "RUNNING_VMS", {"host0"}), ("stripe", "-RUNNING_VMS", {"host0", "host1", "host2"}),
    ("load", "FREE_CPU", {"host2"}), (None, None, {"host0", "host1", "host2"})])
def test_placement_policy_is_rendered_and_honoured(rig: Rig, policy: str | None, rank: str | None,
                                                   hosts: set[str]) -> None:
    envid, _ = create_ready(rig, placement_policy=policy, master_setup_time=0)
    for alloc in rig.allocs:
        lines = alloc["text"].splitlines()
        expected = [f'SCHED_RANK = "{rank}"', f'RANK = "{rank}"'] if rank else []
        assert [x for x in lines if x.startswith(("SCHED_RANK", "RANK"))] == expected
    placed = {rig.sim_vm(v.vmid).history[-1].hostname for v in rig.vms(envid).values()}
    assert placed == hosts
    for vm in rig.live(envid):
        assert dict(vm.user_template).get("SCHED_RANK") == rank


@pytest.mark.parametrize("status", ["MASTER_INIT_FAIL", "MASTER_INIT_FAIL:disk full"])
def test_master_init_fail_ends_the_create(rig: Rig, status: str) -> None:
    envid, jobid = rig.create()
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    rig.callback(envid, "m", status)
    rig.clock.advance(30)
    assert rig.drive(envid) == "idle"
    job = _finished(rig, envid, jobid, "FAIL")
    assert job["info"] == f"the master reported {status}"
    assert rig.env(envid)["status"] == status and rig.env(envid)["phase"] == "failed"
    assert set(rig.vms(envid)) == {"m"} and len(rig.live(envid)) == 1 and rig.ssh.calls == []


def test_no_callback_before_the_deadline_fails(rig: Rig) -> None:
    envid, jobid = rig.create()
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    rig.clock.advance(599)
    rig.drive(envid)
    assert rig.job(jobid)["status"] == "RUNNING"
    rig.clock.advance(1)
    assert rig.drive(envid) == "idle"
    job = _finished(rig, envid, jobid, "FAIL")
    assert job["info"] == "no MASTER_INIT_DONE callback from the master within 600s (deadline)"
    assert rig.env(envid)["status"] == "CREATE_TIMEOUT"


def test_master_stuck_pending_past_the_deadline_fails(rig: Rig) -> None:
    assert rig.rpc().onesim.host.fill(rig.sim.auth, True)[0]
    envid, jobid = rig.create()
    rig.drive(envid)
    rig.tick(300)
    rig.drive(envid)
    master = rig.vms(envid)["m"]
    vm = rig.sim_vm(master.vmid)
    assert master.state == "allocated" and vm.state == S.PENDING
    assert "No host with enough capacity" in dict(vm.user_template)["SCHED_MESSAGE"]
    env = rig.env(envid)                                     # it says why it waits, once
    assert env["status"] == "PENDING: hosts full" and "No host with enough capacity" in env["info"]
    assert sum("cannot place it" in m for m in rig.events(envid)) == 1
    rig.tick(300)
    rig.drive(envid)
    job = _finished(rig, envid, jobid, "FAIL")
    assert job["info"] == (f"the master VM did not reach RUNNING within 600s (deadline); OpenNebula could not "
                           f"place master VM {master.vmid}: Cannot dispatch VM: No host with enough capacity to "
                           "deploy the VM")
    assert rig.env(envid)["status"] == "CREATE_TIMEOUT"


def test_master_boot_failure_fails_the_create(rig: Rig) -> None:
    with rig.sim.model.lock:
        rig.sim.model.set_delay("boot", 10)
    envid, jobid = rig.create()
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    vmid = rig.vms(envid)["m"].vmid
    assert rig.sim_vm(vmid).lcm == S.BOOT and rig.env(envid)["phase"] == "master_boot"
    assert rig.rpc().onesim.vm.fail(rig.sim.auth, vmid, "BOOT_FAILURE")[0]
    rig.drive(envid)
    job = _finished(rig, envid, jobid, "FAIL")
    assert job["info"] == f"master: VM {vmid} failed to boot (fail)"
    assert rig.env(envid)["status"] == "MASTER_CREATE_FAIL: VM failed"
    assert set(rig.vms(envid)) == {"m"}


def test_template_with_an_unknown_placeholder_fails_naming_it(rig: Rig) -> None:
    envid, jobid = rig.create(master_template="bad")
    rig.drive(envid)
    job = _finished(rig, envid, jobid, "FAIL")
    assert job["info"] == "master: template: unresolved placeholder %FOO%"
    assert "%FOO%" in rig.env(envid)["status"]
    assert rig.vms(envid) == {} and rig.allocs == [] and rig.live(envid) == []


def test_slave_template_error_fails_after_the_master(rig: Rig) -> None:
    envid, jobid = rig.create(slave_template="bad", master_setup_time=0)
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    rig.callback(envid, "m", "MASTER_INIT_DONE")
    rig.drive(envid)
    job = _finished(rig, envid, jobid, "FAIL")
    assert job["info"] == "slave s0: template: unresolved placeholder %FOO%"
    assert set(rig.vms(envid)) == {"m"} and len(rig.live(envid)) == 1


def test_each_step_run_twice_allocates_nothing_twice(rig: Rig) -> None:
    envid, jobid = rig.create(master_setup_time=0)

    def twice() -> None:
        for _ in range(2):
            env = engine.load(rig.r, envid)
            assert env is not None
            engine.dispatch(rig.ctx(), env)

    twice()
    twice()
    assert len(rig.allocs) == 1
    rig.tick()
    twice()
    rig.callback(envid, "m", "MASTER_INIT_DONE")
    twice()
    assert len(rig.allocs) == 3 and len(rig.live(envid)) == 3
    rig.tick()
    twice()
    assert rig.job(jobid)["status"] == "DONE" and len(rig.ssh.calls) == 2
    assert len(rig.live(envid)) == 3


def _forget_vmid(rig: Rig, envid: str, slot: str) -> int:
    """What a worker killed between allocate and recording the id leaves: the intent, no vmid."""
    rec = rig.vms(envid)[slot]
    vmid = rec.vmid
    assert vmid is not None
    rec.vmid, rec.state = None, "allocating"
    envstore.put_vm(rig.r, envid, rec)
    return vmid


def test_crash_after_allocate_adopts_the_tagged_vm(rig: Rig) -> None:
    envid, jobid = rig.create(master_setup_time=0)
    rig.drive(envid)
    lost = _forget_vmid(rig, envid, "m")
    rig.drive(envid)
    assert rig.vms(envid)["m"].vmid == lost and len(rig.allocs) == 1
    assert f"master m: VM {lost} found by its tags after a restart" in rig.events(envid)
    rig.tick()
    rig.drive(envid)
    rig.callback(envid, "m", "MASTER_INIT_DONE")
    rig.drive(envid)
    lost_s1 = _forget_vmid(rig, envid, "s1")
    rig.tick()
    rig.drive(envid)
    assert rig.vms(envid)["s1"].vmid == lost_s1
    _finished(rig, envid, jobid, "DONE")
    assert len(rig.allocs) == 3 and len(rig.live(envid)) == 3


def test_a_duplicate_tagged_vm_is_terminated_on_adoption(rig: Rig) -> None:
    envid, _ = rig.create(master_setup_time=0)
    rig.drive(envid)
    first = _forget_vmid(rig, envid, "m")
    with rig.sim.model.lock:                                 # a retry that allocated again before the crash
        second = len(rig.sim.model.vms)
    assert rig.rpc().one.vm.allocate(rig.sim.auth, rig.allocs[0]["text"], False)[1] == second
    rig.drive(envid)
    assert rig.vms(envid)["m"].vmid == first
    assert rig.sim_vm(second).state == S.DONE and [vm.id for vm in rig.live(envid)] == [first]
