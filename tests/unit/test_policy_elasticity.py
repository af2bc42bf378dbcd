"""Elasticity through decide: time windows, auto counters, bounds, cooldown, busy, one VM per tick."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from functions.policy import EnvInputs, PolicyState, decide
from functions.policy.actions import SCALEDOWN, SCALEUP
from functions.policy.vmclass import RUNNING
from tests.unit.policy_helpers import Runner, auto_policy, env_vms, time_policy, vm

GUIDE_WINDOWS = {"morn": {"spec": "Mon-Fri 0900-1300", "min": 6}, "aft": {"spec": "Mon-Fri 1300-1700", "min": 4},
                 "night": {"spec": "Mon-Fri 0000-0859 1700-2359", "min": 2}}


def at(day: int, hour: int, minute: int = 0) -> float:
    """Epoch seconds of 2024-01-(7+day) hour:minute UTC; day 0 = Sunday."""
    return datetime(2024, 1, 7 + day, hour, minute, tzinfo=UTC).timestamp()


# ---------------------------------------------------------------- time-based

def test_time_based_scales_one_vm_per_tick_towards_the_window_min() -> None:
    run = Runner(elasticity=time_policy(GUIDE_WINDOWS), now=at(2, 10))     # Tue 10:00 -> morn, min 6
    d = run.tick(env_vms(2))
    assert d.action is not None and d.action.kind == SCALEUP and d.action.slots == ()
    assert d.info == "POLICY_STATUS: Scaling up to meet minimum 6 for time window morn"
    assert run.tick(env_vms(5)).action.kind == SCALEUP
    assert run.tick(env_vms(6)).action is None
    run.now = at(2, 14)                                                     # aft, min 4
    d = run.tick(env_vms(6))
    assert d.action.kind == SCALEDOWN and d.action.slots == ("s4",)
    assert "Scaling down to meet minimum 4 for time window aft" in d.info


def test_time_based_scale_down_prefers_policy_added_vms_then_highest_slot() -> None:
    run = Runner(elasticity=time_policy({"all": {"spec": "", "min": 2}}))
    vms = [vm("m"), vm("s0"), vm("s1", by_policy=True), vm("s2")]
    assert run.tick(vms).action.slots == ("s1",)
    assert run.tick([vm("m"), vm("s0"), vm("s3")]).action.slots == ("s3",)


def test_time_based_no_window_keeps_the_size_unless_the_policy_has_a_min() -> None:
    sat = at(6, 10)
    run = Runner(elasticity=time_policy(GUIDE_WINDOWS), now=sat)
    d = run.tick(env_vms(5))
    assert d.action is None and "No time window matches" in d.info
    run = Runner(elasticity=time_policy(GUIDE_WINDOWS, min=3), now=sat)
    assert run.tick(env_vms(5)).action.kind == SCALEDOWN
    assert run.tick(env_vms(1)).action.kind == SCALEUP


def test_time_based_uses_the_policy_time_zone() -> None:
    policy = time_policy({"morn": {"spec": "Mon-Fri 0900-1300", "min": 3}}, timezone="Asia/Kolkata")
    run = Runner(elasticity=policy, now=at(2, 4))                           # 04:00 UTC = 09:30 in Kolkata
    assert run.tick(env_vms(1)).action.kind == SCALEUP
    run = Runner(elasticity=policy, now=at(2, 9))                           # 14:30 in Kolkata
    assert run.tick(env_vms(1)).action is None


def test_elasticity_only_for_active_environments() -> None:
    for status in ("PASSIVE", "FAILED", "INIT"):
        run = Runner(elasticity=time_policy({"all": {"spec": "", "min": 4}}),
                     availability={"period": 1, "failover_role": "active" if status == "FAILED" else "passive",
                                   "failover_group": "g"} if status != "INIT" else None,
                     state=PolicyState(status=status))
        d = run.tick(env_vms(1))
        assert d.action is None, status


# ---------------------------------------------------------------- auto

def test_auto_acts_on_the_period_th_consecutive_true_tick_and_counter_resets_on_false() -> None:
    run = Runner(elasticity=auto_policy(period=3))
    hot, calm = env_vms(3, cpu=80), env_vms(3, cpu=35)
    assert [run.tick(hot).action for _ in range(2)] == [None, None]
    assert run.state.up == 2 and run.state.metrics == "avgcpu[80]"
    assert run.tick(calm).action is None and run.state.up == 0                 # reset
    assert [run.tick(hot).action for _ in range(2)] == [None, None]
    d = run.tick(hot)
    assert d.action.kind == SCALEUP and run.state.up == 0
    assert "scaleup_expr true for 3 consecutive ticks" in d.info


def test_auto_one_counter_per_direction() -> None:
    run = Runner(elasticity=auto_policy(period=2))
    run.tick(env_vms(3, cpu=80))
    assert (run.state.up, run.state.down) == (1, 0)
    run.tick(env_vms(3, cpu=10))
    assert (run.state.up, run.state.down) == (0, 1)
    d = run.tick(env_vms(3, cpu=10))
    assert d.action.kind == SCALEDOWN and d.action.slots == ("s1",)


def test_auto_bounds_act_at_once_and_caps_hold() -> None:
    run = Runner(elasticity=auto_policy(min=3, max=4, period=5))
    assert run.tick(env_vms(2, cpu=30)).action.kind == SCALEUP             # below min, no waiting
    assert run.tick(env_vms(5, cpu=30)).action.kind == SCALEDOWN           # above max
    for _ in range(5):
        d = run.tick(env_vms(4, cpu=90))
    assert d.action is None and "already at maximum 4" in d.info and run.state.up == 5
    d = run.tick(env_vms(3, cpu=90))                                        # a VM went away: armed counter acts
    assert d.action.kind == SCALEUP


def test_auto_missing_max_is_no_limit() -> None:
    run = Runner(elasticity=auto_policy(max=None, period=1))
    assert run.tick(env_vms(40, cpu=90)).action.kind == SCALEUP


def test_both_true_does_nothing_with_a_message() -> None:
    run = Runner(elasticity=auto_policy(period=1, scaleup_expr="avgcpu > 10", scaledown_expr="avgcpu < 90"))
    d = run.tick(env_vms(3, cpu=50))
    assert d.action is None and "both true" in d.info and (run.state.up, run.state.down) == (0, 0)


def test_division_by_zero_in_a_policy_is_false_with_a_message() -> None:
    run = Runner(elasticity=auto_policy(period=1, scaleup_expr="avgcpu / (numvms - 3) > 1"))
    d = run.tick(env_vms(3, cpu=50))
    assert d.action is None and "division by zero" in d.info


def test_no_cpu_data_means_no_load_scaling() -> None:
    run = Runner(elasticity=auto_policy(period=1))
    d = run.tick(env_vms(3, cpu=None))
    assert d.action is None and run.state.metrics == "avgcpu[-]" and "no value for avgcpu" in d.info


def test_cooldown_after_an_action_and_after_any_operation() -> None:
    run = Runner(elasticity=auto_policy(period=1, cooldown=300))
    hot = env_vms(3, cpu=90)
    assert run.tick(hot).action is not None
    blocked = [run.tick(hot) for _ in range(4)]
    assert all(d.action is None for d in blocked) and "cooldown" in blocked[-1].info
    assert run.tick(hot).action is not None                                # 300 s after the action
    run.tick(hot, op_ended_at=run.now - 10)
    assert run.actions[-1] is None


def test_busy_blocks_actions_but_counters_advance() -> None:
    run = Runner(elasticity=auto_policy(period=2))
    hot = env_vms(3, cpu=90)
    for _ in range(4):
        d = run.tick(hot, busy=True)
        assert d.action is None
    assert run.state.up == 2 and "operation is in progress" in d.info
    assert run.tick(hot).action.kind == SCALEUP                            # first free tick


def test_same_minute_twice_acts_once() -> None:
    inputs = EnvInputs("1", auto_policy(period=1), None, 1, tuple(env_vms(3, cpu=90)))
    now = at(2, 10, 30)
    first = decide(inputs, PolicyState(status="ACTIVE"), now)
    assert first.action is not None and first.evaluated
    again = decide(inputs, first.state, now + 20)                         # same minute
    assert again.action is None and not again.evaluated and again.state == first.state
    older = decide(inputs, first.state, now - 60)
    assert older.action is None and older.state == first.state
    assert decide(inputs, first.state, now + 60).evaluated


# ---------------------------------------------------------------- properties

def model(trues: list[bool], period: int) -> list[bool]:
    """Reference: act on the period-th consecutive true tick, then start counting again."""
    run, out = 0, []
    for true in trues:
        run = run + 1 if true else 0
        out.append(run >= period)
        if run >= period:
            run = 0
    return out


@settings(max_examples=80, deadline=None)
@given(st.lists(st.booleans(), max_size=30), st.integers(1, 6))
def test_counters_follow_the_consecutive_reference(trues: list[bool], period: int) -> None:
    run = Runner(elasticity=auto_policy(period=period, min=1, max=100))
    acted = [run.tick(env_vms(3, cpu=90 if t else 30)).action is not None for t in trues]
    assert acted == model(trues, period)
    assert all(a is None or a.kind == SCALEUP for a in run.actions)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 12), st.sampled_from([5, 30, 60, 90]), st.booleans(),
                          st.integers(0, 1)), min_size=1, max_size=25),
       st.integers(1, 4), st.sampled_from([0, 60, 150, 600]))
def test_never_before_period_never_in_cooldown_never_while_busy(ticks: list[tuple[int, int, bool, int]],
                                                                period: int, cooldown: int) -> None:
    run = Runner(elasticity=auto_policy(period=period, min=2, max=8, cooldown=cooldown))
    last_action, streak_up, streak_down = -1e18, 0, 0
    for size, cpu, busy, by_policy in ticks:
        vms = [vm("m", RUNNING, cpu)] + [vm(f"s{i}", RUNNING, cpu, by_policy=bool(by_policy and i % 2))
                                         for i in range(size - 1)]
        now = run.now
        streak_up = streak_up + 1 if cpu > 50 else 0
        streak_down = streak_down + 1 if cpu < 20 else 0
        d = run.tick(vms, busy=busy)
        assert run.state.up <= period and run.state.down <= period
        if d.action is None:
            continue
        assert not busy and now - last_action >= cooldown
        if d.action.kind == SCALEDOWN:
            assert len(d.action.slots) == 1 and d.action.slots[0] != "m" and size > 2
            assert size > 8 or streak_down >= period
            streak_down = 0
        else:
            assert d.action.slots == () and size < 8
            assert size < 2 or streak_up >= period
            streak_up = 0
        last_action = now
