"""The minute refresh (functions.upkeep.refresh) against the real simulator over XML-RPC: states and CPU from
`one.vmpool.infoset` of Carina's ids (short bodies), a fixed number of calls per endpoint, MISSING
for a VM OpenNebula no longer has (or has DONE) and for a VM id whose tags name another owner, environments a
step holds left alone, records rewritten only when the observation changed (real Redis)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from functions.cloud import fastxml, offload
from functions.cloud import one as one_mod
from functions.cloud.one import OneClient
from functions.store import envstore, guards, keys, observed
from functions.upkeep import refresh as refresh_mod
from functions.upkeep import ticks
from onesim import lifecycle as simlife
from onesim import states as S
from tests.integration.engine_fixtures import Rig, create_ready, open_rig, retag


@pytest.fixture
def rig(rdb: redis.Redis) -> Iterator[Rig]:
    yield from open_rig(rdb)


class Counted(OneClient):
    """The real client; notes every XML-RPC method it calls."""

    calls: list[str] = []

    def _raw(self, method: str, *args: Any, **kw: Any) -> Any:
        Counted.calls.append(method)
        return super()._raw(method, *args, **kw)

    def _call(self, method: str, *args: Any) -> Any:
        Counted.calls.append(method)
        return super()._call(method, *args)


def refresh(rig: Rig) -> dict[str, Any]:
    Counted.calls = []
    return ticks.refresh_vms(rig.r, rig.clock, lambda url, auth: Counted(url, auth))


def test_states_and_cpu_are_observed_in_a_fixed_few_calls(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=2)
    vms = rig.vms(envid)
    rig.rpc().onesim.vm.setcpu(rig.sim.auth, vms["m"].vmid, 42.5)
    rig.rpc().onesim.vm.fail(rig.sim.auth, vms["s0"].vmid, "UNKNOWN")
    first = refresh(rig)
    assert Counted.calls == ["vmpool.infoset", "vmpool.infoset"]           # the second: full bodies (tags)
    after = rig.vms(envid)
    assert (after["m"].one_state, after["m"].cpu, after["m"].vm_state, after["m"].lcm_state) == ("runn", 42.5, 3, 3)
    assert (after["s0"].one_state, after["s0"].vm_state, after["s0"].lcm_state) == ("unkn", 3, 16)
    assert after["s1"].one_state == "runn"
    assert all(rec.checked == f"{rec.vmid}@{rig.sim_vm(rec.vmid).stime}" for rec in after.values())
    assert first["changed"] >= 2 and first["endpoints"] == 1 and first["errors"] == 0

    again = refresh(rig)                                                   # nothing new: nothing written
    assert Counted.calls == ["vmpool.infoset"] and again["changed"] == 0 and again["calls"] == 1
    assert rig.vms(envid) == after


def test_a_vm_gone_from_opennebula_or_done_is_missing(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=2)
    vms = rig.vms(envid)
    refresh(rig)
    rig.rpc().onesim.vm.fail(rig.sim.auth, vms["s0"].vmid, "vanish")     # not in the infoset answer at all
    rig.rpc().one.vm.action(rig.sim.auth, "terminate-hard", vms["s1"].vmid)
    for _ in range(5):
        with rig.sim.model.lock:
            simlife.tick(rig.sim.model)
    assert rig.sim_vm(vms["s1"].vmid).state == S.DONE                      # infoset still answers DONE VMs
    refresh(rig)
    after = rig.vms(envid)
    assert after["s0"].one_state == "missing" and after["s1"].one_state == "missing"
    assert after["s0"].vm_state == 3 and after["s0"].cpu == vms["s0"].cpu  # the last numbers are kept
    assert after["m"].one_state == "runn"


def test_a_vm_id_with_another_owners_tags_is_missing(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    vms = rig.vms(envid)
    retag(rig, vms["m"].vmid, CARINA_ENVID="99", CARINA_NONCE="someone-else")
    refresh(rig)
    after = rig.vms(envid)
    assert after["m"].one_state == "missing" and after["m"].checked == ""
    assert after["s0"].one_state == "runn" and after["s0"].checked


def test_another_vm_at_a_checked_id_is_checked_again(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    refresh(rig)
    slave = rig.vms(envid)["s0"]
    assert slave.one_state == "runn" and slave.checked
    vm = rig.sim_vm(slave.vmid)                                            # a reset cloud: same id, new VM
    with rig.sim.model.lock:
        vm.stime += 3600
    retag(rig, slave.vmid, CARINA_ENVID="77", CARINA_NONCE="other")
    refresh(rig)
    assert "vmpool.infoset" in Counted.calls and Counted.calls.count("vmpool.infoset") == 2
    assert rig.vms(envid)["s0"].one_state == "missing"


def test_an_environment_a_step_holds_is_left_for_the_next_minute(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    refresh(rig)
    vms = rig.vms(envid)
    rig.rpc().onesim.vm.setcpu(rig.sim.auth, vms["m"].vmid, 77.0)
    with guards.env_lock(rig.r, envid) as token:
        assert token
        stats = refresh(rig)
        assert stats["busy"] == 1 and rig.vms(envid)["m"].cpu == vms["m"].cpu
    refresh(rig)
    assert rig.vms(envid)["m"].cpu == 77.0


def test_only_the_observed_fields_are_written_and_only_if_unchanged_since_read(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    (seen,) = [s for s in observed.records(rig.r, [envid])[envid] if s.slot == "m"]  # type: ignore[union-attr]
    rec = rig.vms(envid)["m"]
    rec.status = "CHANGED_MEANWHILE"
    envstore.put_vm(rig.r, envid, rec)                     # a callback wrote another field after the read
    new = (seen.vmid, "unkn", "3", "16", f"{seen.vmid}@1", "10.0.0.9")
    assert observed.write(rig.r, {envid: [("m", seen.written(), new)]}) == {envid: 1}
    after = rig.vms(envid)["m"]
    assert (after.status, after.one_state, after.lcm_state, after.checked, after.one_ip) == \
        ("CHANGED_MEANWHILE", "unkn", 16, f"{seen.vmid}@1", "10.0.0.9")
    assert after.nonce == rec.nonce and after.ip == rec.ip

    rec = after
    rec.one_state = "missing"                              # the engine judged the VM meanwhile
    envstore.put_vm(rig.r, envid, rec)
    stale = observed.write(rig.r, {envid: [("m", new, (seen.vmid, "runn", "3", "3", new[4], new[5]))]})
    assert stale == {envid: 0} and rig.vms(envid)["m"].one_state == "missing"
    with pytest.raises(ValueError):
        observed.write(rig.r, {envid: [("m", new, (seen.vmid, 'x", "evil": "1', "3", "3", "", ""))]})


def test_a_record_without_a_checked_field_gets_one(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    data = json.loads(rig.r.hget(keys.env_vms(envid), "s0"))
    del data["checked"]                                    # written before the field existed
    rig.r.hset(keys.env_vms(envid), "s0", json.dumps(data, sort_keys=True))
    refresh(rig)
    after = json.loads(rig.r.hget(keys.env_vms(envid), "s0"))
    assert after["checked"] == f"{data['vmid']}@{rig.sim_vm(data['vmid']).stime}"
    assert {k: v for k, v in after.items() if k != "checked"} == dict(data, one_state="runn")


def test_tag_checks_past_the_budget_wait_for_the_next_minute(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=2)
    monkeypatch.setattr(refresh_mod, "OWNER_SLICE", 2)
    monkeypatch.setattr(refresh_mod, "OWNER_SLICES", 1)
    first = refresh(rig)
    assert first["unchecked"] == 1 and Counted.calls.count("vmpool.infoset") == 2
    assert sum(1 for rec in rig.vms(envid).values() if rec.checked) == 2
    second = refresh(rig)
    assert second["unchecked"] == 0 and all(rec.checked for rec in rig.vms(envid).values())


def test_many_ids_are_asked_in_slices(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=2)
    refresh(rig)
    monkeypatch.setattr(one_mod, "INFOSET_SLICE", 2)
    rig.rpc().onesim.vm.fail(rig.sim.auth, rig.vms(envid)["s1"].vmid, "UNKNOWN")
    refresh(rig)
    assert Counted.calls == ["vmpool.infoset", "vmpool.infoset"]
    assert [rig.vms(envid)[s].one_state for s in ("m", "s0", "s1")] == ["runn", "runn", "unkn"]


def test_the_simulators_infoset_answer_is_read_from_the_wire(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=2)
    ids = sorted(rec.vmid for rec in rig.vms(envid).values() if rec.vmid is not None)
    client = OneClient(rig.sim.url, rig.sim.auth)
    body = client._server.raw_request("one.vmpool.infoset", (rig.sim.auth, ",".join(map(str, ids)), False))
    fast = fastxml.short_rows(body, ids)
    assert fast is not None and [r.vmid for r in fast] == ids
    assert fast == fastxml.vm_rows(fastxml.document(fastxml.envelope(body)[1]), ids)


def test_a_new_cpu_figure_goes_to_env_cpu_and_leaves_the_records_as_they_are(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    refresh(rig)
    vms = rig.vms(envid)
    texts = rig.r.hgetall(keys.env_vms(envid))
    rig.rpc().onesim.vm.setcpu(rig.sim.auth, vms["s0"].vmid, 61.25)
    stats = refresh(rig)
    assert stats["changed"] == 0 and stats["cpu"] == 1
    assert rig.r.hgetall(keys.env_vms(envid)) == texts                     # no record rewritten for a CPU
    figures = observed.cpu_figures(rig.r.get(keys.env_cpu(envid)))
    assert figures["s0"] == [vms["s0"].vmid, 61.25] and set(figures) == {"m", "s0"}
    assert 0 < rig.r.ttl(keys.env_cpu(envid)) <= observed.CPU_TTL
    assert rig.vms(envid)["s0"].cpu == 61.25                               # readers get the figure

    figures["s0"] = [999999, 88.0]                                         # a figure of another VM at the slot
    rig.r.set(keys.env_cpu(envid), json.dumps(figures))
    assert rig.vms(envid)["s0"].cpu == vms["s0"].cpu
    envstore.delete_env(rig.r, envid)
    assert not rig.r.exists(keys.env_cpu(envid))


def test_the_records_handed_to_the_policy_pass_are_those_a_read_after_the_refresh_gives(rig: Rig) -> None:
    from functions.store import policystore
    from functions.upkeep import policyread

    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=3)
    vms = rig.vms(envid)
    rig.rpc().onesim.vm.setcpu(rig.sim.auth, vms["m"].vmid, 55.5)
    rig.rpc().onesim.vm.fail(rig.sim.auth, vms["s0"].vmid, "UNKNOWN")
    rig.rpc().onesim.vm.fail(rig.sim.auth, vms["s1"].vmid, "vanish")
    rig.callback(envid, "s2", "SLAVE_2_INIT_FAIL:disk")
    handed: list[Any] = []
    for _ in range(2):                                     # the first minute checks tags, the second is steady
        stats, known = refresh_mod.refresh(rig.r, rig.clock, lambda url, auth: OneClient(url, auth))
        (read,) = policystore.read_envs(rig.r, [envid], policyread.READ_FIELDS)

        def obs(records: list[dict[str, Any]]) -> list[Any]:
            return sorted((policyread.vm_obs(rec) for rec in records), key=lambda o: o.slot if o else "")
        assert obs(known[envid].records) == obs(read.vms)
        assert {o.slot: o.cls for o in obs(known[envid].records) if o} == {"m": "running", "s0": "unknown",
                                                                           "s1": "missing", "s2": "failed"}
        assert stats["endpoints"] == 1
        handed.append(known[envid].vms)
    # the first minute checks tags (the pass makes the observations), the steady one hands them over, as made
    assert handed[0] is None and sorted(handed[1], key=lambda o: o.slot) == [o for o in obs(read.vms) if o]


def test_an_env_a_step_holds_is_not_handed_to_the_policy_pass(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    with guards.env_lock(rig.r, envid) as token:
        assert token
        _, known = refresh_mod.refresh(rig.r, rig.clock, lambda url, auth: OneClient(url, auth))
    assert envid not in known
    _, known = refresh_mod.refresh(rig.r, rig.clock, lambda url, auth: OneClient(url, auth))
    assert sorted(rec["slot"] for rec in known[envid].records) == ["m", "s0"]


def test_an_env_whose_write_did_not_land_is_read_again_by_the_policy_pass(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    refresh(rig)
    rig.rpc().onesim.vm.fail(rig.sim.auth, rig.vms(envid)["s0"].vmid, "UNKNOWN")

    class Racing(OneClient):
        """Another writer changes the slave's record while OpenNebula answers."""

        def observe_rows(self, vmids: Any) -> Any:
            got = super().observe_rows(vmids)
            rec = rig.vms(envid)["s0"]
            rec.one_state = "missing"
            envstore.put_vm(rig.r, envid, rec)
            return got
    stats, known = refresh_mod.refresh(rig.r, rig.clock, lambda url, auth: Racing(url, auth))
    assert stats["changed"] == 0 and envid not in known
    assert rig.vms(envid)["s0"].one_state == "missing"


def test_several_endpoints_are_observed_while_the_next_ones_records_are_read(rig: Rig) -> None:
    """Three (proxy, credentials) groups: two URLs of the same simulator and one nobody answers. Each group is
    asked in a thread while the next group's records are read; the answering ones are written, the other is an
    error and its records stay as they were."""
    a, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    b, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    c, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    rig.r.hset(keys.env(b), "proxy", rig.sim.url.replace("127.0.0.1", "localhost"))
    rig.r.hset(keys.env(c), "proxy", "http://127.0.0.1:9/RPC2")
    for envid in (a, b, c):
        rig.rpc().onesim.vm.setcpu(rig.sim.auth, rig.vms(envid)["s0"].vmid, 33.0)
    before_c = rig.vms(c)
    stats, known = refresh_mod.refresh(rig.r, rig.clock, lambda url, auth: OneClient(url, auth))
    assert (stats["endpoints"], stats["errors"]) == (2, 1)
    assert rig.vms(a)["s0"].cpu == 33.0 and rig.vms(b)["s0"].cpu == 33.0 and rig.vms(c) == before_c
    assert {a, b, c} <= set(known) and rig.vms(a)["m"].checked and not before_c["m"].checked


def test_cpu_figures_of_a_deleted_env_are_not_written(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    other, _ = create_ready(rig, master_setup_time=0, num_slaves=0)
    envstore.delete_env(rig.r, envid)                      # deleted between the refresh's read and its write
    assert observed.write_cpu(rig.r, {envid: {"m": [1, 50.0]}, other: {"m": [7, 12.5]}}) == 1
    assert not rig.r.exists(keys.env_cpu(envid))
    assert observed.cpu_figures(rig.r.get(keys.env_cpu(other))) == {"m": [7, 12.5]}


def test_a_cpu_figure_that_stays_the_same_stays_past_the_ttl(rig: Rig) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    rig.rpc().onesim.vm.setcpu(rig.sim.auth, rig.vms(envid)["s0"].vmid, 12.0)
    refresh(rig)
    rig.r.expire(keys.env_cpu(envid), 5)                   # about to expire: the next minute renews it
    stats = refresh(rig)
    assert stats["cpu"] == 0 and rig.r.ttl(keys.env_cpu(envid)) > 5
    assert rig.vms(envid)["s0"].cpu == 12.0


def test_a_big_answer_is_read_by_a_helper_process_with_the_same_rows(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=2)
    vms = rig.vms(envid)
    rig.rpc().onesim.vm.setcpu(rig.sim.auth, vms["s1"].vmid, 12.5)
    ids = [rec.vmid for rec in vms.values()] + [987654]
    here = OneClient(rig.sim.url, rig.sim.auth).observe_rows(ids)
    monkeypatch.setattr(offload, "MIN_IDS", 1)
    there = offload.observe_rows(rig.sim.url, rig.sim.auth, ids)
    assert there == here and there[vms["s1"].vmid].cpu == 12.5 and 987654 not in there
    assert offload.helper_pids() and os.getpid() not in offload.helper_pids()
    with pytest.raises(one_mod.OneUnavailable):
        offload.observe_rows("http://127.0.0.1:9/RPC2", rig.sim.auth, ids)
    stats = ticks.refresh_vms(rig.r, rig.clock)               # the real client: the helper reads for the refresh
    assert (stats["endpoints"], stats["errors"]) == (1, 0) and rig.vms(envid)["s1"].cpu == 12.5


def test_the_policy_pass_reads_ahead_while_opennebula_answers_and_a_change_meanwhile_is_not_overwritten(
        rig: Rig) -> None:
    """The tick gives the refresh the policy pass's own reads (policies.Pass.read_ahead) as `meanwhile`: they run
    once every endpoint is asked and before an answer is used (here the answer waits for them). The pass then
    decides from them; an env whose policy state changed since (a create ending, another pass) is not
    overwritten."""
    import threading

    from functions.upkeep import policies

    a, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    b, _ = create_ready(rig, master_setup_time=0, num_slaves=1)
    read_ahead = threading.Event()
    step = policies.Pass(rig.r, rig.queue, rig.clock)

    class Waiting(OneClient):
        def observe_rows(self, vmids: Any) -> Any:
            assert read_ahead.wait(20), "the policy pass's reads did not run while OpenNebula answered"
            return super().observe_rows(vmids)

    def meanwhile() -> None:
        step.read_ahead()
        read_ahead.set()
    stats, known = refresh_mod.refresh(rig.r, rig.clock, lambda url, auth: Waiting(url, auth), meanwhile=meanwhile)
    assert stats["endpoints"] == 1 and {a, b} <= set(known)
    (svc,) = step.services.values()
    assert svc.count == 2 and sorted(env.envid for env in svc.envs) == sorted([a, b])
    assert not any(env.vms for env in svc.envs)
    rig.r.hset(keys.env(b), "pol_minute", "12345")                       # changed after the pass read it
    out = step.finish(known)
    assert (out["envs"], out["evaluated"], out["written"], out["changed_meanwhile"]) == (2, 2, 1, 1)
    assert rig.r.hget(keys.env(b), "pol_minute") == "12345"
    assert rig.r.hget(keys.env(a), "pol_minute") == str(int(rig.clock() // 60))
    assert not step.services                                              # each read used once
