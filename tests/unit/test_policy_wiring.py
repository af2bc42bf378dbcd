"""The policy pass's pure parts: a stored VM record as the policies see it, and the order of decisions in a
failover group (functions/upkeep/policies.py; no Redis here)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from functions.policy import PolicyState, VmObs, classify, classify_short
from functions.policy.vmclass import CLASSES, FAILED, MISSING, OTHER, RUNNING, STARTING, UNKNOWN
from functions.store.policystore import EnvRead
from functions.upkeep import policies, policyread
from tests.unit.policy_helpers import T0, avail_policy

BASE = {"slot": "s2", "role": "slave", "vmid": 12, "state": "announced", "one_state": "runn", "vm_state": 3,
        "lcm_state": 3, "cpu": 42.5, "created": 100.0, "origin": ""}


def _obs(**over: Any) -> Any:
    return policyread.vm_obs({**BASE, **over})


def test_vm_obs_reads_the_numbers_first_then_the_short_code() -> None:
    vm = _obs()
    assert (vm.slot, vm.role, vm.cls, vm.cpu, vm.created, vm.by_policy) == ("s2", "slave", RUNNING, 42.5, 100.0,
                                                                           False)
    assert _obs(lcm_state=19, one_state="boot").cls == UNKNOWN       # BOOT_UNKNOWN: exact from the numbers
    assert _obs(vm_state=-1, lcm_state=-1, one_state="boot").cls == STARTING   # an old record: short code
    assert _obs(lcm_state=36, one_state="fail").cls == FAILED
    assert _obs(one_state="missing").cls == MISSING                  # gone from the pool wins over old numbers
    assert _obs(vmid=None, one_state="").cls == STARTING             # an intent not allocated yet
    assert _obs(vm_state=5, one_state="susp").cls == OTHER
    assert _obs(state="removing") is None                            # on its way out: not held
    assert _obs(cpu=-1).cpu is None and _obs(cpu="7").cpu == 7.0 and _obs(cpu="x").cpu is None
    assert _obs(origin="policy").by_policy is True


def test_a_vm_that_reported_its_init_failed_counts_as_failed() -> None:
    assert _obs(init="fail:SLAVE_2_INIT_FAIL:disk").cls == FAILED    # running, but its init failed
    assert _obs(init="done").cls == RUNNING
    assert _obs(init="fail:x", one_state="missing").cls == MISSING


@given(st.dictionaries(st.sampled_from(sorted(BASE)), st.none() | st.integers(-5, 80) | st.floats() | st.text(
    max_size=8)))
def test_vm_obs_never_raises_on_garbage(over: dict[str, Any]) -> None:
    vm = policyread.vm_obs({**BASE, **over})
    assert vm is None or vm.cls in CLASSES


def _reference(rec: dict[str, Any]) -> VmObs | None:
    """vm_obs as it was written before its class was cached: every record classified from scratch."""
    if rec.get("state") in ("removing", "gone"):
        return None
    one_state, vm_state = rec.get("one_state") or "", rec.get("vm_state")
    if rec.get("vmid") is None:
        cls = STARTING
    elif one_state in ("missing", "done"):
        cls = MISSING
    elif type(vm_state) is int and vm_state >= 0:
        lcm = rec.get("lcm_state")
        cls = classify(vm_state, lcm if type(lcm) is int and lcm >= 0 else None, True)
    else:
        cls = classify_short(str(one_state))
    if cls != MISSING and str(rec.get("init") or "").startswith("fail:"):
        cls = FAILED
    cpu, created, slot, role = rec.get("cpu"), rec.get("created"), rec.get("slot") or "", rec.get("role") or ""
    cpu = cpu if type(cpu) in (int, float) else policyread.number(cpu, -1.0)
    created = created if type(created) in (int, float) else policyread.number(created, 0.0)
    return VmObs(str(slot), str(role), cls, cpu if cpu >= 0 else None, created, rec.get("origin") == "policy")


_ANY = (st.none() | st.booleans() | st.integers(-3, 80) | st.floats() | st.text(max_size=8)
        | st.sampled_from(["runn", "unkn", "fail", "boot", "missing", "done", "RUNN ", "fail:x", "policy", ""])
        | st.lists(st.integers(), max_size=2))


@given(st.lists(st.dictionaries(st.sampled_from([*sorted(BASE), "init"]), _ANY), min_size=1, max_size=8))
def test_vm_obs_with_its_cached_class_equals_the_plain_classification(overs: list[dict[str, Any]]) -> None:
    for over in overs:                       # several records per example: the cache is filled in between
        rec = {**BASE, **over}
        assert policyread.vm_obs(rec) == _reference(rec)
        assert policyread.vm_obs(rec) == _reference(rec)   # a cached class is the same again


@given(st.dictionaries(st.sampled_from([*sorted(BASE), "init"]), _ANY),
       st.integers(-3, 200) | st.floats(allow_nan=True, allow_infinity=True))
def test_a_new_cpu_on_an_observation_equals_observing_the_record_with_it(over: dict[str, Any],
                                                                        cpu: float) -> None:
    rec = {**BASE, **over}                   # the refresh's fast path: a record unchanged but for its CPU
    before = policyread.vm_obs(rec)
    if before is not None:
        assert before.with_cpu(cpu) == policyread.vm_obs({**rec, "cpu": cpu})


def _env(envid: str, status: str, availability: dict[str, Any], cls: str = RUNNING) -> Any:
    fields = {"service": "svc", "name": "x", "policy_status": status, "pol_minute": "1"}
    env = policyread.Env(EnvRead(envid, fields, [], None), PolicyState.from_fields(fields), None, availability,
                        "current")
    env.vms = (_obs(slot="m", role="master", vm_state=3, lcm_state=16 if cls == UNKNOWN else 3, created=0.0),)
    return env


def test_actives_are_decided_before_passives_whatever_the_order() -> None:
    active = avail_policy(period=1, failover_role="active", failover_group="g", failover_expr="numunknown > 0",
                          failback_expr="numunknown == 0")
    passive = avail_policy(period=1, failover_role="passive", failover_group="g")
    envs = [_env("9", "PASSIVE", passive), _env("3", "ACTIVE", active, UNKNOWN)]   # passive listed first
    decisions = policies._decide_all(envs, T0, int(T0 // 60), 0.0)
    assert decisions["3"].state.status == "FAILED"
    assert decisions["9"].state.status == "ACTIVE"                   # followed its partner in the same minute
    assert decisions["9"].transition == ("PASSIVE", "ACTIVE")
