"""envstore against a real redis-server: atomic create, op guard, lock ownership, jobs, events."""

from __future__ import annotations

import threading

import pytest

from functions.model.clock import FakeClock
from functions.model.tokens import token_matches, vm_token
from functions.store import envstore as es
from functions.store import guards, install


def test_create_env_records_env_job_and_guard(rdb):
    clock = FakeClock()
    envid, jobid = es.create_env(rdb, "svc1", "tomcat", {"endpoint": "onesim", "num_slaves": 2}, "CREATE", clock)
    env = es.get_env(rdb, envid)
    assert env["status"] == "INIT" and env["spec"]["num_slaves"] == 2
    assert es.get_env(rdb, envid, service="other") is None
    assert es.get_job(rdb, jobid)["status"] == "RUNNING"
    assert guards.current_op(rdb, envid) == jobid
    assert es.inflight(rdb) == [envid]
    envid2, jobid2 = es.create_env(rdb, "svc1", "tomcat", {}, "CREATE", clock)
    assert int(envid2) == int(envid) + 1 and int(jobid2) > int(jobid)


def test_op_guard_one_winner_and_stale_release(rdb):
    envid = "7"
    results = []
    barrier = threading.Barrier(8)

    def claim(i):
        barrier.wait()
        results.append(guards.claim_op(rdb, envid, f"j{i}"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    holder = guards.current_op(rdb, envid)
    assert not guards.release_op(rdb, envid, "not-the-holder")
    assert guards.current_op(rdb, envid) == holder
    assert guards.take_over_op(rdb, envid, "remove-job") == holder
    assert guards.release_op(rdb, envid, "remove-job")
    assert guards.current_op(rdb, envid) is None


def test_env_lock_is_exclusive_and_expires(rdb):
    with guards.env_lock(rdb, "1", ttl=5) as first:
        with guards.env_lock(rdb, "1", ttl=5) as second:
            assert first and not second
        assert rdb.ttl("carina:env:1:lock") > 0
    with guards.env_lock(rdb, "1") as again:
        assert again


def test_finish_job_only_once_and_trim(rdb):
    clock = FakeClock()
    jobs = [es.new_job(rdb, "s", "1", "n", "SCALEUP", clock) for _ in range(5)]
    assert es.finish_job(rdb, jobs[0], "DONE", clock)
    assert not es.finish_job(rdb, jobs[0], "FAIL", clock)
    assert es.get_job(rdb, jobs[0])["status"] == "DONE"
    assert es.trim_jobs(rdb, "s", 2) == 3
    assert [j["jobid"] for j in es.list_jobs(rdb, "s")] == jobs[-2:]


def test_vm_records_events_and_delete(rdb):
    clock = FakeClock()
    envid, _ = es.create_env(rdb, "s", "t", {"endpoint": "e"}, "CREATE", clock)
    es.put_vm(rdb, envid, es.VmRecord(slot="s1", role="slave", index=1, endpoint="e", vmid=9))
    es.put_vm(rdb, envid, es.VmRecord(slot="m", role="master", index=-1, endpoint="e", vmid=3))
    es.put_vm(rdb, envid, es.VmRecord(slot="s0", role="slave", index=0, endpoint="e", vmid=5))
    assert list(es.get_vms(rdb, envid)) == ["m", "s0", "s1"]
    assert es.vm_by_id(rdb, envid, 5).slot == "s0"
    es.add_event(rdb, envid, "s", "callback", "MASTER_INIT_DONE", clock, vmid="3")
    events = es.list_events(rdb, envid)
    assert events[-1]["msg"] == "MASTER_INIT_DONE" and events[-1]["vmid"] == "3"
    es.delete_env(rdb, envid)
    assert es.get_env(rdb, envid) is None and es.get_vms(rdb, envid) == {}
    es.update_env(rdb, envid, status="X")  # no resurrection of a deleted env
    assert es.get_env(rdb, envid) is None


def test_hostkey_pinning_and_tokens(rdb):
    assert install.pin_hostkey(rdb, "svc http://e/RPC2 3 n1", "ssh-ed25519 AAA") == "ssh-ed25519 AAA"
    assert install.pin_hostkey(rdb, "svc http://e/RPC2 3 n1", "ssh-ed25519 BBB") == "ssh-ed25519 AAA"
    secret = install.callback_secret(rdb)
    assert secret == install.callback_secret(rdb) and len(secret) == 32
    tok = vm_token(secret, "4", "m", "n1")
    assert token_matches(secret, "4", "m", "n1", tok)
    assert not token_matches(secret, "4", "s0", "n1", tok)
    assert not token_matches(secret, "4", "m", "n2", tok)


def test_a_late_event_for_a_deleted_env_expires_with_its_stream(rdb):
    clock = FakeClock()
    envid, _ = es.create_env(rdb, "s", "t", {"endpoint": "e"}, "CREATE", clock)
    es.add_event(rdb, envid, "s", "step", "alive", clock)
    assert rdb.ttl(f"carina:env:{envid}:events") == -1          # a live env's stream never expires
    es.delete_env(rdb, envid)
    rdb.delete(f"carina:env:{envid}:events")                     # gone entirely, then a late writer
    es.add_event(rdb, envid, "s", "step", "late", clock)
    assert 0 < rdb.ttl(f"carina:env:{envid}:events") <= es.DELETED_EVENTS_TTL


def test_fenced_writes_refuse_a_holder_that_lost_its_lock(rdb):
    clock = lambda: 1000.0  # noqa: E731
    envid, jobid = es.create_env(rdb, "svc", "web", {"endpoint": "e"}, "CREATE", clock)
    rec = es.VmRecord(slot="s0", role="slave", index=0, endpoint="e")
    with guards.env_lock(rdb, envid, ttl=5) as stale:
        rdb.delete(f"carina:env:{envid}:lock")                 # its TTL ran out during a long pause ...
        with guards.env_lock(rdb, envid, ttl=5) as current:        # ... and another worker took the env
            assert stale and current and stale != current
            with pytest.raises(es.LockLost):
                es.put_vm(rdb, envid, rec, fence=stale)
            with pytest.raises(es.LockLost):
                es.finish_job(rdb, jobid, "DONE", clock, "stale", fence=(envid, stale))
            assert es.get_vms(rdb, envid) == {} and es.get_job(rdb, jobid)["status"] == "RUNNING"
            es.put_vm(rdb, envid, rec, fence=current)
            with pytest.raises(es.LockLost):
                es.del_vm(rdb, envid, "s0", fence=stale)
            assert es.finish_job(rdb, jobid, "DONE", clock, "ok", fence=(envid, current))
    assert list(es.get_vms(rdb, envid)) == ["s0"] and es.get_job(rdb, jobid)["info"] == "ok"
