"""The SCHED_REQUIREMENTS / SCHED_RANK evaluator (pure), with hypothesis oracles built in the test."""

from __future__ import annotations

import ast
import fnmatch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onesim.placement import Candidate, PlacementError, choose_host, compile_rank, compile_requirements

HOST = {"NAME": "host1", "RUNNING_VMS": 3, "FREE_CPU": 250, "PRIORITY": "5", "HYPERVISOR": "kvm",
        "HOST/VMS/ID": ["4", "9"], "CURRENT_VMS": ["4", "9"]}


@pytest.mark.parametrize("expr, expected", [
    ("RUNNING_VMS > 2", True), ("RUNNING_VMS < 2", False), ("RUNNING_VMS = 3", True), ("RUNNING_VMS != 3", False),
    ('NAME = "host*"', True), ('NAME = "x*"', False), ("HYPERVISOR = kvm", True),
    ('NAME = "x*" | FREE_CPU > 100 & !(PRIORITY < 3)', True), ("!(RUNNING_VMS > 2 | FREE_CPU > 1)", False),
    ('"HOST/VMS/ID" @> 9', True), ("CURRENT_VMS @> 5", False), ("CURRENT_VMS != 4", False),
    ("MISSING = 1", False), ("MISSING != 1", False), ("MISSING > 1", False),
    ("!(PUBLIC_CLOUD = YES) & !(PIN_POLICY = PINNED)", True), ("", True),
])
def test_requirements(expr: str, expected: bool) -> None:
    assert compile_requirements(expr).matches(HOST) is expected


def test_dollar_substitution_from_vm_template() -> None:
    lookup = {("PEER", None): "9", ("CTX", "ZONE"): "kvm"}.get
    assert compile_requirements("CURRENT_VMS @> $PEER & HYPERVISOR = $CTX[ZONE]",
                                lambda n, s: lookup((n, s))).matches(HOST)


@pytest.mark.parametrize("expr, expected", [
    ("RUNNING_VMS", 3), ("- RUNNING_VMS", -3), ("-RUNNING_VMS", -3), ("FREE_CPU", 250),
    ("FREE_CPU / 2 + -(PRIORITY * 3)", 110), ("RUNNING_VMS / 0", 0), ("MISSING + 1", 1), ("NAME", 0),
    ("(1 + 2) * 3 - 4 / 8", 8.5), ("", 0),
])
def test_rank(expr: str, expected: float) -> None:
    assert compile_rank(expr).value(HOST) == expected


@pytest.mark.parametrize("bad", ["RUNNING_VMS >", "(A = 1", "A = 1 B", "1 = 2", "A ~ 3", "A = 1 &",
                                 "(" * 80 + "A = 1" + ")" * 80, "x" * 5000])
def test_requirement_errors(bad: str) -> None:
    with pytest.raises(PlacementError):
        compile_requirements(bad)


@pytest.mark.parametrize("bad", ["1 +", "(1", "A B", "* 2", "-" * 100 + "1", "__import__('os')"])
def test_rank_errors(bad: str) -> None:
    with pytest.raises(PlacementError):
        compile_rank(bad)


def test_choose_host_skips_full_and_unmatched_and_breaks_ties_by_id() -> None:
    hosts = [Candidate(0, {"R": 1}, True), Candidate(1, {"R": 5}, False), Candidate(2, {"R": 3}, True),
             Candidate(3, {"R": 3}, True)]
    rank = compile_rank("R")
    assert choose_host(hosts, compile_requirements(""), rank) == 2  # 1 has no room; 2 and 3 tie -> lowest id
    assert choose_host(hosts, compile_requirements("R < 3"), rank) == 0
    assert choose_host(hosts, compile_requirements("R > 10"), rank) is None


# ---- hypothesis: random arithmetic trees, evaluated by a reference walker written here -------------------
VARS = {"A": 3.0, "B": -2.0, "C": 0.0, "D": 7.5}


def arith() -> st.SearchStrategy:
    leaf = st.one_of(st.integers(0, 50).map(lambda n: (str(n), float(n))),
                     st.sampled_from(sorted(VARS)).map(lambda v: (v, VARS[v])))

    def extend(children: st.SearchStrategy) -> st.SearchStrategy:
        def combine(op: str, left: tuple, right: tuple) -> tuple:
            lt, lv = left
            rt, rv = right
            value = {"+": lv + rv, "-": lv - rv, "*": lv * rv, "/": lv / rv if rv else 0.0}[op]
            return f"({lt} {op} {rt})", value

        neg = children.map(lambda c: (f"-{c[0]}" if not c[0].startswith("-") else f"-({c[0]})", -c[1]))
        return st.one_of(st.builds(combine, st.sampled_from("+-*/"), children, children), neg)

    return st.recursive(leaf, extend, max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(arith())
def test_rank_agrees_with_reference(case: tuple) -> None:
    text, expected = case
    assert compile_rank(text).value(VARS) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def req_tree() -> st.SearchStrategy:
    host = {"N": "alpha", "X": 4, "L": ["1", "2"]}
    leaf = st.sampled_from([
        ("X > 3", True), ("X < 3", False), ("X = 4", True), ("X != 4", False), ('N = "al*"', True),
        ('N = "b?ta"', False), ("L @> 2", True), ("L @> 3", False), ("M = 1", False),
    ])

    def extend(children: st.SearchStrategy) -> st.SearchStrategy:
        both = st.builds(lambda op, a, b: (f"({a[0]} {op} {b[0]})", (a[1] and b[1]) if op == "&" else (a[1] or b[1])),
                         st.sampled_from("&|"), children, children)
        return st.one_of(both, children.map(lambda c: (f"!({c[0]})", not c[1])))

    return st.recursive(leaf, extend, max_leaves=10).map(lambda c: (c, host))


@settings(max_examples=300, deadline=None)
@given(req_tree())
def test_requirements_agree_with_reference(case: tuple) -> None:
    (text, expected), host = case
    assert compile_requirements(text).matches(host) is expected
    assert fnmatch.fnmatchcase("alpha", "al*")  # the glob semantics the oracle assumes


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_text_compiles_or_raises_placement_error(text: str) -> None:
    for compile_fn in (compile_rank, compile_requirements):
        try:
            compiled = compile_fn(text)
        except PlacementError:
            continue
        assert compiled.source == text


def test_module_is_pure() -> None:
    import onesim.placement as mod
    import onesim.template as tmod

    for module in (mod, tmod):
        tree = ast.parse(open(module.__file__).read())
        imported = {n.names[0].name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"redis", "rq", "falcon", "pyone"}
        assert "eval(" not in open(module.__file__).read().replace("_eval", "")
