"""Callbacks applied in batches (functions.ops.cbinbox) on a real redis-server through the real gateway app: order
within an environment, a callback arriving at any point of a drain, a drain killed at any of its Redis commands,
a gateway dying before it queued the drain, a busy env lock, and jobs queued under the old apply_callback."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from functions.model.cbfold import Entry, fold_batch
from functions.model.clock import FakeClock
from functions.ops import callbacks, cbinbox
from functions.store import envstore, guards, keys, runtime
from functions.store.envstore import VmRecord
from functions.store.runtime import JsonJob
from tests.api.test_callbacks import _queue, _queued, _run_queue, make_world
from tests.api.test_request_atomicity import FaultyRedis, Injected


@pytest.fixture
def world(api, redis_server, monkeypatch):
    """test_callbacks' world: env E of svc1, master vmid 7 and slave s0 vmid 8, their tokens in world.tok."""
    return make_world(api, redis_server, monkeypatch)


def _status(world: Any, vmid: int, status: str) -> str:
    res = world.client.simulate_get(f"/cgi-bin/updateappstatus.sh?vmid={vmid}&envid={world.envid}&status={status}"
                                    f"&token={world.tok[vmid]}")
    assert res.status_code == 200, res.text
    return res.text


def _net(world: Any, vmid: int, ip: str) -> None:
    res = world.client.simulate_get(f"/cgi-bin/updatevmstatus.sh?vmid={vmid}&envid={world.envid}&newip={ip}"
                                    f"&name=h{vmid}&token={world.tok[vmid]}")
    assert res.status_code == 200, res.text


def _callback_events(r: redis.Redis, envid: str) -> list[str]:
    return [e["msg"] for e in envstore.list_events(r, envid) if e["type"] == "callback"]


def test_callbacks_of_one_env_are_applied_in_order_by_one_drain(world, monkeypatch):
    monkeypatch.setattr(cbinbox, "BATCH", 3)                     # several batches in one drain
    e = world.envid
    _net(world, 8, "10.0.0.8")
    for i in range(6):
        _status(world, 8, f"APP_{i}")
    _net(world, 7, "10.0.0.7")
    _status(world, 7, "MASTER_INIT_DONE")
    queued = _queued(world.r)
    assert [a[3] for _, a in queued[:9]] == [{"newip": "10.0.0.8", "name": "h8"}] + [
        {"status": f"APP_{i}"} for i in range(6)] + [{"newip": "10.0.0.7", "name": "h7"},
                                                    {"status": "MASTER_INIT_DONE"}]
    cq = runtime.sibling(_queue(world.r), runtime.CALLBACKS)
    assert cq.count == 1                                          # one drain job for nine callbacks
    assert cbinbox.drain(world.r, _queue(world.r), e, world.clock) == "drained 9"
    vms = envstore.get_vms(world.r, e)
    assert (vms["s0"].ip, vms["s0"].status, vms["m"].ip, vms["m"].status, vms["m"].init) == (
        "10.0.0.8", "APP_5", "10.0.0.7", "MASTER_INIT_DONE", "done")
    assert envstore.get_env(world.r, e)["status"] == "MASTER_INIT_DONE"
    assert _callback_events(world.r, e) == ["VM 8 (s0) newip=10.0.0.8"] + [
        f"VM 8 (s0) status=APP_{i}" for i in range(6)] + ["VM 7 (m) newip=10.0.0.7", "VM 7 (m) status=MASTER_INIT_DONE"]
    assert world.r.zscore(keys.callback_drains(), e) is None and world.r.llen(keys.callback_inbox(e)) == 0
    assert [a for f, a in _queued(world.r) if f == "functions.tasks.drive"] == [[e]]    # MASTER_INIT_* kicks
    _status(world, 8, "APP_AFTER")                               # the next callback queues a new drain
    assert cq.count == 2


def _ingest(world: Any, vmid: int, status: str) -> None:
    """What the gateway does for a status callback (on the test's own client): ingest, and queue a drain if asked."""
    rec = envstore.vm_by_id(world.r, world.envid, vmid)
    caller = callbacks.Caller(slot=rec.slot, role=rec.role, nonce=rec.nonce, by_token=True)
    gate = callbacks.ingest(world.r, world.envid, caller, vmid, "status", {"status": status}, world.clock(), 600, 100)
    assert gate.verdict == "queue"
    if gate.drain:
        cbinbox.enqueue_drain(_queue(world.r), world.envid)


def _drain_until_idle(world: Any) -> None:
    """Run queued drains (and pumped ones) until no drain is pending."""
    for _ in range(20):
        _run_queue(world.r)
        if not world.r.zcard(keys.callback_drains()):
            return
        world.r.delete(keys.env_lock(world.envid))               # a killed holder's lock: its TTL ran out
        callbacks.pump_retries(_queue(world.r), now=2e9)          # the lease ran out
    raise AssertionError("drains never settled")


class ArrivingRedis(FaultyRedis):
    """At its `fail_at`-th command a callback arrives through the gateway (instead of an injected failure)."""

    arrive: Any = None

    def tick(self) -> None:
        self.count += 1
        if self.count == self.fail_at:
            self.arrive()


def test_a_callback_arriving_at_any_point_of_a_drain_is_applied(world, monkeypatch):
    monkeypatch.setattr(cbinbox, "BATCH", 2)
    e = world.envid
    for point in range(1, 60):
        world.r.delete(keys.callback_inbox(e), keys.callback_drains(), *world.r.keys("carina:env:*:cbgate:*"))
        for q in runtime.worker_queues(_queue(world.r)):
            q.empty()
        for i in range(3):
            _ingest(world, 8, f"P{point}_{i}")
        r = ArrivingRedis(connection_pool=world.r.connection_pool)
        r.fail_at, r.arrive = point, lambda p=point: _ingest(world, 8, f"P{p}_LATE")
        cbinbox.drain(r, _queue(world.r), e, world.clock)
        assert world.r.llen(keys.callback_inbox(e)) == 0 or world.r.zscore(keys.callback_drains(), e) is not None
        _drain_until_idle(world)
        late = r.count >= point
        assert envstore.get_vms(world.r, e)["s0"].status == (f"P{point}_LATE" if late else f"P{point}_2")
        expected = [f"VM 8 (s0) status=P{point}_{i}" for i in range(3)] + ([f"VM 8 (s0) status=P{point}_LATE"]
                                                                           if late else [])
        assert [m for m in _callback_events(world.r, e) if f"=P{point}_" in m] == expected
        if not late:
            return
    raise AssertionError("the drain never completed")


def test_a_drain_killed_at_any_command_loses_nothing_and_applies_each_callback_once(world, monkeypatch):
    """Each batch is written with its removal from the inbox in one script: whatever command fails, what was
    committed is gone from the inbox and what was not stays there; the drain the pump brings back (lease run out)
    applies the rest, so every callback is applied exactly once, in order (one event each)."""
    monkeypatch.setattr(cbinbox, "BATCH", 2)
    e = world.envid
    points = 0
    for point in range(1, 80):
        world.r.delete(keys.callback_inbox(e), keys.callback_drains(), keys.env_events(e),
                       *world.r.keys("carina:env:*:cbgate:*"))
        for q in runtime.worker_queues(_queue(world.r)):
            q.empty()
        for i in range(5):
            _ingest(world, 8 if i % 2 else 7, f"K{point}_{i}")
        r = FaultyRedis(connection_pool=world.r.connection_pool)
        r.fail_at = point
        try:
            cbinbox.drain(r, _queue(world.r), e, world.clock)
        except Injected:
            points += 1
            # the pump will bring the drain back, unless it failed only after finishing (releasing its lock)
            assert world.r.zscore(keys.callback_drains(), e) is not None or world.r.llen(keys.callback_inbox(e)) == 0
            _drain_until_idle(world)
            vms = envstore.get_vms(world.r, e)
            assert (vms["m"].status, vms["s0"].status) == (f"K{point}_4", f"K{point}_3")
            assert _callback_events(world.r, e) == [
                f"VM {8 if i % 2 else 7} ({'s0' if i % 2 else 'm'}) status=K{point}_{i}" for i in range(5)]
            assert world.r.llen(keys.callback_inbox(e)) == 0
            continue
        assert points >= 5                                        # every command of a 3-batch drain was hit
        return
    raise AssertionError("the drain never completed")


def test_a_gateway_dying_before_it_queued_the_drain_loses_nothing(world):
    rec = envstore.vm_by_id(world.r, world.envid, 8)
    caller = callbacks.Caller(slot="s0", role="slave", nonce=rec.nonce, by_token=True)
    gate = callbacks.ingest(world.r, world.envid, caller, 8, "status", {"status": "LOST?"}, world.clock(), 60, 20)
    assert gate.drain                                            # ... and the gateway died before enqueue_drain
    assert callbacks.pump_retries(_queue(world.r)) == 0           # leased: not before DRAIN_LEASE seconds
    lease = world.r.zscore(keys.callback_drains(), world.envid)
    assert callbacks.pump_retries(_queue(world.r), now=lease + 0.1) == 1
    _run_queue(world.r)
    assert envstore.get_vms(world.r, world.envid)["s0"].status == "LOST?"
    assert world.r.zscore(keys.callback_drains(), world.envid) is None


def test_a_busy_env_lock_retries_the_drain_soon_without_a_job_per_callback(world):
    e = world.envid
    _status(world, 8, "B1")
    with guards.env_lock(world.r, e) as held:
        assert held
        _status(world, 8, "B2")
        assert cbinbox.drain(world.r, _queue(world.r), e, world.clock) == "retry"
        due = world.r.zscore(keys.callback_drains(), e)
        assert due is not None and due < time.time() + cbinbox.RETRY_MAX + 0.5   # soon, not after the lease
    cq = runtime.sibling(_queue(world.r), runtime.CALLBACKS)
    cq.empty()
    assert callbacks.pump_retries(_queue(world.r), now=due + 0.01) == 1 and cq.count == 1
    _run_queue(world.r)
    assert envstore.get_vms(world.r, e)["s0"].status == "B2"
    assert _callback_events(world.r, e) == ["VM 8 (s0) status=B1", "VM 8 (s0) status=B2"]


def test_jobs_queued_under_the_old_apply_callback_still_run(world):
    e = world.envid
    cq = runtime.sibling(_queue(world.r), runtime.CALLBACKS)
    cq.enqueue("functions.tasks.apply_callback", e, 8, "status", {"status": "OLD1"}, "s0", 0)
    cq.enqueue("functions.callbacks.apply_callback", e, 7, "net", {"newip": "10.0.0.7"}, "m", 0)
    qs = runtime.worker_queues(_queue(world.r))                   # as worker.py runs them (JsonJob: renamed tasks)
    SimpleWorker(qs, connection=qs[0].connection, serializer=JSONSerializer, job_class=JsonJob).work(burst=True)
    vms = envstore.get_vms(world.r, e)
    assert (vms["s0"].status, vms["m"].ip) == ("OLD1", "10.0.0.7")


def test_a_deleted_environment_drops_its_inbox(world):
    _status(world, 8, "X")
    envstore.delete_env(world.r, world.envid)
    assert cbinbox.drain(world.r, _queue(world.r), world.envid, world.clock) == "gone"
    assert world.r.llen(keys.callback_inbox(world.envid)) == 0
    assert world.r.zscore(keys.callback_drains(), world.envid) is None


_CALLBACK = st.one_of(
    st.tuples(st.sampled_from([7, 8, 99]), st.just("status"),
              st.fixed_dictionaries({"status": st.sampled_from(["A", "MASTER_INIT_DONE", "SLAVE_0_INIT_FAIL:x",
                                                                "MASTER_INIT_FAIL", "SLAVE_0_INIT_DONE"])})),
    st.tuples(st.sampled_from([7, 8]), st.just("net"),
              st.fixed_dictionaries({"newip": st.sampled_from(["10.0.0.1", "10.0.0.2"])},
                                    optional={"name": st.sampled_from(["a", "b"]),
                                              "hostkey": st.sampled_from(["ssh-ed25519 K1", "ssh-ed25519 K2"])})))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(calls=st.lists(_CALLBACK, max_size=12))
def test_a_folded_batch_equals_the_callbacks_applied_one_at_a_time(rdb, calls):
    """fold_batch (the drain) and callbacks.apply (one job per callback) give the same records and env status."""
    rdb.flushall()
    clock, q = FakeClock(), _queue(rdb)
    results = []
    for batched in (False, True):
        envid, _ = envstore.create_env(rdb, "svc", "t", {"endpoint": "onesim"}, "CREATE", clock)
        for rec in (VmRecord(slot="m", role="master", index=0, endpoint="onesim", vmid=7, nonce="n1"),
                    VmRecord(slot="s0", role="slave", index=0, endpoint="onesim", vmid=8, nonce="n2")):
            envstore.put_vm(rdb, envid, rec)
        if batched:
            folded = fold_batch(envstore.get_vms(rdb, envid), [Entry(v, k, f) for v, k, f in calls])
            for rec in folded.changed.values():
                envstore.put_vm(rdb, envid, rec)
            if folded.status is not None:
                envstore.update_env(rdb, envid, status=folded.status)
        else:
            for vmid, kind, fields in calls:
                callbacks.apply(rdb, q, envid, vmid, kind, dict(fields), clock)
        results.append(({s: v.to_json() for s, v in envstore.get_vms(rdb, envid).items()},
                        envstore.get_env(rdb, envid)["status"]))
    assert results[0] == results[1]


@pytest.mark.parametrize("text", ['{"v": 8}', '{"v": 8, "k": "status", "f": {}}', '{"v": "x", "k": "net", "f": {}}',
                                  "[1]"])
def test_a_malformed_inbox_entry_is_dropped_not_applied(world, text):
    world.r.rpush(keys.callback_inbox(world.envid), text)
    _status(world, 8, "GOOD")
    assert cbinbox.drain(world.r, _queue(world.r), world.envid, world.clock) == "drained 2"
    assert _callback_events(world.r, world.envid) == ["VM 8 (s0) status=GOOD"]


def test_a_remembered_caller_takes_one_round_trip_and_is_refused_once_its_vm_is_replaced(world):
    """The gateway remembers the env's VMs; a callback whose token matches one is one script call (ingest re-checks
    the record). A VM record replaced meanwhile (same slot, new incarnation) or a deleted environment is caught by that
    check: the full authorization answers as it would have (403 / 404)."""
    e, token = world.envid, world.tok[8]
    _status(world, 8, "R1")
    assert callbacks.known_caller(world.r, e, 8, token) is not None
    calls = world.r.info("commandstats")["cmdstat_evalsha"]["calls"]
    _status(world, 8, "R2")
    assert world.r.info("commandstats")["cmdstat_evalsha"]["calls"] == calls + 1          # ingest only
    rec = envstore.get_vms(world.r, e)["s0"]
    envstore.put_vm(world.r, e, VmRecord(slot="s0", role="slave", index=0, endpoint="onesim", vmid=8))  # new nonce
    res = world.client.simulate_get(f"/cgi-bin/updateappstatus.sh?vmid=8&envid={e}&status=R3&token={token}")
    assert res.status_code == 403 and callbacks.known_caller(world.r, e, 8, token) is None
    assert [a[3]["status"] for _, a in _queued(world.r)] == ["R1", "R2"]
    envstore.put_vm(world.r, e, rec)                                                   # the old incarnation back
    _status(world, 8, "R4")
    envstore.delete_env(world.r, e)
    res = world.client.simulate_get(f"/cgi-bin/updateappstatus.sh?vmid=8&envid={e}&status=R5&token={token}")
    assert res.status_code == 404


def test_a_remembered_slave_still_may_not_report_master_init(world):
    _status(world, 8, "S1")
    res = world.client.simulate_get(f"/cgi-bin/updateappstatus.sh?vmid=8&envid={world.envid}&status=MASTER_INIT_DONE"
                                    f"&token={world.tok[8]}")
    assert res.status_code == 403 and res.json["description"].startswith("status: only the master")


@settings(max_examples=50, deadline=None)
@given(ip=st.text(max_size=20), vmid=st.one_of(st.none(), st.integers(0, 10**9)), cpu=st.floats(allow_nan=False),
       index=st.integers(0, 1000), status=st.text(max_size=30))
def test_the_drains_record_json_is_the_records_own(ip, vmid, cpu, index, status):
    rec = VmRecord(slot=f"s{index}", role="slave", index=index, endpoint="onesim", vmid=vmid, ip=ip, cpu=cpu,
                   status=status, init="done")
    assert cbinbox.record_json(rec) == rec.to_json()


def test_the_gateways_roster_is_bounded_and_forgets_a_deleted_environment(world, monkeypatch):
    from functions.ops import cbroster

    monkeypatch.setattr(cbroster, "_ROSTERS", {})
    monkeypatch.setattr(cbroster, "_count", [0])
    monkeypatch.setattr(cbroster, "MEMBERS_KEPT", 3)
    assert cbroster.lookup(world.r, world.envid, 8).service == "svc1"
    assert cbroster.known(world.envid, 7) is not None and cbroster._count == [2]     # the whole roster at once
    other, _ = envstore.create_env(world.r, "svc1", "t2", {"endpoint": "onesim"}, "CREATE", world.clock)
    for i, vmid in enumerate((20, 21)):
        envstore.put_vm(world.r, other, VmRecord(slot=f"s{i}", role="slave", index=i, endpoint="onesim", vmid=vmid))
    cbroster.lookup(world.r, other, 20)
    assert cbroster._count == [4] and cbroster.known(other, 21) is not None
    cbroster.lookup(world.r, "999", 1)                                               # no such env: nothing kept
    third, _ = envstore.create_env(world.r, "svc1", "t3", {"endpoint": "onesim"}, "CREATE", world.clock)
    cbroster.lookup(world.r, third, 1)                                               # over the bound: start over
    assert cbroster.known(world.envid, 7) is None and set(cbroster._ROSTERS) == {third}
    envstore.delete_env(world.r, third)
    assert cbroster.lookup(world.r, third, 1).service is None and third not in cbroster._ROSTERS


def test_a_long_inbox_is_handed_to_a_fresh_job(world, monkeypatch):
    monkeypatch.setattr(cbinbox, "BATCH", 1)
    monkeypatch.setattr(cbinbox, "MAX_PER_JOB", 2)
    for i in range(3):
        _ingest(world, 8, f"L{i}")
    cq = runtime.sibling(_queue(world.r), runtime.CALLBACKS)
    cq.empty()
    assert cbinbox.drain(world.r, _queue(world.r), world.envid, world.clock) == "more"
    assert cq.count == 1 and world.r.llen(keys.callback_inbox(world.envid)) == 1
    _drain_until_idle(world)
    assert _callback_events(world.r, world.envid) == [f"VM 8 (s0) status=L{i}" for i in range(3)]


def test_a_drain_that_lost_its_lock_writes_nothing_more_and_leaves_the_rest(world, monkeypatch):
    """The lock expired under a stalled drain (deleted here before its second batch): the fenced step writes
    nothing, LockLost is raised, the entries stay and the pending lease brings the drain back."""
    monkeypatch.setattr(cbinbox, "BATCH", 1)
    for i in range(2):
        _ingest(world, 8, f"F{i}")
    r = ArrivingRedis(connection_pool=world.r.connection_pool)
    r.fail_at, r.arrive = 3, lambda: world.r.delete(keys.env_lock(world.envid))   # SET lock, step 1, [lost], step 2
    with pytest.raises(envstore.LockLost):
        cbinbox.drain(r, _queue(world.r), world.envid, world.clock)
    assert _callback_events(world.r, world.envid) == []          # the first batch was taken, not yet written
    assert world.r.llen(keys.callback_inbox(world.envid)) == 2
    assert world.r.zscore(keys.callback_drains(), world.envid) is not None
    _drain_until_idle(world)
    assert _callback_events(world.r, world.envid) == ["VM 8 (s0) status=F0", "VM 8 (s0) status=F1"]


def test_under_a_stream_a_drain_gathers_and_a_callback_on_its_own_is_applied_at_once(world, monkeypatch):
    """This worker's last drain applied 12 callbacks moments ago: the next drain lets its fresh callback wait
    GATHER s (asleep) and then applies it. That drain took one: the next is applied without waiting; and under a
    stream a callback already GATHER s old is not held back."""
    slept: list[float] = []
    monkeypatch.setattr(cbinbox, "_sleep", slept.append)
    monkeypatch.setattr(cbinbox, "_last_drain", [time.monotonic(), 12])
    _ingest(world, 8, "S0")
    assert cbinbox.drain(world.r, _queue(world.r), world.envid, world.clock) == "drained 1"
    assert slept == [pytest.approx(cbinbox.GATHER, abs=1e-6)]  # the fake clock stands still: the whole GATHER
    _ingest(world, 8, "S1")
    assert cbinbox.drain(world.r, _queue(world.r), world.envid, world.clock) == "drained 1"
    assert len(slept) == 1                               # the last drain took one: no stream, no wait
    monkeypatch.setattr(cbinbox, "_last_drain", [time.monotonic(), 12])
    _ingest(world, 8, "S2")
    world.clock.advance(cbinbox.GATHER)
    assert cbinbox.drain(world.r, _queue(world.r), world.envid, world.clock) == "drained 1"
    assert len(slept) == 1                               # its oldest callback waited long enough already
    assert _callback_events(world.r, world.envid)[-3:] == [f"VM 8 (s0) status=S{i}" for i in range(3)]
