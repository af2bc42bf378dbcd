"""store/feeds.py against a real redis-server: cursors, reading after one (blocking too), a job's first and
closing events, the census and which environments a service had."""

from __future__ import annotations

import threading

from hypothesis import given
from hypothesis import strategies as st

from functions.model.clock import FakeClock
from functions.store import envstore, feeds, keys
from functions.store.envstore import VmRecord

IDS = st.tuples(st.integers(0, 2**40), st.integers(0, 2**20)).filter(lambda t: t != (0, 0))


@given(IDS)
def test_before_is_the_largest_smaller_id(parts):
    ms, seq = parts
    prev = feeds.before(f"{ms}-{seq}")
    pms, _, pseq = prev.partition("-")
    assert (int(pms), int(pseq or 0)) < (ms, seq)
    assert seq == 0 or prev == f"{ms}-{seq - 1}"
    assert seq > 0 or int(pseq or 0) in (0, 2**64 - 1)


def test_read_after_a_cursor_and_before_includes_the_entry(rdb):
    key = feeds.stream_key(envid="9")
    ids = [rdb.xadd(key, {"type": "step", "msg": str(i)}, id=f"1000-{i}") for i in range(1, 4)]
    assert [e["msg"] for e in feeds.read_after(rdb, key, "0")] == ["1", "2", "3"]
    assert [e["msg"] for e in feeds.read_after(rdb, key, ids[0])] == ["2", "3"]
    assert [e["msg"] for e in feeds.read_after(rdb, key, feeds.before(ids[1]), count=1)] == ["2"]
    assert feeds.read_after(rdb, key, ids[-1]) == []
    assert feeds.last_id(rdb, key) == ids[-1] and feeds.last_id(rdb, "carina:none") == "0"
    assert [e["msg"] for e in feeds.newest(rdb, key, 2)] == ["2", "3"]


def test_a_blocking_read_returns_what_another_client_writes(rdb):
    key = feeds.stream_key(service="svc")
    last = feeds.last_id(rdb, key)
    writer = threading.Timer(0.2, lambda: rdb.xadd(key, {"msg": "late"}))
    writer.start()
    got = feeds.read_after(rdb, key, last, block_ms=10000)
    writer.join()
    assert [e["msg"] for e in got] == ["late"]


def test_a_jobs_events_start_at_its_request_and_end_at_its_closing_event(rdb):
    clock = FakeClock()
    envid, old = envstore.create_env(rdb, "svc", "tomcat", {}, "CREATE", clock)
    envstore.add_event(rdb, envid, "svc", "step", "an older job's event", clock)
    jobid = envstore.new_job(rdb, "svc", envid, "tomcat", "SCALEUP", clock)
    envstore.add_event(rdb, envid, "svc", "request", "scale up requested", clock, jobid=jobid)
    envstore.add_event(rdb, envid, "svc", "step", "SCALEUP started", clock, job=jobid)
    job = envstore.get_job(rdb, jobid)
    key = feeds.stream_key(envid=envid)
    assert [e["msg"] for e in feeds.read_after(rdb, key, feeds.job_cursor(rdb, job))] == [
        "scale up requested", "SCALEUP started"]
    assert not feeds.job_closed(rdb, job)
    clock.advance(10)
    envstore.finish_job(rdb, jobid, "DONE", clock, "ok")
    job = envstore.get_job(rdb, jobid)
    assert not feeds.job_closed(rdb, job)                 # ended; its `started` event is older than its end
    envstore.add_event(rdb, envid, "svc", "step", f"SCALEUP job {jobid} DONE: ok", clock, job=jobid)
    assert feeds.job_closed(rdb, job)
    rdb.delete(key)                                       # its request event gone: from its submit time
    assert feeds.job_cursor(rdb, job) == feeds.before(f"{int(clock.now * 1000) - 10000}-0")
    assert feeds.job_cursor(rdb, {"envid": "-1", "jobid": "3"}) == "0"
    assert feeds.had_env(rdb, "svc", envid) and not feeds.had_env(rdb, "other", envid)
    assert old != jobid


def test_census_counts_every_service(rdb):
    clock = FakeClock()
    a, ja = envstore.create_env(rdb, "a", "tomcat", {}, "CREATE", clock)
    b, _ = envstore.create_env(rdb, "b", "tomcat", {}, "CREATE", clock)
    rdb.sadd(keys.services(), "a", "b")
    envstore.update_env(rdb, a, policy_status="ACTIVE")
    envstore.put_vm(rdb, a, VmRecord(slot="m", role="master", index=0, endpoint="e", state="running"))
    envstore.put_vm(rdb, b, VmRecord(slot="m", role="master", index=0, endpoint="e"))
    envstore.finish_job(rdb, ja, "DONE", clock)
    counts = feeds.census(rdb)
    assert counts["envs"] == {"ACTIVE": 1, "INIT": 1}
    assert counts["vms"] == {"running": 1, "allocating": 1}
    assert counts["jobs"] == {("CREATE", "DONE"): 1, ("CREATE", "RUNNING"): 1}
