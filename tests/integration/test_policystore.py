"""The policy pass's Redis side on a real redis-server: batched reads, compare-and-set writes, the atomic start
of a policy's job and the busy guard."""

from __future__ import annotations

import redis

from functions.model.clock import FakeClock
from functions.ops import operations
from functions.policy import PolicyState
from functions.store import envstore, guards, keys, policystore
from functions.store.envstore import VmRecord
from functions.store.policystore import StateWrite
from functions.store.runtime import JsonQueue
from functions.upkeep.policyread import READ_FIELDS
from tests.harness import twin

SPEC = {"endpoint": "sim", "num_slaves": 1}


def _env(rdb: redis.Redis, clock: FakeClock, status: str = "ACTIVE") -> str:
    envid, jobid = envstore.create_env(rdb, "svc", "web", SPEC, "CREATE", clock)
    envstore.finish_job(rdb, jobid, "DONE", clock)
    guards.release_op(rdb, envid, jobid)
    envstore.update_env(rdb, envid, policy_status=status, pol_minute=41)
    return envid


def _queue(rdb: redis.Redis) -> JsonQueue:
    return JsonQueue("carina", connection=twin(rdb))


def test_read_envs_in_batches_with_records_guard_and_gone_envs(rdb: redis.Redis) -> None:
    clock = FakeClock()
    envids = [_env(rdb, clock) for _ in range(5)]
    envstore.put_vm(rdb, envids[0], VmRecord(slot="m", role="master", index=0, endpoint="sim", vmid=7))
    envstore.put_vm(rdb, envids[0], VmRecord(slot="s0", role="slave", index=0, endpoint="sim", vmid=8))
    rdb.hset(keys.env_vms(envids[1]), "s9", "{not json")                        # one unreadable record
    envstore.put_vm(rdb, envids[1], VmRecord(slot="m", role="master", index=0, endpoint="sim", vmid=9))
    guards.claim_op(rdb, envids[2], "77")
    envstore.delete_env(rdb, envids[3])
    reads = policystore.read_envs(rdb, envids, READ_FIELDS)
    assert [x.envid for x in reads] == envids
    assert sorted(v["vmid"] for v in reads[0].vms) == [7, 8] and reads[0].fields["policy_status"] == "ACTIVE"
    assert [v["vmid"] for v in reads[1].vms] == [9]
    assert reads[2].holder == "77" and reads[0].holder is None
    assert reads[3].fields["service"] is None and reads[3].vms == []
    assert reads[4].fields["pol_minute"] == "41" and reads[4].fields["pol_up"] is None


def test_state_writes_are_compare_and_set(rdb: redis.Redis) -> None:
    clock = FakeClock()
    a, b, c = _env(rdb, clock), _env(rdb, clock, "INIT"), _env(rdb, clock)
    envstore.delete_env(rdb, c)
    fields = {"pol_minute": "42", "metrics": "avgcpu[5]"}
    done = policystore.write_states(rdb, [StateWrite(a, ("ACTIVE", "41"), fields),
                                          StateWrite(b, ("READY", "41"), fields),   # the create ended meanwhile
                                          StateWrite(c, ("ACTIVE", "41"), fields)])
    assert done == [True, False, False]
    assert rdb.hget(keys.env(a), "metrics") == "avgcpu[5]" and rdb.hget(keys.env(b), "metrics") == ""
    assert not rdb.exists(keys.env(c))                                           # never resurrected
    assert policystore.write_states(rdb, [StateWrite(a, ("ACTIVE", "41"), fields)]) == [False]   # twice


def test_a_policy_job_starts_with_its_state_or_not_at_all(rdb: redis.Redis) -> None:
    clock, queue = FakeClock(), _queue(rdb)
    envid = _env(rdb, clock)
    env = {"envid": envid, "service": "svc", "name": "web"}
    state = PolicyState(status="ACTIVE", minute=42, info="AVAIL_POLICY_STATUS: Recreating VM s0").to_fields()
    manual = envstore.next_jobid(rdb)
    guards.claim_op(rdb, envid, manual)
    envstore.record_job(rdb, "svc", manual, envid, "web", "SCALEUP", clock)
    assert operations.request_policy(rdb, queue, env, "RECREATE", ["s0"], "availability", ("ACTIVE", "41"),
                                     state, clock) is None                     # busy: nothing written
    assert rdb.hget(keys.env(envid), "pol_minute") == "41" and guards.current_op(rdb, envid) == manual
    envstore.finish_job(rdb, manual, "DONE", clock)                         # its holder ended, guard left
    jobid = operations.request_policy(rdb, queue, env, "RECREATE", ["s0"], "availability", ("ACTIVE", "41"),
                                      state, clock, "s0 VM 8 unkn")
    assert jobid is not None and guards.current_op(rdb, envid) == jobid
    job, data = envstore.get_job(rdb, jobid), envstore.get_env(rdb, envid)
    assert job is not None and data is not None
    assert (job["type"], job["status"], job["origin"], job["slots"], job["source"]) == (
        "RECREATE", "RUNNING", "policy", "s0", "availability")
    assert (data["op"], data["job"], data["phase"], data["pol_minute"]) == ("RECREATE", jobid, "new", "42")
    assert data["info"] == "AVAIL_POLICY_STATUS: Recreating VM s0" and envid in envstore.inflight(rdb)
    assert envstore.list_events(rdb, envid)[-1]["msg"] == (
        f"RECREATE of s0 requested by the availability policy (job {jobid}): s0 VM 8 unkn")
    assert operations.request_policy(rdb, queue, env, "RECREATE", ["s0"], "availability", ("ACTIVE", "41"),
                                     state, clock) is None                     # the same decision again
    assert len([j for j in envstore.list_jobs(rdb, "svc") if j.get("origin") == "policy"]) == 1


def test_a_stale_decision_releases_the_guard_it_claimed(rdb: redis.Redis) -> None:
    clock, queue = FakeClock(), _queue(rdb)
    envid = _env(rdb, clock)
    env = {"envid": envid, "service": "svc", "name": "web"}
    assert operations.request_policy(rdb, queue, env, "SCALEUP", [], "elasticity", ("ACTIVE", "40"),
                                     {"pol_minute": "42"}, clock) is None
    assert guards.current_op(rdb, envid) is None and rdb.hget(keys.env(envid), "pol_minute") == "41"


def test_policy_jobs_start_in_one_batch_each_on_its_own(rdb: redis.Redis) -> None:
    """request_policies: each start succeeds or leaves nothing on its own (a busy guard, a stale decision); the
    started ones have their job, state, request event (with its job, op and origin) and one drive job each."""
    clock, queue = FakeClock(), _queue(rdb)
    ok1, busy, stale, ok2 = envids = [_env(rdb, clock) for _ in range(4)]
    for envid in envids:
        envstore.clear_inflight(rdb, envid)                                 # their creates' drives are over
    manual = envstore.next_jobid(rdb)
    guards.claim_op(rdb, busy, manual)
    envstore.record_job(rdb, "svc", manual, busy, "web", "SCALEUP", clock)
    state = {"pol_minute": "42", "policy_status": "ACTIVE"}

    def ask(envid: str, kind: str, slots: list[str], expect: tuple[str, str]) -> operations.PolicyRequest:
        return operations.PolicyRequest({"envid": envid, "service": "svc", "name": "web"}, kind, slots, "elasticity",
                                        expect, state, "why not")

    jobids = operations.request_policies(rdb, queue, [ask(ok1, "SCALEUP", [], ("ACTIVE", "41")),
                                                      ask(busy, "SCALEUP", [], ("ACTIVE", "41")),
                                                      ask(stale, "SCALEUP", [], ("ACTIVE", "40")),
                                                      ask(ok2, "SCALEDOWN", ["s0"], ("ACTIVE", "41"))], clock)
    assert jobids[1] is None and jobids[2] is None and None not in (jobids[0], jobids[3])
    assert int(jobids[3]) > int(jobids[0]) > int(manual)
    for envid, jobid, kind in ((ok1, jobids[0], "SCALEUP"), (ok2, jobids[3], "SCALEDOWN")):
        data = envstore.get_env(rdb, envid)
        assert data is not None and (data["op"], data["job"], data["pol_minute"]) == (kind, jobid, "42")
        assert guards.current_op(rdb, envid) == jobid and envid in envstore.inflight(rdb)
        event = envstore.list_events(rdb, envid)[-1]
        assert (event["type"], event["jobid"], event["op"], event["origin"]) == ("request", jobid, kind, "policy")
    assert envstore.list_events(rdb, ok2)[-1]["msg"] == (
        f"SCALEDOWN of s0 requested by the elasticity policy (job {jobids[3]}): why not")
    for envid in (busy, stale):                                             # untouched
        assert rdb.hget(keys.env(envid), "pol_minute") == "41" and envid not in envstore.inflight(rdb)
    assert guards.current_op(rdb, busy) == manual and guards.current_op(rdb, stale) is None
    assert sorted(queue.fetch_job(j).args[0] for j in queue.job_ids) == sorted([ok1, ok2])
    assert operations.request_policies(rdb, queue, [], clock) == []
