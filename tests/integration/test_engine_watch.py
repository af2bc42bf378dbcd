"""Waiting on OpenNebula costs nothing: a drive that waits for VMs puts its environment in the watch set
instead of polling, and one watcher pass per endpoint (one OpenNebula call for every watched VM) kicks only
the environments whose VMs changed. Driven in-process: real Redis, the in-process simulator ticked by hand,
one FakeClock (tests/integration/engine_fixtures.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from functions.cloud.one import VmView
from functions.engine import vmops, watch
from functions.engine.context import Watch, later
from functions.ops import operations
from functions.ops.callbacks import apply
from functions.store import envstore, keys, watching
from functions.upkeep import reconcile
from onesim import states as S
from tests.integration.engine_fixtures import SERVICE, Rig, create_ready, open_rig


@pytest.fixture
def rig(rdb: redis.Redis) -> Iterator[Rig]:
    yield from open_rig(rdb)


def _entry(rig: Rig, envid: str) -> watching.Entry | None:
    raw = watching.watched(rig.r).get(envid)
    return None if raw is None else watching.Entry.from_json(raw)


def test_a_booting_master_is_watched_not_polled(rig: Rig) -> None:
    envid, jobid = rig.create()
    assert rig.drive(envid) == "wait"
    master = rig.vms(envid)["m"]
    entry = _entry(rig, envid)
    assert entry is not None and entry.vms == {master.vmid: "1.0"}          # PENDING, as the step saw it
    assert (entry.service, entry.endpoint, entry.proxy) == (SERVICE, "sim", rig.sim.url)
    assert rig.queue.get_jobs() == []                                       # no drive queued to poll it
    due = rig.r.zscore(keys.kick_schedule(), envid)                         # only the create's deadline
    assert due is not None and due > time.time() + 590

    assert rig.watch() == []                                                # nothing changed: nobody woken
    assert _entry(rig, envid) is not None
    rig.tick(1)                                                             # placed and RUNNING
    assert rig.watch() == [envid]
    assert _entry(rig, envid) is None                                       # taken out when woken
    assert rig.watch() == []                                                # woken once
    assert rig.info_calls == []                                             # never asked about it alone
    rig.drive(envid)                                                        # acts on what the watcher saw:
    assert rig.info_calls == []                                             # no second call
    assert rig.vms(envid)["m"].state == "running" and rig.env(envid)["phase"] == "master_init"
    assert _entry(rig, envid) is None                                       # a callback wait is no watch
    assert rig.job(jobid)["status"] == "RUNNING"


def test_a_vm_that_called_back_is_running_without_asking_opennebula(rig: Rig) -> None:
    envid, _ = rig.create(num_slaves=0, master_setup_time=0)
    rig.drive(envid)
    rig.tick()                                                              # boots, and calls back first
    vmid = rig.vms(envid)["m"].vmid
    ip = rig.sim_vm(vmid).ip()
    assert apply(rig.r, rig.queue, envid, vmid, "net", {"newip": ip, "name": "web-m"}, rig.clock, "m") == "applied"
    rig.callback(envid, "m", "MASTER_INIT_DONE")
    rig.drive(envid)
    assert rig.info_calls == [] and rig.pool_calls == []                    # its callbacks were proof enough
    assert rig.env(envid)["policy_status"] == "ACTIVE" and rig.vms(envid)["m"].ip == ip
    assert f"master m: VM {vmid} RUNNING at {ip} (it called back)" in rig.events(envid)


def test_one_call_per_endpoint_for_every_waiting_environment(rig: Rig) -> None:
    envids = [rig.create(num_slaves=0)[0] for _ in range(6)]
    for envid in envids:
        rig.drive(envid)
    vmids = sorted(rig.vms(e)["m"].vmid for e in envids)
    rig.pool_calls.clear()
    assert rig.watch() == []
    assert rig.pool_calls == [vmids]                                        # ONE call for all six
    rig.tick(1)                                                             # all placed in one sim tick
    assert rig.watch() == envids
    assert rig.pool_calls == [vmids, vmids]
    for envid in envids:
        rig.drive(envid)
    assert watching.watched(rig.r) == {}


def test_a_drive_supersedes_its_watch_and_a_stale_entry_is_not_taken(rig: Rig) -> None:
    envid, _ = rig.create()
    rig.drive(envid)
    raw = watching.watched(rig.r)[envid]
    rig.clock.advance(1)
    rig.drive(envid)                                                        # e.g. the minute tick's re-drive
    newer = watching.watched(rig.r)[envid]
    assert newer != raw                                                     # a fresh entry (newer `since`)
    assert watching.take(rig.r, envid, raw) is False                        # a pass that read the old one
    assert watching.take(rig.r, envid, newer) is True


def test_an_unplaceable_master_says_why_once_and_fails_at_its_deadline(rig: Rig) -> None:
    assert rig.rpc().onesim.host.fill(rig.sim.auth, True)[0]
    envid, jobid = rig.create()
    rig.drive(envid)
    rig.tick()                                                              # the scheduler cannot place it
    assert rig.watch() == [envid]                                           # its SCHED_MESSAGE is a change
    rig.drive(envid)
    env = rig.env(envid)
    vmid = rig.vms(envid)["m"].vmid
    assert env["status"] == "PENDING: hosts full" and env["policy_status"] == "INIT"
    assert env["info"] == (f"waiting for OpenNebula to place master VM {vmid}: Cannot dispatch VM: No host with "
                           "enough capacity to deploy the VM")
    waits = [e for e in envstore.list_events(rig.r, envid) if e["type"] == "wait"]
    assert [e["msg"] for e in waits] == [f"master m: VM {vmid} is PENDING, OpenNebula cannot place it: Cannot "
                                         "dispatch VM: No host with enough capacity to deploy the VM"]
    for _ in range(3):                                                      # the scheduler retries: same message
        rig.tick(20)
        assert rig.watch() == []
    assert rig.r.zscore(keys.kick_schedule(), envid) is not None            # the deadline still applies
    rig.tick(600)
    rig.drive(envid)
    job = rig.job(jobid)
    assert job["status"] == "FAIL" and "OpenNebula could not place master VM" in job["info"]
    assert rig.env(envid)["status"] == "CREATE_TIMEOUT" and _entry(rig, envid) is None
    assert rig.r.zscore(keys.kick_schedule(), envid) is None               # no stray wake-up once ended


def test_a_master_placed_after_waiting_goes_back_to_init_and_on(rig: Rig) -> None:
    assert rig.rpc().onesim.host.fill(rig.sim.auth, True)[0]
    envid, _ = rig.create()
    rig.drive(envid)
    rig.tick()
    rig.watch()
    rig.drive(envid)
    assert rig.env(envid)["status"] == "PENDING: hosts full"
    assert rig.rpc().onesim.host.fill(rig.sim.auth, False)[0]
    rig.tick()                                                              # room again: placed and RUNNING
    assert rig.watch() == [envid]
    rig.drive(envid)
    env = rig.env(envid)
    assert env["status"] == "INIT" and env["info"] == "" and rig.vms(envid)["m"].state == "running"
    assert any("placed by OpenNebula after waiting" in m for m in rig.events(envid))


def test_remove_watches_its_vms_going_away(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0)
    vmids = sorted(v.vmid for v in rig.vms(envid).values())
    operations.request_remove(rig.r, rig.queue, SERVICE, envid, rig.clock)
    rig.drive(envid)
    entry = _entry(rig, envid)
    assert entry is not None and entry.vms == {v: "going" for v in vmids}
    assert {rig.sim_vm(v).state for v in vmids} == {S.ACTIVE}                 # shutting down, not DONE yet
    assert rig.watch() == []                                                # shutting down: no news
    rig.tick(1)                                                             # DONE
    assert rig.watch() == [envid]
    rig.drive(envid)
    assert envstore.get_env(rig.r, envid) is None and watching.watched(rig.r) == {}


def test_the_minute_tick_leaves_watched_environments_to_the_watcher(rig: Rig) -> None:
    waiting, _ = rig.create()
    rig.drive(waiting)
    other, _ = rig.create()                                                 # in flight, not waiting on VMs
    rig.queue.empty()                                                       # the create's kicks got lost
    assert reconcile.recover_all(rig.r, rig.queue, rig.clock, minute=True) == [other]
    assert reconcile.recover_all(rig.r, rig.queue, rig.clock, minute=True) == []   # its drive is queued
    assert sorted(reconcile.recover_all(rig.r, rig.queue, rig.clock), key=int) == [waiting, other]  # restart


def test_a_long_quiet_wait_is_rechecked_by_one_drive(rig: Rig) -> None:
    assert rig.rpc().onesim.host.fill(rig.sim.auth, True)[0]
    envid, _ = rig.create()
    rig.drive(envid)
    assert rig.watch() == []
    rig.clock.advance(watch.RECHECK + 1)                                    # a safety net
    assert rig.watch() == [envid]


def test_a_long_wait_is_looked_at_less_and_less_often(rig: Rig) -> None:
    assert rig.rpc().onesim.host.fill(rig.sim.auth, True)[0]
    envid, _ = rig.create()
    rig.drive(envid)
    rig.tick()
    rig.watch()
    rig.drive(envid)                                                        # now waiting with its reason
    looks = []
    for _ in range(240):                                                    # four minutes, a second at a time
        rig.clock.advance(1)
        before = len(rig.pool_calls)
        assert rig.watch() == []
        looks.append(len(rig.pool_calls) - before)
    assert sum(looks[:20]) >= 10 and sum(looks[-60:]) <= 60 / watching.ENV_MAX_INTERVAL + 1
    assert watching.backoff(0) == watching.MIN_INTERVAL and watching.backoff(1e6) == watching.ENV_MAX_INTERVAL


def test_a_malformed_entry_wakes_its_environment(rig: Rig) -> None:
    envid, _ = rig.create()
    rig.drive(envid)
    rig.r.hset(keys.watch(), envid, json.dumps({"vms": "?"}))
    assert rig.watch() == [envid] and watching.watched(rig.r) == {}


# ---------------------------------------------------------------- the watcher's schedule


def test_passes_are_leased_one_at_a_time_and_come_when_something_is_due(rdb: redis.Redis) -> None:
    now = 1_000.0
    assert watching.take_pass(rdb, now) is False                            # nothing watched: no pass
    watching.add(rdb, "7", watching.Entry("svc", "ep", "http://x/RPC2", {1: "1.0"}), now=now)
    assert watching.take_pass(rdb, now) is False                            # due MIN_INTERVAL later
    assert watching.take_pass(rdb, now + watching.MIN_INTERVAL) is True
    assert watching.take_pass(rdb, now + 5) is False                        # leased to the first taker
    assert watching.next_pass(rdb, 60.0, now=now + 1) == watching.MAX_INTERVAL    # bounded both ways
    assert watching.next_pass(rdb, 0.0, now=now + 1) == watching.MIN_INTERVAL
    assert watching.take_pass(rdb, now + 1.4) is False
    assert watching.take_pass(rdb, now + 1.5) is True                       # the earliest due time was kept
    watching.add(rdb, "8", watching.Entry("svc", "ep", "http://x/RPC2", {2: "1.0"}), now=now + 10)
    assert watching.take_pass(rdb, now + 10 + watching.MIN_INTERVAL) is True   # a new entry brings it forward
    assert watching.take_pass(rdb, now + 10 + watching.PASS_LEASE + 1) is True  # a lost pass comes back


def test_a_second_pass_while_one_runs_does_nothing(rdb: redis.Redis) -> None:
    with watching.pass_lock(rdb) as got:
        assert got
        assert watch.run(rdb, None) is None                                 # type: ignore[arg-type]
    with watching.pass_lock(rdb) as got:
        assert got                                                          # released after the pass


# ---------------------------------------------------------------- combining the waits of one step (pure)


def test_later_combines_delays_and_watches() -> None:
    assert later(None, None) is None
    assert later(2.0, None, 5.0) == 2.0
    assert later(Watch({1: "a"}), 0.0) == 0.0                               # something to do now wins
    assert later(Watch({1: "a"}), Watch({2: "b"}, 9.0), 2.0) == Watch({1: "a", 2: "b"}, 2.0)
    assert later(Watch({1: "a"}), None) == Watch({1: "a"}, None)


def _view(state: int, lcm: int = 0, msg: str = "") -> VmView:
    return VmView(vmid=9, name="n", state=state, lcm_state=lcm, ip=None, host=None, cpu=None,
                  user_template={"SCHED_MESSAGE": msg} if msg else {})


def test_watch_states_notice_what_matters() -> None:
    assert vmops.watch_state(_view(1)) == vmops.NEW_VM == "1.0"
    assert vmops.watch_state(_view(1, msg="Cannot dispatch VM: full")) == "1.0 Cannot dispatch VM: full"
    assert vmops.watch_state(_view(6)) == vmops.watch_state(None) == "gone"
    assert vmops.changed("1.0", _view(3, 3)) and not vmops.changed("3.2", _view(3, 2))
    going = vmops.going_state(_view(3, 12))                                 # shutting down
    assert going == vmops.GOING and not vmops.changed(going, _view(3, 11))  # epilog: still going, no news
    assert vmops.changed(going, _view(6)) and vmops.changed(going, None)    # gone
    assert vmops.changed(going, _view(3, 16))                               # UNKNOWN: terminate it harder
    assert vmops.pending_status("No host with enough capacity") == "PENDING: hosts full"
    assert vmops.pending_status("No host meets SCHED_REQUIREMENTS") == "PENDING: no host fits"
    assert all(len(vmops.pending_status(m)) <= 21 for m in ("capacity", "requirements", "other"))  # D_STATUS
