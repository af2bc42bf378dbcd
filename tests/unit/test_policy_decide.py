"""decide as a whole: never raises on any input, at most one well-formed action, idempotent per minute."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from functions.policy import EnvInputs, Member, PolicyState, VmObs, decide
from functions.policy.actions import KINDS, RECREATE, SCALEDOWN, SCALEUP, Action
from functions.policy.state import STATUSES
from functions.policy.vmclass import BROKEN, CLASSES

EXPRS = ["avgcpu > 50", "avgcpu < 20", "numvms / nummissing > 1", "(numunknown + nummissing + numfail)/numvms > 0.5",
         "numfailed > 0 || nummissing > 0", "!(avgcpu >= 0)", "bad expression ((", "avgcpu / 0 > 1"]
ints = st.one_of(st.none(), st.integers(-2, 12), st.text(max_size=3), st.booleans())
exprs = st.one_of(st.none(), st.sampled_from(EXPRS), st.integers())
windows = st.dictionaries(st.text(max_size=4), st.one_of(
    st.fixed_dictionaries({"spec": st.sampled_from(["", "Mon-Fri 0900-1700", "Sat-Sun", "Monday", "1200"]),
                           "min": ints}), st.none(), st.integers()), max_size=3)
elasticity = st.one_of(st.none(), st.fixed_dictionaries({
    "mode": st.sampled_from(["manual", "time-based", "auto", "bogus"]), "windows": windows, "min": ints, "max": ints,
    "period": ints, "cooldown": ints, "priority": ints, "scaleup_expr": exprs, "scaledown_expr": exprs,
    "timezone": st.sampled_from(["UTC", "Europe/Paris", "Nowhere/Land", ""])}))
availability = st.one_of(st.none(), st.fixed_dictionaries({
    "period": ints, "recreate_expr": exprs, "failover_role": st.sampled_from([None, "active", "passive", "x"]),
    "failover_group": st.sampled_from([None, "g", ""]), "failover_expr": exprs, "failback_expr": exprs}))
cpus = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 400))
vms = st.lists(st.builds(VmObs, slot=st.sampled_from(["m", "s0", "s1", "s2", "s7", "x"]),
                         role=st.sampled_from(["master", "slave"]), cls=st.sampled_from(CLASSES), cpu=cpus,
                         created=st.floats(0, 2e9), by_policy=st.booleans()),
               max_size=6, unique_by=lambda v: v.slot)
states = st.builds(PolicyState, status=st.sampled_from(STATUSES), minute=st.integers(-1, 30_000_000),
                   up=st.integers(0, 9), down=st.integers(0, 9), recreate=st.integers(0, 9),
                   failover=st.integers(0, 9), failback=st.integers(0, 9), last_action_at=st.floats(0, 2e9))
partners = st.one_of(st.none(), st.builds(Member, envid=st.just("2"), role=st.sampled_from(["active", "passive"]),
                                          status=st.sampled_from(STATUSES)))


@settings(max_examples=400, deadline=None)
@given(elasticity, availability, st.integers(-1, 5), vms, st.booleans(), partners, states,
       st.floats(1.6e9, 1.9e9))
def test_decide_is_total_and_well_formed(el: dict[str, Any] | None, av: dict[str, Any] | None, base: int,
                                        observed: list[VmObs], busy: bool, partner: Member | None,
                                        state: PolicyState, now: float) -> None:
    inputs = EnvInputs("1", el, av, base, tuple(observed), busy, partner=partner, grace=120)
    d = decide(inputs, state, now)
    assert d.state.status in STATUSES and PolicyState.from_fields(d.state.to_fields()) == d.state
    if not d.evaluated:
        assert d.action is None and d.state == state
        return
    assert d.state.minute == int(now // 60)
    if state.status == "INIT":
        assert d.action is None and d.state.status == "INIT"
    if d.action is not None:
        assert not busy and d.action.kind in KINDS and Action.from_dict(d.action.to_dict()) == d.action
        slots = {v.slot: v for v in observed}
        if d.action.kind == SCALEDOWN:
            assert len(d.action.slots) == 1 and slots[d.action.slots[0]].index >= 0
        elif d.action.kind == RECREATE:
            assert d.action.slots and all(slots[s].cls in BROKEN and now - slots[s].created >= 120
                                          for s in d.action.slots)
            assert "m" not in d.action.slots or d.action.slots == ("m",)
        else:
            assert d.action.kind == SCALEUP and d.action.slots == ()
        assert d.state.last_action_at == now
    again = decide(inputs, d.state, now)
    assert again.action is None and again.state == d.state and not again.evaluated
    assert math.isfinite(d.state.last_action_at)
