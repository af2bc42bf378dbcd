"""The policy expression language: guide expressions, refusals with positions, and properties."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from functions.conf.expr import MAX_LENGTH, MAX_NODES, VARIABLES, EvalResult, ExprError, compile_expr, evaluate

ZERO = dict.fromkeys(VARIABLES, 0)


def run(text: str, **values: float) -> EvalResult:
    return evaluate(compile_expr(text), {**ZERO, **values})


@pytest.mark.parametrize(("text", "values", "expected"), [
    ("avgcpu > 50", {"avgcpu": 80}, True),
    ("avgcpu > 50", {"avgcpu": 50}, False),
    ("avgcpu < 20", {"avgcpu": 19.5}, True),
    ("nummissing > 0 || numunknown > 0 || numfailed > 0", {"numfailed": 1}, True),
    ("nummissing > 0 || numunknown > 0 || numfailed > 0", {}, False),
    ("(numunknown + nummissing + numfail)/numvms > 0.50", {"numvms": 4, "numunknown": 1, "numfailed": 1}, False),
    ("(numunknown + nummissing + numfail)/numvms > 0.50", {"numvms": 4, "numunknown": 2, "numfailed": 1}, True),
    ("numunknown/numvms > 0.2", {"numvms": 4, "numunknown": 1}, True),     # true division, not integer
    ("numunknown == 0", {}, True),
    ("!(avgcpu > 50) && numvms >= 2", {"avgcpu": 10, "numvms": 2}, True),
    ("not avgcpu > 50 and numvms != 3", {"avgcpu": 10, "numvms": 2}, True),
    ("not avgcpu > 50 || numvms == 2", {"avgcpu": 10, "numvms": 2}, False),  # Ruby: not (a || b)
    ("avgcpu > 50 or numvms < 2 and numvms > 0", {"avgcpu": 60, "numvms": 0}, False),  # and/or: left to right
    ("avgcpu > 50 || numvms < 2 && numvms > 0", {"avgcpu": 60, "numvms": 0}, True),    # && binds tighter
    ("-numvms * 2 + 10 <= 4 - -1", {"numvms": 3}, True),
    ("2 * 3 + 4 == 10 && 10 - 4 - 3 == 3 && 8 / 4 / 2 == 1", {}, True),
    ("(avgcpu > 1) == (numvms > 1)", {"avgcpu": 0, "numvms": 0}, True),
])
def test_guide_and_precedence(text: str, values: dict[str, float], expected: bool) -> None:
    assert run(text, **values) == EvalResult(expected, None)


def test_division_by_zero_is_false_with_a_message() -> None:
    result = run("(numunknown + nummissing + numfail)/numvms > 0.50", numunknown=1)
    assert result.value is False
    assert result.error is not None and "division by zero" in result.error and "col 36" in result.error
    # short-circuit: the guard keeps the division from running
    assert run("numvms > 0 && nummissing / numvms > 0.5") == EvalResult(False, None)
    assert run("!(1/0 > 1)").value is False


def test_evaluate_reports_missing_or_bad_values() -> None:
    compiled = compile_expr("avgcpu > 5")
    assert evaluate(compiled, {}) == EvalResult(False, "no value for avgcpu")
    assert evaluate(compiled, {"avgcpu": "9"}).error == "value of avgcpu is not a number"  # type: ignore[dict-item]
    assert evaluate(compile_expr("numfail > 0"), {"numfail": 1}).value is True   # alias as a key too
    huge = compile_expr("avgcpu * 1.5 > 1")
    assert "too large" in (evaluate(huge, {"avgcpu": 10**400}).error or "")


def test_compile_reports_names_and_restricts_variables() -> None:
    compiled = compile_expr("numfail + nummissing > 0")
    assert compiled.names == {"numfailed", "nummissing"}
    with pytest.raises(ExprError, match="unknown name `avgcpu`"):
        compile_expr("avgcpu > 1", variables={"numvms"})


@pytest.mark.parametrize(("text", "col", "reason"), [
    ("", 1, "empty"),
    ("avgcpu", 1, "must be a condition"),
    ("avgcpu + 1", 8, "must be a condition"),
    ("avgcpu = 50", 8, "use `==`"),
    ("avgcpu > 50 & numvms > 1", 13, "use `&&`"),
    ("avgcpu > 50 | numvms > 1", 13, "use `||`"),
    ("cpu > 50", 1, "unknown name `cpu`"),
    ("avgcpu >", 9, "unexpected end"),
    ("(avgcpu > 5", 12, "never closed"),
    ("avgcpu > 5)", 11, "unexpected `)`"),
    ("1 < avgcpu < 3", 12, "chained comparisons"),
    ("numvms == 1 == true", 13, "chained"),
    ("!avgcpu", 2, "`!` needs a condition"),
    ("avgcpu > 1 && 5", 15, "`&&` needs conditions"),
    ("(avgcpu > 1) + 1 > 0", 14, "needs numbers"),
    ("(avgcpu > 1) == 1", 14, "compares a condition with a number"),
    ("not 5", 5, "`not` needs a condition"),
    ("avgcpu > 5 and", 15, "unexpected end"),
    ("avgcpu 5", 8, "unexpected `5`"),
])
def test_refusals_name_the_position(text: str, col: int, reason: str) -> None:
    with pytest.raises(ExprError) as info:
        compile_expr(text)
    assert info.value.col == col, str(info.value)
    assert reason in info.value.reason
    assert str(info.value).startswith(f"col {col}: ")


ESCAPES = [
    "().__class__.__mro__", "().__class__", "__import__('os').system('id')", "__import__", "9**9**9",
    "2 ** 10 > 1", "lambda: 1", "(lambda x: x)(1) > 0", "[x for x in ()]", "{}", "[]", 'f"{1}"', "'a' > 'b'",
    "avgcpu.real > 1", "avgcpu.__class__", "abs(avgcpu) > 1", "max(avgcpu, 1) > 1", "eval('1') > 0",
    "open('/etc/passwd')", "avgcpu if 1 else 0", "avgcpu > 1; 1", "avgcpu @ 1", "avgcpu % 2 == 0",
    "avgcpu // 2 > 1", "~avgcpu > 1", "avgcpu << 2 > 1", "`id`", "True", "None", "avgcpu > 1e9",
    "system('id') > 0", "avgcpu > 1 ? 1 : 0", "$x > 1", "avgcpu.send(:exit)", "avgcpu\n.abs > 1",
    "0x10 > 1", "1_000 > 1", "a = 1", "avgcpu > -", "#{avgcpu} > 1",
]


@pytest.mark.parametrize("text", ESCAPES)
def test_escape_corpus_is_rejected(text: str) -> None:
    with pytest.raises(ExprError):
        compile_expr(text)


def test_size_caps() -> None:
    with pytest.raises(ExprError, match="longer than"):
        compile_expr("avgcpu > 1 " + " " * MAX_LENGTH)
    many = " + ".join(["1"] * (MAX_NODES // 2 + 1)) + " > 0"
    with pytest.raises(ExprError, match="too large"):
        compile_expr(many)
    with pytest.raises(ExprError, match="nested too deeply"):
        compile_expr("(" * 100 + "1" + ")" * 100 + " > 0")
    with pytest.raises(ExprError):
        compile_expr("!" * 200 + "(1 > 0)")


# -- properties ------------------------------------------------------------------------------

@dataclass
class Gen:
    """A generated expression: our syntax (minimal parentheses) and a fully parenthesized Python form."""

    ours: str
    python: str
    prec: int          # binding strength of the top operator (higher binds tighter)
    is_bool: bool


_PREC = {"not": 1, "and": 0, "or": 0, "||": 2, "&&": 3, "==": 4, "!=": 4, "<": 5, "<=": 5, ">": 5, ">=": 5,
         "+": 6, "-": 6, "*": 7, "/": 7, "neg": 8, "!": 8, "atom": 9}


def _wrap(g: Gen, need: int, extra: bool) -> str:
    return f"({g.ours})" if g.prec < need or extra else g.ours


def _num_leaf() -> st.SearchStrategy[Gen]:
    nums = st.integers(0, 200).map(str) | st.builds(lambda a, b: f"{a}.{b}", st.integers(0, 99), st.integers(0, 99))
    names = st.sampled_from(sorted(VARIABLES) + ["numfail"])
    return (nums | names).map(lambda t: Gen(t, "numfailed" if t == "numfail" else t, 9, False))


_extra = st.sampled_from([False, False, False, True])   # sometimes add redundant parentheses


def _binary(left: Gen, op: str, right: Gen, extra: bool) -> Gen:
    prec = _PREC[op]
    left_need = prec if op in ("+", "-", "*", "/", "&&", "||", "and", "or") else prec + 1  # left-assoc vs not
    ours = f"{_wrap(left, left_need, extra)} {op} {_wrap(right, prec + 1, extra)}"
    pyop = {"&&": "and", "||": "or"}.get(op, op)
    return Gen(ours, f"({left.python} {pyop} {right.python})", prec, op not in ("+", "-", "*", "/"))


def _pairs(children: st.SearchStrategy[Gen], ops: list[str]) -> st.SearchStrategy[Gen]:
    return st.builds(_binary, children, st.sampled_from(ops), children, _extra)


def _negate(child: Gen, extra: bool) -> Gen:
    return Gen("-" + _wrap(child, 8, extra), f"(-{child.python})", 8, False)


def _invert(child: Gen, bang: bool, extra: bool) -> Gen:
    if bang:
        return Gen("!" + _wrap(child, 9, extra), f"(not {child.python})", 8, True)
    return Gen("not " + _wrap(child, 1, extra), f"(not {child.python})", 1, True)


_nums = st.recursive(_num_leaf(), lambda c: _pairs(c, ["+", "-", "*", "/"])
                     | st.builds(_negate, c, _extra), max_leaves=6)
_atoms = _pairs(_nums, ["<", "<=", ">", ">=", "==", "!="])
_exprs = st.recursive(_atoms, lambda b: _pairs(b, ["&&", "||", "and", "or", "==", "!="])
                      | st.builds(_invert, b, st.booleans(), _extra), max_leaves=5)
_values = st.fixed_dictionaries({name: st.integers(-5, 100) | st.floats(-5, 100) for name in sorted(VARIABLES)})


@settings(max_examples=400, deadline=None)
@given(_exprs, _values)
def test_generated_expressions_match_reference(gen: Gen, values: dict[str, float]) -> None:
    if len(gen.ours) > MAX_LENGTH:
        return
    try:
        compiled = compile_expr(gen.ours)
    except ExprError as exc:
        assert "too large" in exc.reason or "nested too deeply" in exc.reason
        return
    try:
        expected = eval(gen.python, {"__builtins__": {}}, dict(values))  # noqa: S307 - test oracle on generated text
        error = None
    except ZeroDivisionError:
        expected, error = False, "division by zero"
    result = evaluate(compiled, values)
    assert result.value is bool(expected), (gen.ours, gen.python)
    if error:
        assert result.error is not None and error in result.error
    else:
        assert result.error is None


WORK_BOUND = 50 * MAX_LENGTH      # Python calls to compile and evaluate any text (pathological ones take < 1000)


def _counting_calls(run: Callable[[], None]) -> int:
    """How many Python function calls `run` makes: a measure of work that does not depend on the machine's load."""
    calls = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return calls


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300) | st.text(alphabet="avgcpu numvms<>=!&|()+-*/0123456789. andornot_", max_size=120))
def test_any_text_gives_a_value_or_expr_error_with_bounded_work(text: str) -> None:
    def run() -> None:
        try:
            compiled = compile_expr(text)
        except ExprError as exc:
            assert 0 <= exc.pos <= max(len(text), MAX_LENGTH)
        else:
            assert isinstance(evaluate(compiled, ZERO).value, bool)

    assert _counting_calls(run) <= WORK_BOUND                  # no input makes the parser blow up


@pytest.mark.parametrize("text", ["(" * MAX_LENGTH, "!" * MAX_LENGTH, "not " * 60 + "avgcpu > 1",
                                  "avgcpu > 1 " + "or avgcpu < 2 " * 16, "(" * 24 + "1" + ")" * 24 + " > 0"])
def test_pathological_texts_take_bounded_work(text: str) -> None:
    def run() -> None:
        try:
            evaluate(compile_expr(text), ZERO)
        except ExprError:
            pass

    assert _counting_calls(run) <= WORK_BOUND
