"""VM classes from OpenNebula's state tables, the expression variables, metrics and the boot grace."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from functions.policy.vmclass import (
    CLASSES,
    FAILED,
    FAILURE_LCM,
    MISSING,
    OTHER,
    RUNNING,
    STARTING,
    UNKNOWN,
    VmObs,
    avgcpu,
    classify,
    classify_short,
    judged,
    metrics,
    variables,
)
from tests.unit.policy_helpers import vm


@pytest.mark.parametrize(("state", "lcm", "present", "cls"), [
    (3, 3, True, RUNNING),            # ACTIVE/RUNNING
    (3, 17, True, RUNNING),           # HOTPLUG: the guest runs
    (1, 0, True, STARTING),           # PENDING
    (2, 0, True, STARTING),           # HOLD
    (3, 1, True, STARTING),           # PROLOG
    (3, 2, True, STARTING),           # BOOT
    (10, 0, True, STARTING),          # CLONING
    (None, None, True, STARTING),     # nothing known yet
    (3, 36, True, FAILED),            # BOOT_FAILURE
    (3, 14, True, FAILED),            # legacy FAILURE
    (7, 0, True, FAILED),             # legacy STATE FAILED
    (11, 0, True, FAILED),            # CLONING_FAILURE
    (3, 16, True, UNKNOWN),           # UNKNOWN (host down)
    (3, 19, True, UNKNOWN),           # BOOT_UNKNOWN
    (6, 0, True, MISSING),            # DONE
    (3, 3, False, MISSING),           # absent from the pool
    (None, None, False, MISSING),
    (8, 0, True, OTHER),              # POWEROFF
    (4, 0, True, OTHER),              # STOPPED
    (3, 12, True, OTHER),             # SHUTDOWN
    (3, 11, True, OTHER),             # EPILOG
])
def test_classify_table(state: int | None, lcm: int | None, present: bool, cls: str) -> None:
    assert classify(state, lcm, present) == cls


@pytest.mark.parametrize("lcm", sorted(FAILURE_LCM))
def test_every_failure_lcm_state_is_failed(lcm: int) -> None:
    assert classify(3, lcm, True) == FAILED


@given(st.one_of(st.none(), st.integers(-5, 100)), st.one_of(st.none(), st.integers(-5, 100)), st.booleans())
def test_classify_is_total(state: int | None, lcm: int | None, present: bool) -> None:
    assert classify(state, lcm, present) in CLASSES


@pytest.mark.parametrize(("short", "cls"), [
    ("runn", RUNNING), ("unkn", UNKNOWN), ("fail", FAILED), ("missing", MISSING), ("done", MISSING),
    ("boot", STARTING), ("pend", STARTING), ("", STARTING), (None, STARTING), ("poff", OTHER),
    ("shut", OTHER), ("RUNN", RUNNING), ("garbage", OTHER),
])
def test_classify_short_codes_as_ticks_store_them(short: str | None, cls: str) -> None:
    assert classify_short(short) == cls


def test_variables_count_every_vm_held_and_average_running_cpu() -> None:
    vms = [vm("m", RUNNING, 80), vm("s0", RUNNING, 40), vm("s1", FAILED, 100), vm("s2", MISSING, None),
           vm("s3", UNKNOWN, 5), vm("s4", STARTING, 99), vm("s5", RUNNING, -1)]
    values = variables(vms)
    assert values == {"numvms": 7, "nummissing": 1, "numunknown": 1, "numfailed": 1, "numfail": 1, "avgcpu": 60}
    assert metrics(values) == "avgcpu[60]"


def test_avgcpu_absent_without_a_running_vm_that_reports() -> None:
    assert "avgcpu" not in variables([vm("m", STARTING, 50), vm("s0", RUNNING, None)])
    assert metrics(variables([])) == "avgcpu[-]"
    assert variables([])["numvms"] == 0


@pytest.mark.parametrize(("cpus", "text"), [([37.5], "avgcpu[37.5]"), ([10, 20, 25], "avgcpu[18.3]"),
                                             ([0], "avgcpu[0]"), ([80, 80], "avgcpu[80]")])
def test_metrics_format(cpus: list[float], text: str) -> None:
    assert metrics(variables([vm(f"s{i}", RUNNING, c) for i, c in enumerate(cpus)])) == text


@given(st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), max_size=8))
def test_avgcpu_ignores_unusable_values(cpus: list[float | None]) -> None:
    result = avgcpu([vm(f"s{i}", RUNNING, c) for i, c in enumerate(cpus)])
    usable = [c for c in cpus if c is not None and math.isfinite(c) and c >= 0]
    if not usable:
        assert result is None
    else:
        assert result is not None and math.isfinite(result)
        assert min(usable) * (1 - 1e-9) <= result <= max(usable) * (1 + 1e-9)


def test_grace_period_hides_young_broken_vms() -> None:
    young = VmObs("s0", "slave", MISSING, None, created=1000.0)
    assert judged(young, now=1000.0 + 299, grace=300).cls == STARTING
    assert judged(young, now=1000.0 + 300, grace=300).cls == MISSING
    running = VmObs("s1", "slave", RUNNING, 10, created=1000.0)
    assert judged(running, now=1001.0, grace=300) == running


def test_slot_index() -> None:
    assert vm("s12").index == 12 and vm("m").index == -1 and vm("m").is_master
    assert VmObs("x", "slave", RUNNING).index == -1


def test_a_vm_observation_is_immutable_and_judged_gives_a_new_one() -> None:
    obs = vm("s1", FAILED, created=100.0)
    with pytest.raises(AttributeError):
        obs.cls = RUNNING  # type: ignore[misc]
    young = judged(obs, 150.0, 300.0)
    assert (young.cls, obs.cls) == (STARTING, FAILED) and young == VmObs("s1", "slave", STARTING, 50.0, 100.0)
    assert judged(obs, 500.0, 300.0) is obs


_cpus = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                  st.sampled_from(["7", "x", -0.0]))


@given(st.lists(st.tuples(st.sampled_from(CLASSES), _cpus), max_size=12))
def test_variables_in_one_pass_equal_the_counts_and_avgcpu(spec: list[tuple[str, object]]) -> None:
    vms = [vm(f"s{i}", cls, cpu) for i, (cls, cpu) in enumerate(spec)]  # type: ignore[arg-type]
    expected: dict[str, float] = {"numvms": len(vms)}
    for name, cls in (("nummissing", MISSING), ("numunknown", UNKNOWN), ("numfailed", FAILED)):
        expected[name] = sum(1 for v in vms if v.cls == cls)
    expected["numfail"] = expected["numfailed"]
    cpu = avgcpu(vms)
    if cpu is not None:
        expected["avgcpu"] = cpu
    got = variables(vms)
    assert got == expected and list(got) == list(expected)
    assert repr(got.get("avgcpu")) == repr(expected.get("avgcpu"))     # the same float to the last bit
