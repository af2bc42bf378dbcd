"""The availability policy's RECREATE: faults injected through onesim's XML-RPC fault methods, noticed by the
minute tick, replaced in place by the engine (real Redis, in-process simulator, one FakeClock)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from functions.engine import loop as engine
from functions.engine import vmops
from functions.store import envstore, guards, keys, watching
from onesim import states as S
from tests.integration.engine_fixtures import Rig, SpyOne, create_ready, open_rig
from tests.integration.policy_fixtures import env_doc, fail_vm, minute, policy_jobs, settle

RECREATE = {"period": 2, "recreate_expr": "nummissing > 0 || numunknown > 0 || numfailed > 0"}


@pytest.fixture
def rig(rdb: redis.Redis) -> Iterator[Rig]:
    yield from open_rig(rdb)


def _ready(rig: Rig, **over: object) -> str:
    envid, _ = create_ready(rig, master_setup_time=0, availability_policy=RECREATE, **over)
    minute(rig)
    minute(rig)                                          # past the boot grace (120 s)
    return envid


@pytest.mark.parametrize("kind", ["UNKNOWN", "BOOT_FAILURE", "vanish"])
def test_a_broken_slave_is_replaced_in_its_slot_and_re_announced(rig: Rig, kind: str) -> None:
    envid = _ready(rig)
    old = rig.vms(envid)["s1"]
    fail_vm(rig, old.vmid, kind)
    minute(rig)
    assert rig.env(envid)["info"] == "AVAIL_POLICY_STATUS: Detected missing or unhealthy VM counter=1 period=2"
    assert guards.current_op(rig.r, envid) is None
    minute(rig)
    assert rig.env(envid)["info"] == "AVAIL_POLICY_STATUS: Recreating VM s1"
    settle(rig, envid)
    new = rig.vms(envid)["s1"]
    assert new.vmid != old.vmid and new.nonce != old.nonce and new.state == "announced" and new.index == 1
    assert rig.sim_vm(new.vmid).context["CARINA_SLOT"] == "s1" and rig.running(new.vmid)
    assert rig.ssh.commands()[-2:] == [f"~/master.sh remove {old.ip} 8080", f"~/master.sh add {new.ip} 8080"]
    assert kind == "vanish" or rig.sim_vm(old.vmid).state == S.DONE
    assert len(rig.live(envid)) == 3 and sorted(rig.vms(envid)) == ["m", "s0", "s1"]
    (job,) = policy_jobs(rig, envid)
    assert (job["type"], job["status"], job["source"], job["slots"]) == ("RECREATE", "DONE", "availability", ["s1"])
    assert job["info"] == "recreated s1"
    events = rig.events(envid)
    assert any(m.startswith(f"RECREATE of s1 requested by the availability policy (job {job['jobid']}): s1 VM "
                            f"{old.vmid}") for m in events)
    assert f"slave s1: old VM {old.vmid} gone, creating its replacement" in events
    minute(rig)
    minute(rig)
    assert len(policy_jobs(rig, envid)) == 1             # the new VM is inside its boot grace, then fine
    assert env_doc(rig, envid)["info"] == "recreated s1"              # the job's outcome; no policy message


def test_a_vm_failing_inside_the_boot_grace_is_not_judged_yet(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, availability_policy=RECREATE)
    fail_vm(rig, rig.vms(envid)["s0"].vmid, "UNKNOWN")
    minute(rig)                                          # 60 s old: starting, not unknown
    assert rig.env(envid)["info"] == "created: 1 master + 2 slaves"           # no policy message
    assert rig.vms(envid)["s0"].one_state == "unkn"
    minute(rig)
    assert rig.env(envid)["info"] == "AVAIL_POLICY_STATUS: Detected missing or unhealthy VM counter=1 period=2"


def test_a_lost_master_is_replaced_first_then_the_slaves(rig: Rig) -> None:
    envid = _ready(rig)
    old = rig.vms(envid)
    fail_vm(rig, old["m"].vmid, "UNKNOWN")
    fail_vm(rig, old["s0"].vmid, "vanish")
    minute(rig)
    minute(rig)
    (job,) = policy_jobs(rig, envid)
    assert job["slots"] == ["m"]                         # the master alone, first
    settle(rig, envid, until="master_init")              # the new master waits for its MASTER_INIT_DONE
    master = rig.vms(envid)["m"]
    assert master.vmid != old["m"].vmid and rig.running(master.vmid) and rig.env(envid)["phase"] == "master_init"
    assert rig.callback(envid, "m", "MASTER_INIT_DONE") == "applied"
    settle(rig, envid)
    assert rig.job(job["jobid"])["status"] == "DONE"
    assert rig.ssh.calls[-1]["host"] == master.ip
    assert rig.ssh.commands()[-1] == f"~/master.sh add {old['s1'].ip} 8080"   # the running slave, re-announced
    assert rig.env(envid)["app_url"] == f"http://{master.ip}:8080/app"
    minute(rig)
    minute(rig)
    jobs = policy_jobs(rig, envid)
    assert [j["slots"] for j in jobs] == [["m"], ["s0"]]
    settle(rig, envid)
    s0 = rig.vms(envid)["s0"]
    assert rig.ssh.commands()[-2:] == [f"~/master.sh remove {old['s0'].ip} 8080", f"~/master.sh add {s0.ip} 8080"]
    assert {c["host"] for c in rig.ssh.calls[-2:]} == {master.ip}
    assert len(rig.live(envid)) == 3 and rig.job(jobs[1]["jobid"])["status"] == "DONE"


def test_a_worker_killed_mid_recreate_converges_without_a_duplicate(rig: Rig) -> None:
    envid = _ready(rig)
    old = rig.vms(envid)["s0"]
    fail_vm(rig, old.vmid, "BOOT_FAILURE")
    minute(rig)
    minute(rig)
    allocs = len(rig.allocs)
    for _ in range(5):                                   # old VM terminated, gone; new intent, allocated
        rig.drive(envid)
        if len(rig.allocs) > allocs:
            break
        rig.tick(2.0)
    assert len(rig.allocs) == allocs + 1 and rig.sim_vm(old.vmid).state == S.DONE
    intent = rig.allocs[-1]["rec"]
    assert intent.slot == "s0" and intent.vmid is None and intent.nonce != old.nonce
    new = rig.vms(envid)["s0"]
    new.vmid, new.state = None, "allocating"             # killed before the VM id was recorded
    envstore.put_vm(rig.r, envid, new)
    settle(rig, envid)
    rec = rig.vms(envid)["s0"]
    assert rec.vmid == rig.allocs[-1]["vmid"] and len(rig.allocs) == allocs + 1   # adopted by its tags
    assert f"slave s0: VM {rec.vmid} found by its tags after a restart" in rig.events(envid)
    assert len(rig.live(envid)) == 3 and rec.state == "announced"


class Killed(BaseException):
    """The worker process dies (nothing catches it, unlike an error)."""


class DiesOnAllocate(SpyOne):
    def allocate(self, template: str) -> int:
        raise Killed


def test_a_worker_killed_before_allocate_converges(rig: Rig) -> None:
    envid = _ready(rig)
    old = rig.vms(envid)["s0"]
    fail_vm(rig, old.vmid, "vanish")
    minute(rig)
    minute(rig)
    ctx = rig.ctx()
    ctx.one_factory = lambda url, auth: DiesOnAllocate(url, auth, rig)
    with pytest.raises(Killed):
        engine.step(ctx, envid)
    intent = rig.vms(envid)["s0"]
    assert intent.vmid is None and intent.state == "allocating" and intent.nonce != old.nonce
    settle(rig, envid)
    rec = rig.vms(envid)["s0"]
    assert rec.nonce == intent.nonce and rec.state == "announced" and len(rig.live(envid)) == 3
    assert [a["slot"] for a in rig.allocs].count("s0") == 2       # the create's, then the replacement's, once


def test_a_vm_running_again_is_kept(rig: Rig) -> None:
    envid = _ready(rig)
    old = rig.vms(envid)["s0"]
    fail_vm(rig, old.vmid, "UNKNOWN")
    minute(rig)
    minute(rig)
    assert rig.rpc().one.vm.action(rig.sim.auth, "resume", old.vmid)[0]          # the host came back
    rig.tick()
    settle(rig, envid)
    assert rig.vms(envid)["s0"].vmid == old.vmid and rig.running(old.vmid)
    assert policy_jobs(rig, envid)[0]["info"] == "nothing recreated (s0 runs again, kept)"


def _watched(rig: Rig, envid: str) -> dict[int, str] | None:
    raw = watching.watched(rig.r).get(envid)
    return None if raw is None else dict(watching.Entry.from_json(raw).vms)


def _no_timed_redrive(rig: Rig, envid: str) -> None:
    """Nothing polls the environment: no drive job queued, no delayed kick before the operation's deadline."""
    assert rig.queue.get_jobs() == []
    due = rig.r.zscore(keys.kick_schedule(), envid)
    assert due is None or due >= float(rig.env(envid)["deadline"]), (due, rig.env(envid)["deadline"])


def test_a_recreate_waits_on_the_watcher_not_a_timed_poll(rig: Rig) -> None:
    """Issue #15 for RECREATE: while the old VM goes away and while its replacement boots, the drive leaves the
    environment in the watch set, and a watcher pass that sees the VM change wakes it."""
    envid = _ready(rig)
    old = rig.vms(envid)["s1"]
    fail_vm(rig, old.vmid, "UNKNOWN")
    minute(rig)
    minute(rig)
    (job,) = policy_jobs(rig, envid)
    assert rig.drive(envid) == "wait"                     # `remove` told to the master, the old VM terminated
    assert _watched(rig, envid) == {old.vmid: "3.16"}     # as the step saw it: ACTIVE/UNKNOWN
    _no_timed_redrive(rig, envid)
    assert rig.watch() == [envid]                         # OpenNebula took the terminate (EPILOG): a change
    assert rig.drive(envid) == "wait"
    assert _watched(rig, envid) == {old.vmid: vmops.GOING}
    assert rig.watch() == []                              # still shutting down: nobody woken
    rig.tick(1)                                           # DONE
    assert rig.watch() == [envid]
    rig.info_calls.clear()
    assert rig.drive(envid) == "wait"                     # the replacement allocated, PENDING
    new = rig.vms(envid)["s1"]
    assert new.vmid != old.vmid and _watched(rig, envid) == {new.vmid: vmops.NEW_VM}
    assert new.vmid not in rig.info_calls                 # just allocated: nothing to ask
    _no_timed_redrive(rig, envid)
    assert rig.watch() == []
    rig.tick(1)                                           # placed and RUNNING
    assert rig.watch() == [envid]
    rig.drive(envid)
    new = rig.vms(envid)["s1"]
    assert rig.job(job["jobid"])["status"] == "DONE" and new.state == "announced"
    assert watching.watched(rig.r) == {}
    assert rig.ssh.commands()[-2:] == [f"~/master.sh remove {old.ip} 8080", f"~/master.sh add {new.ip} 8080"]
    assert not [e for e in rig.events(envid) if "refused to terminate" in e]   # not asked again in EPILOG
