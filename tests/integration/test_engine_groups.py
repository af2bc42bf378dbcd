"""Environment groups driven in-process: members created strictly in order, dependency URLs in the CONTEXT of
the dependant's master and slaves (also after a scale-up), failures and group removes abort what is PENDING,
and the "start the next member" step never starts a member twice (real Redis, in-process simulator)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import yaml

from functions.conf.schema import load_config
from functions.ops import groups, operations
from functions.store import envstore, keys, tenants
from functions.upkeep import reconcile
from tests.integration.engine_fixtures import SERVICE, Rig, env_entry, open_rig

MEMBERS = ["hbase", "tomcat", "apache"]


@pytest.fixture
def rig(rdb: redis.Redis) -> Iterator[Rig]:
    yield from open_rig(rdb)


def configure_group(rig: Rig, hbase_url: str = "http://%MASTER%:9090/hbase") -> None:
    """hbase (no slaves) → tomcat (1 slave, needs hbase) → apache (no slaves, needs hbase and tomcat)."""
    cfg = {"ENDPOINT": {"sim": {"proxy": rig.sim.url, "oneauth": rig.sim.auth}},
           "TEMPLATE": {"small": {"file": "small.vm", "cpu": 1, "memory": 512, "network_id": {"sim": 0},
                                  "image_id": {"sim": 0}}},
           "ENVIRONMENT": {
               "hbase": env_entry(num_slaves=0, master_setup_time=0, app_url=hbase_url),
               "tomcat": env_entry(num_slaves=1, master_setup_time=0),
               "apache": env_entry(num_slaves=0, master_setup_time=0, app_url="http://%MASTER%/"),
               "analytics": {"type": "group", "description": "g", "members": MEMBERS,
                             "dependencies": {"tomcat": ["hbase"], "apache": ["hbase", "tomcat"]}}}}
    text = yaml.safe_dump(cfg)
    tenants.save_config(rig.r, SERVICE, load_config(text, "yaml", {"small.vm"}), text, "yaml", rig.clock)


def create_group(rig: Rig, **kw: Any) -> tuple[str, str]:
    configure_group(rig, **kw)
    return operations.request_create(rig.r, rig.queue, SERVICE, "analytics", rig.clock, rig.settings)


def drive_create(rig: Rig, envid: str, fail: bool = False) -> None:
    """Drive a member's CREATE to its end (MASTER_INIT_FAIL instead of DONE with `fail`)."""
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)
    rig.callback(envid, "m", "MASTER_INIT_FAIL:boom" if fail else "MASTER_INIT_DONE")
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)


def member_envs(rig: Rig) -> dict[str, str]:
    """config name -> envid of the service's environments."""
    return {e["name"]: e["envid"] for e in envstore.list_envs(rig.r, SERVICE)}


def jobs(rig: Rig, gid: str) -> list[dict[str, str]]:
    rec = groups.load(rig.r, gid)
    assert rec is not None
    return [rig.job(j) for j in rec["jobs"]]


def test_members_are_created_in_order_with_dependency_urls(rig: Rig) -> None:
    gid, first_job = create_group(rig)
    assert member_envs(rig) == {"hbase": gid}
    pend = jobs(rig, gid)
    assert [(j["name"], j["status"], j["envid"]) for j in pend] == [
        ("hbase", "RUNNING", gid), ("tomcat", "PENDING", "-1"), ("apache", "PENDING", "-1")]
    assert {j["groupid"] for j in pend} == {first_job} and rig.env(gid)["groupid"] == "-1"

    drive_create(rig, gid)
    envs = member_envs(rig)
    assert list(envs) == ["hbase", "tomcat"]                  # only the next member started
    tomcat = envs["tomcat"]
    assert rig.env(tomcat)["groupid"] == gid and rig.env(tomcat)["job"] == pend[1]["jobid"]
    assert jobs(rig, gid)[1]["status"] == "RUNNING" and jobs(rig, gid)[1]["envid"] == tomcat
    assert jobs(rig, gid)[2]["status"] == "PENDING"
    hbase_url = rig.env(gid)["app_url"]
    assert hbase_url.endswith(":9090/hbase")

    drive_create(rig, tomcat)
    vms = rig.vms(tomcat)
    for slot in ("m", "s0"):
        ctx = rig.sim_vm(vms[slot].vmid).context
        assert ctx["HBASE_URL"] == hbase_url and "TOMCAT_URL" not in ctx
    apache = member_envs(rig)["apache"]
    drive_create(rig, apache)
    actx = rig.sim_vm(rig.vms(apache)["m"].vmid).context
    assert (actx["HBASE_URL"], actx["TOMCAT_URL"]) == (hbase_url, rig.env(tomcat)["app_url"])
    assert [j["status"] for j in jobs(rig, gid)] == ["DONE"] * 3
    assert rig.env(apache)["groupid"] == gid
    assert gid not in rig.r.smembers(keys.groups_active())
    assert 'HBASE_URL="' in jobs(rig, gid)[2]["dependstr"]


def test_dependency_urls_survive_a_scaleup_once(rig: Rig) -> None:
    gid, _ = create_group(rig)
    drive_create(rig, gid)
    tomcat = member_envs(rig)["tomcat"]
    drive_create(rig, tomcat)
    up = rig.scale(tomcat, "up")
    rig.drive(tomcat)
    rig.tick()
    rig.drive(tomcat)
    assert rig.job(up)["status"] == "DONE", rig.env(tomcat).get("info")
    s1 = rig.vms(tomcat)["s1"]
    assert rig.sim_vm(s1.vmid).context["HBASE_URL"] == rig.env(gid)["app_url"]
    texts = [a["text"] for a in rig.allocs if a["envid"] == tomcat]
    assert len(texts) == 3 and all(t.count("HBASE_URL") == 1 for t in texts)


def test_empty_app_url_is_passed_empty_with_an_event(rig: Rig) -> None:
    gid, _ = create_group(rig, hbase_url="")
    drive_create(rig, gid)
    tomcat = member_envs(rig)["tomcat"]
    assert rig.env(tomcat)["spec"]["deps"] == {"HBASE": ""}
    assert any("HBASE_URL passed empty" in m for m in rig.events(tomcat))
    rig.drive(tomcat)
    assert rig.sim_vm(rig.vms(tomcat)["m"].vmid).context["HBASE_URL"] == ""


def test_a_failed_member_aborts_the_rest(rig: Rig) -> None:
    gid, _ = create_group(rig)
    drive_create(rig, gid)
    tomcat = member_envs(rig)["tomcat"]
    drive_create(rig, tomcat, fail=True)
    hb, tc, ap = jobs(rig, gid)
    assert (hb["status"], tc["status"], ap["status"]) == ("DONE", "FAIL", "ABORT")
    assert "'tomcat'" in ap["info"] and ap["envid"] == "-1"
    assert list(member_envs(rig)) == ["hbase", "tomcat"]       # apache never started
    assert groups.advance(rig.r, rig.queue, gid, rig.clock) == "end"
    assert list(member_envs(rig)) == ["hbase", "tomcat"]


def test_remove_group_aborts_pending_and_removes_created_members(rig: Rig) -> None:
    gid, _ = create_group(rig)
    drive_create(rig, gid)
    tomcat = member_envs(rig)["tomcat"]
    rig.drive(tomcat)                                          # tomcat's master allocated
    removes = operations.request_remove(rig.r, rig.queue, SERVICE, f"-{gid}", rig.clock)
    assert len(removes) == 2
    hb, tc, ap = jobs(rig, gid)
    assert ap["status"] == "ABORT" and f"group {gid} removed" in ap["info"]
    assert tc["status"] == "FAIL" and "pre-empted" in tc["info"]
    for envid in (gid, tomcat):
        for _ in range(10):
            if envstore.get_env(rig.r, envid) is None:
                break
            rig.drive(envid)
            rig.tick()
        assert envstore.get_env(rig.r, envid) is None and rig.live(envid) == []
    assert member_envs(rig) == {} and [rig.job(j)["status"] for j in removes] == ["DONE", "DONE"]
    assert groups.advance(rig.r, rig.queue, gid, rig.clock) == "end" and member_envs(rig) == {}


def test_next_member_step_never_starts_a_member_twice(rig: Rig) -> None:
    gid, first_job = create_group(rig)
    # the first member's create ended but the worker died before the hook: the job is DONE, nothing started
    envstore.finish_job(rig.r, first_job, "DONE", rig.clock, "created")
    envstore.update_env(rig.r, gid, app_url="http://h/")
    results: list[str] = []
    barrier = threading.Barrier(4)

    def race() -> None:
        barrier.wait()
        results.append(groups.advance(rig.r, rig.queue, gid, rig.clock))

    threads = [threading.Thread(target=race) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results).count("start 1") == 1 and len(results) == 4
    assert list(member_envs(rig)) == ["hbase", "tomcat"]
    reconcile.recover_all(rig.r, rig.queue, rig.clock)           # a replay by recovery starts nothing more
    groups.advance(rig.r, rig.queue, gid, rig.clock)
    assert list(member_envs(rig)) == ["hbase", "tomcat"]
    assert [j["status"] for j in jobs(rig, gid)] == ["DONE", "RUNNING", "PENDING"]


def test_recovery_starts_a_member_whose_predecessor_ended(rig: Rig) -> None:
    gid, first_job = create_group(rig)
    envstore.finish_job(rig.r, first_job, "DONE", rig.clock, "created")
    assert gid in rig.r.smembers(keys.groups_active())
    reconcile.recover_all(rig.r, rig.queue, rig.clock)
    tomcat = member_envs(rig)["tomcat"]
    assert tomcat in envstore.inflight(rig.r) and rig.env(tomcat)["groupid"] == gid


def test_a_group_whose_pending_job_vanished_aborts_without_starting(rig: Rig) -> None:
    gid, first_job = create_group(rig)
    rec = groups.load(rig.r, gid)
    assert rec is not None
    envstore.finish_job(rig.r, first_job, "DONE", rig.clock, "created")
    rig.r.delete(keys.job(rec["jobs"][1]))                     # e.g. its service's jobs were deleted
    assert groups.advance(rig.r, rig.queue, gid, rig.clock) == "abort 1"
    assert list(member_envs(rig)) == ["hbase"] and gid not in rig.r.smembers(keys.groups_active())
    assert rig.job(rec["jobs"][2])["status"] == "ABORT"
