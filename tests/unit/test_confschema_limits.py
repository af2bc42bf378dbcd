"""A hostile configuration cannot make the validator quadratic nor its error answer huge: errors are capped,
no message lists a whole namespace, and the work grows linearly with the input (counted, never timed)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from marshmallow import ValidationError

from functions.conf import checks
from functions.conf.fields import name_list
from functions.conf.rbparse import MAX_INPUT
from functions.conf.schema import MAX_ERRORS, ConfigError, cap_errors, load_config, validate_config


class Counted(str):
    """A name that counts its equality comparisons: a membership test in a list compares against every element
    (counted), a set or dict lookup compares at most with the colliding keys."""

    eq_calls = 0

    def __eq__(self, other: object) -> bool:
        Counted.eq_calls += 1
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = str.__hash__


def hostile_rb(n: int) -> str:
    """n environments that each name a missing endpoint and template, n/4 defined endpoints and templates, and
    a group listing every environment and depending on all of them."""
    lines = ["ENDPOINT = {"]
    lines += [f"  'ep{i}' => {{ :proxy => 'http://h:1/RPC2', :oneauth => 'a:b' }}," for i in range(n // 4)]
    lines += ["}", "TEMPLATE = {"]
    lines += [f"  't{i}' => {{ :file => 'x.vm', :cpu => 1, :memory => 1, :network_id => {{}}, :image_id => {{}} }},"
              for i in range(n // 4)]
    lines += ["}", "ENVIRONMENT = {"]
    lines += [f"  'e{i}' => {{ :endpoint => 'nope{i}', :master_template => 'nt{i}' }}," for i in range(n)]
    members = ", ".join(f"'e{i}'" for i in range(n))
    needs = ", ".join(f"'e{i}'" for i in range(1, n))
    lines += [f"  'g' => {{ :type => 'group', :members => [{members}], :dependencies => {{ 'e0' => [{needs}] }} }},"]
    lines += ["}"]
    return "\n".join(lines)


def test_a_hostile_config_gets_a_small_answer() -> None:
    text = hostile_rb(2000)
    assert len(text) <= MAX_INPUT                       # as large as an upload may be
    with pytest.raises(ConfigError) as info:
        load_config(text, "rb", {"x.vm"})
    errors = info.value.errors
    assert info.value.total > 4000                      # every problem was found ...
    assert len(errors) <= MAX_ERRORS + 1                # ... the first few are reported
    assert errors[-1] == f"... and {info.value.total - len(errors) + 1} more errors"
    assert len(json.dumps(errors)) < 20_000
    assert "ENVIRONMENT.e0.endpoint: unknown endpoint 'nope0' (defined: ep0, ep1, ep2, ep3, ep4 and 495 more)" \
        in errors
    assert "ENVIRONMENT.e0.master_template: unknown template 'nt0' (defined: t0, t1, t2, t3, t4 and 495 more)" \
        in errors
    assert all(e.count(",") <= 6 for e in errors)     # no message lists a namespace


def raw_config(n: int) -> dict[str, Any]:
    """The hostile config as parsed data whose every name counts its comparisons."""
    eps = {Counted(f"ep{i}"): {"proxy": "http://h:1/RPC2", "oneauth": "a:b"} for i in range(n)}
    tpls = {Counted(f"t{i}"): {"file": "x.vm", "cpu": 1, "memory": 1, "network_id": {}, "image_id": {}}
            for i in range(n)}
    envs: dict[str, Any] = {Counted(f"e{i}"): {"endpoint": Counted(f"nope{i}"), "master_template": Counted(f"nt{i}")}
                            for i in range(n)}
    names = [Counted(f"e{i}") for i in range(n)]
    envs[Counted("g")] = {"type": "group", "members": names + [Counted("missing")],
                          "dependencies": {Counted("e0"): [Counted(f"e{i}") for i in range(n - 1, 0, -1)]}}
    envs[Counted("h")] = {"type": "group", "members": names}          # valid members: the group loads
    envs[Counted("h")]["dependencies"] = {names[0]: [Counted(f"e{i}") for i in range(n - 1, 0, -1)]}
    return {"ENDPOINT": eps, "TEMPLATE": tpls, "ENVIRONMENT": envs}


def comparisons(n: int) -> int:
    raw = raw_config(n)
    Counted.eq_calls = 0
    with pytest.raises(ConfigError):
        validate_config(raw, {"x.vm"})
    return Counted.eq_calls


def test_validation_work_grows_linearly() -> None:
    small, large = comparisons(300), comparisons(1200)
    assert large <= 4 * small * 1.2 + 100, (small, large)       # 4x the names: about 4x the comparisons
    assert large <= 20 * 1200, large


def test_name_list_and_cap_helpers() -> None:
    with pytest.raises(ValidationError) as info:
        name_list([f"n{i % 500}" for i in range(1000)])
    assert info.value.messages == ["listed twice: n0, n1, n10, n100, n101 and 495 more"]
    capped = cap_errors([f"e{i}" for i in range(60)])
    assert capped[:MAX_ERRORS] == [f"e{i}" for i in range(MAX_ERRORS)] and capped[-1] == "... and 10 more errors"
    assert cap_errors(["a", "b"]) == ["a", "b"]
    long = cap_errors(["x" * 10_000] * 3)
    assert all(len(e) <= 300 for e in long) and len(long) == 3
    assert checks.listing([]) == "none" and checks.listing(["a", "b"]) == "a, b"
    assert checks.quoted("y" * 500) == repr("y" * 64)[:-1] + "...'"
