"""Availability through decide: recreate (master first, grace, busy) and the guide's failover pair."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from functions.conf.schema import load_config
from functions.policy import EnvInputs, Member, PolicyState, decide, group_members, partner_of
from functions.policy.actions import FAILBACK, RECREATE, SCALEDOWN, SCALEUP
from functions.policy.failover import pair_up, passive_status
from functions.policy.vmclass import FAILED, MISSING, RUNNING, STARTING, UNKNOWN, VmObs
from tests.unit.policy_helpers import T0, Runner, avail_policy, env_vms, vm

ROOT = Path(__file__).resolve().parents[2]
RECREATE_EXPR = "nummissing > 0 || numunknown > 0 || numfailed > 0"


def guide_pair() -> tuple[dict[str, Any], dict[str, Any]]:
    """The guide's HA pair from the example config.rb, normalized by confschema."""
    config = load_config((ROOT / "config/examples/config.rb").read_text(), "rb", {"example.vm", "cassandra.vm"})
    envs = config["ENVIRONMENT"]
    return envs["tomcat_ha_active"], envs["tomcat_ha_passive"]


# ---------------------------------------------------------------- recreate

def test_recreate_on_the_period_th_true_tick_in_its_own_slot() -> None:
    run = Runner(availability=avail_policy(recreate_expr=RECREATE_EXPR, period=3))
    vms = [vm("m"), vm("s0", MISSING), vm("s1"), vm("s2", FAILED)]
    assert [run.tick(vms).action for _ in range(2)] == [None, None]
    assert "counter=2 period=3" in run.state.info
    d = run.tick(vms)
    assert d.action.kind == RECREATE and d.action.slots == ("s0", "s2") and d.action.source == "availability"
    assert d.info == "AVAIL_POLICY_STATUS: Recreating VM s0, s2" and run.state.recreate == 0


def test_recreate_counter_resets_when_false() -> None:
    run = Runner(availability=avail_policy(recreate_expr=RECREATE_EXPR, period=2))
    broken, healthy = [vm("m"), vm("s0", UNKNOWN)], [vm("m"), vm("s0")]
    run.tick(broken)
    run.tick(healthy)
    assert run.tick(broken).action is None and run.state.recreate == 1
    assert run.tick(broken).action.slots == ("s0",)


def test_a_lost_master_is_recreated_first_and_slaves_wait_for_it() -> None:
    run = Runner(availability=avail_policy(recreate_expr=RECREATE_EXPR, period=1))
    d = run.tick([vm("m", MISSING), vm("s0", MISSING), vm("s1")])
    assert d.action.slots == ("m",)
    rebuilding = [vm("m", STARTING, created=run.now - 5), vm("s0", MISSING), vm("s1")]
    d = run.tick(rebuilding)
    assert d.action is None and "waiting for the master" in d.info and run.state.recreate == 1
    d = run.tick([vm("m", RUNNING), vm("s0", MISSING), vm("s1")])
    assert d.action.slots == ("s0",)


def test_grace_period_vms_are_not_judged() -> None:
    run = Runner(availability=avail_policy(recreate_expr=RECREATE_EXPR, period=1))
    young = [vm("m"), vm("s0", MISSING, created=T0 - 100)]
    assert run.tick(young, grace=300).action is None and run.state.recreate == 0
    run.now = T0 + 200                                                      # now 300 s old
    assert run.tick(young, grace=300).action.slots == ("s0",)


def test_recreate_waits_for_a_running_operation_and_then_acts() -> None:
    run = Runner(availability=avail_policy(recreate_expr=RECREATE_EXPR, period=1))
    vms = [vm("m"), vm("s0", FAILED)]
    d = run.tick(vms, busy=True)
    assert d.action is None and "when the operation in progress ends" in d.info and run.state.recreate == 1
    assert run.tick(vms).action.slots == ("s0",)


def test_recreate_with_no_target_says_so() -> None:
    run = Runner(availability=avail_policy(recreate_expr="numvms < 5", period=1))
    d = run.tick(env_vms(2))
    assert d.action is None and "could not identify target VM" in d.info and run.state.recreate == 0


def test_availability_acts_before_elasticity_one_action_per_tick() -> None:
    run = Runner(elasticity={"mode": "time-based", "windows": {"all": {"spec": "", "min": 5}}, "timezone": "UTC"},
                 availability=avail_policy(recreate_expr=RECREATE_EXPR, period=1))
    d = run.tick([vm("m"), vm("s0", FAILED)])
    assert d.action.kind == RECREATE and "another policy acted" in " ".join(d.messages)
    assert run.tick([vm("m"), vm("s0")]).action.kind == SCALEUP


def test_recreate_runs_for_passive_and_failed_envs_too() -> None:
    for status, role in (("PASSIVE", "passive"), ("FAILED", "active")):
        run = Runner(availability=avail_policy(recreate_expr=RECREATE_EXPR, period=1, failover_role=role,
                                               failover_group="g"), state=PolicyState(status=status))
        assert run.tick([vm("m"), vm("s0", MISSING)]).action.kind == RECREATE


# ---------------------------------------------------------------- failover / failback, the guide's pair

def test_guide_failover_and_failback_sequence() -> None:
    active_spec, passive_spec = guide_pair()
    a_state, p_state = PolicyState(status="ACTIVE"), PolicyState(status="PASSIVE")
    now = T0

    def tick(a_vms: list[VmObs], p_vms: list[VmObs], busy: bool = False) -> tuple[Any, Any]:
        nonlocal a_state, p_state, now
        group = group_members([("10", active_spec["availability_policy"], a_state.status),
                               ("11", passive_spec["availability_policy"], p_state.status)])["tomcat-ha"]
        a = decide(EnvInputs.from_spec("10", active_spec, a_vms, partner=partner_of("10", group)), a_state, now)
        group = [Member("10", "active", a.state.status), Member("11", "passive", p_state.status)]
        p = decide(EnvInputs.from_spec("11", passive_spec, p_vms, busy=busy, partner=partner_of("11", group)),
                   p_state, now)
        a_state, p_state, now = a.state, p.state, now + 60
        return a, p

    broken = [vm("m", UNKNOWN), vm("s0", UNKNOWN), vm("s1", RUNNING)]        # 2/3 unknown > 0.50
    passive_vms = [vm("m")]
    for n in (1, 2):
        a, p = tick(broken, passive_vms)
        assert a_state.status == "ACTIVE" and f"Failover condition is true counter={n}" in " ".join(a.messages)
    a, p = tick(broken, passive_vms)
    assert a_state.status == "FAILED" and a.transition == ("ACTIVE", "FAILED")
    assert "Declaring environment as FAILED and triggering failover to environment 11" in a.info
    assert p_state.status == "ACTIVE" and "failover of primary environment 10" in " ".join(p.messages)
    # the passive env's time-based window (min 4) scales it out, one VM per tick; the VMs are policy-made
    assert p.action is not None and p.action.kind == SCALEUP and p.action.by_policy
    grown = [vm("m"), vm("s0", by_policy=True), vm("s1", by_policy=True), vm("s2", by_policy=True)]
    a, p = tick(broken, grown)
    assert p.action is None and "meet minimum 4" in p.info
    # failback_expr "numunknown == 0" must hold 3 consecutive ticks
    healed = [vm("m"), vm("s0"), vm("s1")]
    tick(healed, grown)
    tick(broken, grown)                                                      # false again: reset
    assert a_state.failback == 0
    tick(healed, grown)
    tick(healed, grown)
    a, p = tick(healed, grown)
    assert a_state.status == "ACTIVE" and "Failing back environment to ACTIVE" in a.info
    assert p_state.status == "PASSIVE"
    assert "PASSIVE after failing back to primary environment 10" in " ".join(p.messages)
    assert p.action.kind == SCALEDOWN and p.action.slots == ("s2",) and p.action.source == FAILBACK
    a, p = tick(healed, grown[:3], busy=True)
    assert p.action is None and "waiting" in p.info
    a, p = tick(healed, grown[:3])
    assert p.action.slots == ("s1",)
    a, p = tick(healed, [vm("m")])
    assert p.action is None and p_state.status == "PASSIVE"


def test_failover_without_partner_and_failback_without_partner_are_messages() -> None:
    active_spec, _ = guide_pair()
    state, now = PolicyState(status="ACTIVE"), T0
    broken = [vm("m", MISSING, created=-1e9), vm("s0", MISSING, created=-1e9), vm("s1")]
    for _ in range(3):
        d = decide(EnvInputs.from_spec("10", active_spec, broken), state, now)
        state, now = d.state, now + 60
    assert state.status == "FAILED" and "no environment to failover to" in " ".join(d.messages)
    for _ in range(3):
        d = decide(EnvInputs.from_spec("10", active_spec, env_vms(3)), state, now)
        state, now = d.state, now + 60
    assert state.status == "ACTIVE" and "no passive environment" in d.info


def test_passive_rules_for_partner_states() -> None:
    active = Member("1", "active", "ACTIVE")
    assert passive_status("PASSIVE", Member("1", "active", "FAILED"))[0] == "ACTIVE"
    assert passive_status("ACTIVE", Member("1", "active", "FAILED")) == ("ACTIVE", None)
    assert passive_status("ACTIVE", active)[0] == "PASSIVE"
    assert passive_status("PASSIVE", active) == ("PASSIVE", None)
    assert passive_status("ACTIVE", Member("1", "active", "INIT"))[0] == "ACTIVE"   # primary being rebuilt
    status, message = passive_status("ACTIVE", None)                                 # primary removed
    assert status == "ACTIVE" and message and "No active environment" in message
    assert passive_status("READY", None)[0] == "PASSIVE"


def test_pairing_is_by_envid_order_and_ignores_unpaired() -> None:
    members = [Member("12", "active", "ACTIVE"), Member("3", "passive", "PASSIVE"),
               Member("5", "active", "FAILED"), Member("40", "passive", "PASSIVE"), Member("41", "passive", "X")]
    assert pair_up(members) == {"5": "3", "3": "5", "12": "40", "40": "12", "41": None}
    assert pair_up(reversed(members)) == pair_up(members)
    assert partner_of("41", members) is None and partner_of("99", members) is None
    assert group_members([("1", None, "ACTIVE"), ("2", {"failover_role": "passive"}, "PASSIVE"),
                          ("3", {"failover_role": "active", "failover_group": "g"}, "FAILED")]) == \
        {"g": [Member("3", "active", "FAILED")]}


def test_status_normalization() -> None:
    plain = EnvInputs("1", None, None, 1, tuple(env_vms(1)))
    assert decide(plain, PolicyState(status="READY"), T0).state.status == "ACTIVE"
    d = decide(plain, PolicyState(status="FAILED"), T0)
    assert d.state.status == "ACTIVE" and d.transition == ("FAILED", "ACTIVE") and "No failover role" in d.info
    init = decide(plain, PolicyState(status="INIT", up=2), T0)
    assert init.state.status == "INIT" and init.state.up == 2 and init.action is None and init.state.metrics
    passive = EnvInputs("1", None, {"failover_role": "passive", "failover_group": "g"}, 1, tuple(env_vms(1)))
    assert decide(passive, PolicyState(status="READY"), T0).state.status == "PASSIVE"


def test_passive_shrink_never_below_base_nor_removes_create_time_slaves() -> None:
    spec = {"num_slaves": 2, "availability_policy": {"failover_role": "passive", "failover_group": "g"}}
    vms = [vm("m"), vm("s0"), vm("s1"), vm("s2"), vm("s3", by_policy=True)]
    inputs = EnvInputs.from_spec("2", spec, vms)
    assert inputs.base_size == 3
    d = decide(inputs, PolicyState(status="PASSIVE"), T0)
    assert d.action.slots == ("s3",)
    d = decide(EnvInputs.from_spec("2", spec, vms[:4]), PolicyState(status="PASSIVE"), T0)
    assert d.action is None                                                 # s2 was not added by policy
