"""functions.store.gsstore on the real redis-server: one live request per VM slot, status changes that move the
usage counters in the same atomic call (PEND -> ALLOCATED only if still PEND, fenced by the allocator lock),
releases bound to the slot incarnation, the counter check, and the queued allocation job."""

from __future__ import annotations

import pytest
import redis

from functions import tasks
from functions.gs.model import ALLOCATED, CANCELLED, PEND, RELEASED, Request, Size
from functions.ops import gsched
from functions.store import envstore, gsstore, guards, keys, runtime
from functions.store.runtime import JsonJob, JsonQueue
from tests.harness import twin, url_of


def _req(envid: str = "7", service: str = "svc", vcpus: int = 1, memory: int = 512) -> Request:
    return Request(id=0, envid=envid, service=service, vcpus=vcpus, memory=memory, pool_wanted="p", cls="silver")


def test_a_slot_has_one_live_request(rdb: redis.Redis) -> None:
    first = gsstore.new_request(rdb, _req(), "s0")
    again = gsstore.new_request(rdb, _req(), "s0")
    assert again == first and first.req.status == PEND and first.slot == "s0"
    assert gsstore.end(rdb, first, 5.0, "done with it") == CANCELLED
    second = gsstore.new_request(rdb, _req(), "s0")             # the slot's old request ended: a new one
    assert second.req.id == first.req.id + 2                    # (the refused attempt took an id too)
    assert gsstore.slot_request(rdb, "7", "s0") == second
    assert [s.req.id for s in gsstore.listed(rdb, "svc")] == [first.req.id, second.req.id]


def test_a_request_needs_the_env_lock_it_was_asked_under(rdb: redis.Redis) -> None:
    with guards.env_lock(rdb, "7") as token:
        assert gsstore.new_request(rdb, _req(), "m", fence=("7", token)).req.status == PEND
        with pytest.raises(envstore.LockLost):
            gsstore.new_request(rdb, _req(), "s0", fence=("7", "someone-else"))
    assert gsstore.slot_request(rdb, "7", "s0") is None


def test_moves_keep_the_counters_equal_to_what_is_held(rdb: redis.Redis) -> None:
    a = gsstore.new_request(rdb, _req(vcpus=2, memory=1024), "m")
    b = gsstore.new_request(rdb, _req(envid="8"), "m")
    with gsstore.allocator_lock(rdb) as token:
        assert gsstore.move(rdb, a.req.id, (PEND,), ALLOCATED, pool="p", fence=token) == "ok"
        assert gsstore.move(rdb, a.req.id, (PEND,), ALLOCATED, pool="q", fence=token) == ALLOCATED  # not twice
        assert gsstore.move(rdb, b.req.id, (PEND,), ALLOCATED, pool="p", fence="stale") == "fenced"
    assert gsstore.move(rdb, 999, (PEND,), ALLOCATED, pool="p") == "gone"
    assert gsstore.counters(rdb) == ({"p": Size(2, 1024)}, {"svc": Size(2, 1024)})
    assert gsstore.get(rdb, a.req.id).req.pool == "p" and gsstore.get(rdb, b.req.id).req.status == PEND
    assert gsstore.check_counters(rdb) == []
    assert gsstore.end(rdb, gsstore.get(rdb, a.req.id), 9.0, "gone") == RELEASED
    assert gsstore.counters(rdb) == ({}, {}) and gsstore.get(rdb, a.req.id).ended == 9.0
    assert [s.req.id for s in gsstore.live(rdb)] == [b.req.id]


def test_release_only_for_the_incarnation_that_holds_it(rdb: redis.Redis) -> None:
    held = gsstore.new_request(rdb, _req(), "s1")
    gsstore.move(rdb, held.req.id, (PEND,), ALLOCATED, pool="p")
    gsstore.bind(rdb, held.req.id, "nonce-1")
    assert gsstore.release_slot(rdb, "7", "s1", "nonce-0", 1.0) == ""          # another incarnation's VM
    assert gsstore.release_slot(rdb, "7", "s1", "nonce-1", 1.0) == RELEASED
    assert gsstore.release_slot(rdb, "7", "s1", "nonce-1", 1.0) == ""          # twice: nothing more
    assert gsstore.slot_request(rdb, "7", "s1") is None and gsstore.is_dirty(rdb)


def test_the_counter_check_repairs_drift(rdb: redis.Redis) -> None:
    a = gsstore.new_request(rdb, _req(), "m")
    gsstore.move(rdb, a.req.id, (PEND,), ALLOCATED, pool="p")
    rdb.hset(keys.gs_pool_usage(), mapping={"p:vcpus": 5, "ghost:mem": 7})
    assert gsstore.check_counters(rdb) == ["pool ghost: counted Size(vcpus=0, mem=7), requests hold "
                                           "Size(vcpus=0, mem=0)",
                                           "pool p: counted Size(vcpus=5, mem=512), requests hold "
                                           "Size(vcpus=1, mem=512)"]
    assert gsstore.counters(rdb) == ({"p": Size(1, 512)}, {"svc": Size(1, 512)})
    assert gsstore.check_counters(rdb) == []


def test_finished_requests_are_trimmed_to_the_newest(rdb: redis.Redis) -> None:
    for slot in ("a", "b", "c"):
        gsstore.end(rdb, gsstore.new_request(rdb, _req(), slot), 1.0, "x")
    assert gsstore.trim_finished(rdb, 1) == 2
    assert [s.req.id for s in gsstore.listed(rdb)] == [3] == [s.req.id for s in gsstore.listed(rdb, "svc")]


def test_the_queued_allocation_job_runs_one_pass(rdb: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", url_of(rdb))
    queue = JsonQueue("carina", connection=twin(rdb))
    gsstore.save_global(rdb, {"SHAREDPOOLS": {"p": {"zone": "z", "allocateable_cpus": 4, "allocateable_mem": 4096,
                                                    "service_class": "silver"}},
                              "SERVICES": {"svc": {"priority": "silver", "maxcpus": 4, "maxmemory": 4096}}},
                        "", "yaml", lambda: 1.0)
    stored = gsstore.new_request(rdb, _req(), "m")
    assert gsched.request_allocation(rdb, queue) is True
    assert gsched.request_allocation(rdb, queue) is False                # one queued job is enough
    assert not any(j.id.startswith("gs-allocate-") for j in queue.get_jobs())   # not behind the drives ...
    high = runtime.sibling(queue, runtime.HIGH)                                 # ... on the periodic queue
    job = next(j for j in high.get_jobs() if j.id.startswith("gs-allocate-"))
    assert job.func_name == tasks.gs_allocate.__module__ + ".gs_allocate"
    job = JsonJob.fetch(job.id, connection=queue.connection)
    job.perform()
    assert gsstore.get(rdb, stored.req.id).req.status == ALLOCATED
    assert not rdb.exists(keys.gs_alloc_mark())
