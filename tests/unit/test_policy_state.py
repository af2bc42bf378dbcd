"""PolicyState through Redis hash fields: exact roundtrip, and garbage never raises."""

from __future__ import annotations

from dataclasses import fields

from hypothesis import given
from hypothesis import strategies as st

from functions.policy.state import FIELD_NAMES, MAX_COUNTER, MAX_INFO, STATUSES, PolicyState

counters = st.integers(0, MAX_COUNTER)
states = st.builds(
    PolicyState, status=st.sampled_from(STATUSES), info=st.text(max_size=MAX_INFO), metrics=st.text(max_size=40),
    minute=st.integers(-1, 2**40), up=counters, down=counters, recreate=counters, failover=counters,
    failback=counters, last_action_at=st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False))


@given(states)
def test_roundtrip_through_string_fields(state: PolicyState) -> None:
    fields = state.to_fields()
    assert set(fields) == set(FIELD_NAMES.values())
    assert all(isinstance(v, str) for v in fields.values())
    assert PolicyState.from_fields(fields) == state


@given(st.dictionaries(st.sampled_from([*FIELD_NAMES.values(), "other", "spec"]),
                       st.one_of(st.text(max_size=30), st.none(), st.integers(), st.floats(), st.booleans())))
def test_garbage_fields_read_as_defaults(data: dict[str, object]) -> None:
    state = PolicyState.from_fields(data)
    assert state.status in STATUSES
    assert all(0 <= n <= MAX_COUNTER for n in (state.up, state.down, state.recreate, state.failover, state.failback))
    assert state.minute >= -1 and state.last_action_at >= 0
    assert PolicyState.from_fields(state.to_fields()) == state


def test_missing_fields_are_a_fresh_state_and_env_hash_keys_are_shared() -> None:
    assert PolicyState.from_fields({}) == PolicyState()
    env = {"envid": "3", "policy_status": "active", "info": "x", "metrics": "avgcpu[3]", "pol_up": "2",
           "pol_down": "-4", "pol_minute": "12.5", "pol_last_action": "nan"}
    state = PolicyState.from_fields(env)
    assert (state.status, state.info, state.metrics, state.up, state.down, state.minute, state.last_action_at) == \
        ("ACTIVE", "x", "avgcpu[3]", 2, 0, -1, 0.0)
    assert PolicyState.from_fields({"policy_status": "BOGUS"}).status == "INIT"
    assert len(PolicyState().with_info("y" * 2000).info) == MAX_INFO


def test_field_names_follow_the_dataclass_fields_in_order() -> None:
    assert tuple(FIELD_NAMES) == tuple(f.name for f in fields(PolicyState))   # to_fields reads them in this order
    state = PolicyState("ACTIVE", "i", "m", 7, 1, 2, 3, 4, 5, 6.5)
    assert state.to_fields() == {"policy_status": "ACTIVE", "info": "i", "metrics": "m", "pol_minute": "7",
                                 "pol_up": "1", "pol_down": "2", "pol_recreate": "3", "pol_failover": "4",
                                 "pol_failback": "5", "pol_last_action": "6.5"}
