"""Elasticity policies acting through the minute tick: real Redis, the in-process simulator (CPU set through its
fault methods), the real engine, one FakeClock. Also: once per minute, live edits of the configuration."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import redis

from functions.ops import operations
from functions.policy import PolicyState
from functions.store import envstore, guards, tenants
from functions.upkeep import policies, ticks
from tests.integration.engine_fixtures import SERVICE, Rig, create_ready, env_entry, open_rig
from tests.integration.policy_fixtures import GRACE, env_doc, last_job, minute, policy_jobs, set_cpu, settle

ZONE = "America/New_York"


@pytest.fixture
def rig(rdb: redis.Redis) -> Iterator[Rig]:
    yield from open_rig(rdb)


def _window_from_next_minute(rig: Rig, length: int) -> str:
    """A window spec, in ZONE's local time, from the next minute for `length` minutes (end excluded)."""
    start = datetime.fromtimestamp((rig.clock() // 60 + 1) * 60, tz=UTC).astimezone(ZoneInfo(ZONE))
    end = start + timedelta(minutes=length)
    assert end.date() == start.date()
    return f"{start:%H%M}-{end:%H%M}"


def test_a_time_window_scales_up_one_vm_per_tick_then_back_down(rig: Rig) -> None:
    spec = _window_from_next_minute(rig, 4)
    policy = {"mode": "time-based", "windows": {"rush": {"spec": spec, "min": 3}}, "min": 1, "timezone": ZONE}
    envid, _ = create_ready(rig, num_slaves=0, master_setup_time=0, drain_time=0, elasticity_policy=policy)
    sizes, infos = [], []
    for _ in range(6):                                   # 4 minutes inside the window, then 2 after it
        minute(rig)
        infos.append(rig.env(envid)["info"])
        settle(rig, envid)
        sizes.append(len(rig.vms(envid)))
    assert sizes == [2, 3, 3, 3, 2, 1]
    assert infos[0] == "POLICY_STATUS: Scaling up to meet minimum 3 for time window rush"
    assert infos[2] == "POLICY_STATUS: 3 VMs meet minimum 3 for time window rush"
    assert infos[4] == ("POLICY_STATUS: Scaling down to meet minimum 1 for time window (none: policy min) "
                        "(removing s1)")
    jobs = policy_jobs(rig, envid)
    assert [(j["type"], j["status"], j["source"], j["slots"]) for j in jobs] == [
        ("SCALEUP", "DONE", "elasticity", []), ("SCALEUP", "DONE", "elasticity", []),
        ("SCALEDOWN", "DONE", "elasticity", ["s1"]), ("SCALEDOWN", "DONE", "elasticity", ["s0"])]
    assert len(rig.live(envid)) == 1
    doc = env_doc(rig, envid)
    assert doc["policy_status"] == "ACTIVE" and doc["metrics"] == "avgcpu[0]"
    assert doc["policy_source"] == datetime.fromtimestamp(
        float(rig.r.hget("carina:svc:acme:config", "uploaded_at") or 0), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_the_window_is_read_in_the_policy_time_zone(rig: Rig) -> None:
    spec = _window_from_next_minute(rig, 2)
    policy = {"mode": "time-based", "windows": {"rush": {"spec": spec, "min": 2}}, "timezone": "UTC"}
    envid, _ = create_ready(rig, num_slaves=0, master_setup_time=0, elasticity_policy=policy)
    minute(rig)                                          # the same clock time, read in UTC: outside it
    assert guards.current_op(rig.r, envid) is None
    assert rig.env(envid)["info"] == "POLICY_STATUS: No time window matches now; keeping 1 VMs"


def test_a_policy_scaledown_removes_the_slaves_it_added_first(rig: Rig) -> None:
    policy = {"mode": "auto", "min": 3, "max": 3, "period": 1, "scaleup_expr": "avgcpu > 1000",
              "scaledown_expr": "avgcpu > 1000"}
    envid, _ = create_ready(rig, num_slaves=1, master_setup_time=0, drain_time=0, elasticity_policy=policy)
    minute(rig)                                          # 2 VMs < min 3: scale up at once
    settle(rig, envid)
    rig.scale(envid, "up")                               # and the operator adds one more
    settle(rig, envid)
    assert {slot: rec.origin for slot, rec in rig.vms(envid).items()} == {"m": "", "s0": "", "s1": "policy",
                                                                         "s2": ""}
    rig.configure(num_slaves=1, master_setup_time=0, drain_time=0, elasticity_policy=dict(policy, min=1, max=2))
    minute(rig)                                          # 4 VMs > max 2: the policy's slave goes first
    job = last_job(rig, envid)
    assert (job["type"], job["origin"], job["slots"]) == ("SCALEDOWN", "policy", "s1")
    settle(rig, envid)
    assert sorted(rig.vms(envid)) == ["m", "s0", "s2"]
    minute(rig)                                          # then the highest slot
    assert last_job(rig, envid)["slots"] == "s2"
    settle(rig, envid)
    assert sorted(rig.vms(envid)) == ["m", "s0"] and len(rig.live(envid)) == 2


def test_high_cpu_scales_up_after_period_ticks_and_stops_at_max(rig: Rig) -> None:
    policy = {"mode": "auto", "min": 1, "max": 3, "period": 2, "scaleup_expr": "avgcpu > 50",
              "scaledown_expr": "avgcpu < 10"}
    envid, _ = create_ready(rig, num_slaves=0, master_setup_time=0, elasticity_policy=policy)
    set_cpu(rig, rig.vms(envid)["m"].vmid, 80)
    sizes, infos = [], []
    for _ in range(6):
        minute(rig)
        infos.append(rig.env(envid)["info"])
        settle(rig, envid)
        for rec in rig.vms(envid).values():
            set_cpu(rig, rec.vmid, 80)
        sizes.append(len(rig.vms(envid)))
    assert sizes == [1, 2, 2, 3, 3, 3]
    assert infos[0] == "POLICY_STATUS: Scale up counter incremented to 1 (period 2)"
    assert infos[1] == "POLICY_STATUS: Scaling up: scaleup_expr true for 2 consecutive ticks"
    assert infos[5] == "POLICY_STATUS: Scale up condition true but already at maximum 3"
    assert [j["type"] for j in policy_jobs(rig, envid)] == ["SCALEUP", "SCALEUP"]
    assert env_doc(rig, envid)["metrics"] == "avgcpu[80]"
    for rec in rig.vms(envid).values():
        set_cpu(rig, rec.vmid, 5)
    minute(rig)
    assert rig.env(envid)["info"] == "POLICY_STATUS: Scale down counter incremented to 1 (period 2)"
    assert env_doc(rig, envid)["metrics"] == "avgcpu[5]"


def test_two_ticks_for_the_same_minute_act_once(rig: Rig) -> None:
    policy = {"mode": "auto", "min": 2, "max": 4, "period": 1, "scaleup_expr": "avgcpu > 50",
              "scaledown_expr": "avgcpu < 0"}
    envid, _ = create_ready(rig, num_slaves=0, master_setup_time=0, elasticity_policy=policy)
    rig.tick(60.0)
    factory = rig.ctx().one_factory
    assert ticks.tick(rig.r, rig.queue, rig.clock, one_factory=factory, grace=GRACE) is not None
    assert ticks.tick(rig.r, rig.queue, rig.clock, one_factory=factory, grace=GRACE) is None
    assert len(policy_jobs(rig, envid)) == 1
    settle(rig, envid)
    again = policies.run(rig.r, rig.queue, rig.clock, GRACE)     # a retried tick job: the minute is done
    assert again.get("evaluated", 0) == 0 and len(policy_jobs(rig, envid)) == 1
    # a second pass that decided from the same read as the first one: its write and its start are refused
    old = PolicyState.from_fields(rig.env(envid))
    stale = (old.status, str(old.minute - 1))
    data = {"envid": envid, "service": SERVICE, "name": "web"}
    assert operations.request_policy(rig.r, rig.queue, data, "SCALEUP", (), "elasticity", stale,
                                      old.to_fields(), rig.clock) is None
    assert len(policy_jobs(rig, envid)) == 1 and guards.current_op(rig.r, envid) is None


def test_a_busy_environment_gets_no_policy_action(rig: Rig) -> None:
    policy = {"mode": "auto", "min": 3, "max": 4, "period": 1, "scaleup_expr": "avgcpu > 50",
              "scaledown_expr": "avgcpu < 0"}
    envid, _ = create_ready(rig, num_slaves=0, master_setup_time=0, elasticity_policy=policy)
    manual = rig.scale(envid, "up")                      # the operator's scale-up is running
    stats = minute(rig)
    assert stats.get("action_SCALEUP", 0) == 0 and guards.current_op(rig.r, envid) == manual
    assert rig.env(envid)["info"].endswith("(waiting: an operation is in progress)")
    settle(rig, envid)
    minute(rig)                                          # 2 VMs < min 3: now it acts
    assert last_job(rig, envid)["origin"] == "policy"


def test_a_new_upload_applies_from_the_next_tick_and_a_removed_one_falls_back(rig: Rig) -> None:
    envid, _ = create_ready(rig, num_slaves=0, master_setup_time=0)
    minute(rig)
    assert env_doc(rig, envid)["info"] == "created: 1 master + 0 slaves"    # no policy: the job's info stays
    policy = {"mode": "auto", "min": 2, "max": 2, "scaleup_expr": "avgcpu > 50", "scaledown_expr": "avgcpu < 0"}
    rig.configure(num_slaves=0, master_setup_time=0, elasticity_policy=policy)
    uploaded = env_doc(rig, envid)["policy_source"]
    minute(rig)
    assert last_job(rig, envid)["type"] == "SCALEUP" and env_doc(rig, envid)["policy_source"] != uploaded
    settle(rig, envid)
    cfg = tenants.get_config(rig.r, SERVICE)
    assert cfg is not None
    cfg["ENVIRONMENT"] = {"other": env_entry()}          # configuration `web` removed from the service
    tenants.save_config(rig.r, SERVICE, cfg, "{}", "yaml", rig.clock)
    minute(rig)
    doc = env_doc(rig, envid)
    assert doc["policy_source"] == "snapshot"
    assert doc["info"] == ("policies from the create-time snapshot: configuration 'web' is no longer uploaded")
    assert guards.current_op(rig.r, envid) is None and len(rig.vms(envid)) == 2   # the snapshot had none
    messages = [e["msg"] for e in envstore.list_events(rig.r, envid) if e["type"] == "policy"]
    assert messages.count(doc["info"]) == 1


def test_the_cooldown_counts_from_the_end_of_the_last_operation_manual_ones_included(rig: Rig) -> None:
    policy = {"mode": "auto", "min": 1, "max": 6, "period": 1, "cooldown": 100, "scaleup_expr": "avgcpu > 50",
              "scaledown_expr": "avgcpu < 0"}
    envid, _ = create_ready(rig, num_slaves=1, master_setup_time=0, drain_time=0, elasticity_policy=policy)
    for rec in rig.vms(envid).values():
        set_cpu(rig, rec.vmid, 80)
    minute(rig)                                          # 60 s after the create ended: cooling down
    assert rig.env(envid)["info"].endswith("(waiting: cooldown, 40s left)") and not policy_jobs(rig, envid)
    minute(rig)
    acted_at = rig.clock()
    assert len(policy_jobs(rig, envid)) == 1
    settle(rig, envid)
    rig.tick(40.0)
    rig.scale(envid, "down")                             # the operator scales down 40 s later
    settle(rig, envid)
    ended = float(last_job(rig, envid)["end"])
    assert ended > acted_at + 40
    minute(rig)                                          # the action's own cooldown is over, not the end's
    assert acted_at + 100 < rig.clock() < ended + 100
    left = math.ceil(ended + 100 - rig.clock())
    assert rig.env(envid)["info"].endswith(f"(waiting: cooldown, {left}s left)")
    assert len(policy_jobs(rig, envid)) == 1
    minute(rig)
    assert rig.env(envid)["info"] == "POLICY_STATUS: Scaling up: scaleup_expr true for 1 consecutive ticks"
    assert len(policy_jobs(rig, envid)) == 2
