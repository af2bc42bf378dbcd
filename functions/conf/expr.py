"""The policy expression language. Pure: own tokenizer and recursive-descent parser, never Python eval.

Grammar (Ruby precedence, loosest first):
    expr    := notexpr { ("and" | "or") notexpr }
    notexpr := "not" notexpr | oror
    oror    := andand { "||" andand }
    andand  := equality { "&&" equality }
    equality:= relation [ ("==" | "!=") relation ]
    relation:= sum [ ("<" | "<=" | ">" | ">=") sum ]
    sum     := term { ("+" | "-") term }
    term    := unary { ("*" | "/") unary }
    unary   := "-" unary | "!" unary | atom
    atom    := NUMBER | VARIABLE | "(" expr ")"
Types are checked at compile time: arithmetic and ordering need numbers, logic needs conditions,
and the whole expression must be a condition. `/` is true division; dividing by zero makes the
expression false with a message.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

VARIABLES = frozenset({"avgcpu", "numvms", "nummissing", "numunknown", "numfailed"})
ALIASES = {"numfail": "numfailed"}
MAX_LENGTH = 256
MAX_NODES = 64
MAX_DEPTH = 24

_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
                    r"|(?P<op>&&|\|\||==|!=|<=|>=|[-+*/()<>!]))")
_KEYWORDS = {"and", "or", "not"}
_RELATIONS = {"<", "<=", ">", ">="}
_OPS = {"+", "-", "*", "/"}
Run = Callable[[Mapping[str, float]], "float | bool"]
_ARITH: dict[str, Callable[[float, float], float]] = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_COMPARE: dict[str, Callable[[float, float], bool]] = {"<": operator.lt, "<=": operator.le, ">": operator.gt,
                                                      ">=": operator.ge, "==": operator.eq, "!=": operator.ne}


class ExprError(ValueError):
    """A bad expression. `.pos` is the 0-based offset of the problem, `.col` the 1-based column."""

    def __init__(self, pos: int, reason: str) -> None:
        super().__init__(f"col {pos + 1}: {reason}")
        self.pos = pos
        self.col = pos + 1
        self.reason = reason


@dataclass(frozen=True)
class Node:
    """One AST node: kind is num, var, neg, not, arith, compare, and, or."""

    kind: str
    pos: int
    value: float | int | str = 0
    op: str = ""
    left: Node | None = None
    right: Node | None = None
    is_bool: bool = False


@dataclass(frozen=True)
class CompiledExpr:
    """A checked expression ready for `evaluate`; `names` are the canonical variables it reads."""

    text: str
    root: Node
    names: frozenset[str]
    run: Run | None = field(default=None, compare=False, repr=False)   # the root as a closure (compile_expr)


@dataclass(frozen=True)
class EvalResult:
    """The value of an expression; `error` says why it was forced to False (e.g. division by zero)."""

    value: bool
    error: str | None = None


class _Parser:
    def __init__(self, text: str, variables: frozenset[str]) -> None:
        self.tokens = self.tokenize(text)
        self.index = 0
        self.nodes = 0
        self.depth = 0
        self.variables = variables
        self.names: set[str] = set()
        self.end = len(text)

    @staticmethod
    def tokenize(text: str) -> list[tuple[str, str, int]]:
        tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            match = _TOKEN.match(text, pos)
            if match is None:
                bad = pos + len(text[pos:]) - len(text[pos:].lstrip())
                raise ExprError(bad, _bad_char_reason(text, bad))
            kind = match.lastgroup or ""
            start = match.start(kind)
            tokens.append((kind, match.group(kind), start))
            pos = match.end()
        return tokens

    def peek(self) -> tuple[str, str, int]:
        if self.index < len(self.tokens):
            return self.tokens[self.index]
        return ("end", "", self.end)

    def take(self) -> tuple[str, str, int]:
        token = self.peek()
        self.index += 1
        return token

    def node(self, kind: str, pos: int, **fields: object) -> Node:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise ExprError(pos, f"expression too large (more than {MAX_NODES} parts)")
        return Node(kind, pos, **fields)  # type: ignore[arg-type]

    def enter(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError(pos, f"expression nested too deeply (more than {MAX_DEPTH} levels)")

    def parse(self) -> Node:
        root = self.expr()
        kind, text, pos = self.peek()
        if kind != "end":
            raise ExprError(pos, f"unexpected `{text}`")
        _need_bool(root, "the expression must be a condition, e.g. `avgcpu > 50`")
        return root

    def logic(self, ops: set[str], operand: str, kind_of: dict[str, str]) -> Node:
        left = getattr(self, operand)()
        while self.peek()[1] in ops and self.peek()[0] != "num":
            _, op, pos = self.take()
            right = getattr(self, operand)()
            _need_bool(left, f"`{op}` needs conditions on both sides")
            _need_bool(right, f"`{op}` needs conditions on both sides")
            left = self.node(kind_of[op], pos, op=op, left=left, right=right, is_bool=True)
        return left

    def expr(self) -> Node:
        return self.logic({"and", "or"}, "notexpr", {"and": "and", "or": "or"})

    def notexpr(self) -> Node:
        kind, text, pos = self.peek()
        if kind == "name" and text == "not":
            self.take()
            self.enter(pos)
            operand = self.notexpr()
            self.depth -= 1
            _need_bool(operand, "`not` needs a condition")
            return self.node("not", pos, left=operand, is_bool=True)
        return self.oror()

    def oror(self) -> Node:
        return self.logic({"||"}, "andand", {"||": "or"})

    def andand(self) -> Node:
        return self.logic({"&&"}, "equality", {"&&": "and"})

    def equality(self) -> Node:
        left = self.relation()
        _, op, pos = self.peek()
        if op not in ("==", "!="):
            return left
        self.take()
        right = self.relation()
        if left.is_bool != right.is_bool:
            raise ExprError(pos, f"`{op}` compares a condition with a number")
        if self.peek()[1] in ("==", "!="):
            raise ExprError(self.peek()[2], "chained `==`/`!=` is not allowed; use parentheses")
        return self.node("compare", pos, op=op, left=left, right=right, is_bool=True)

    def relation(self) -> Node:
        left = self.sum()
        _, op, pos = self.peek()
        if op not in _RELATIONS:
            return left
        self.take()
        right = self.sum()
        _need_num(left, pos, op)
        _need_num(right, pos, op)
        if self.peek()[1] in _RELATIONS:
            raise ExprError(self.peek()[2], "chained comparisons are not allowed; use `&&`")
        return self.node("compare", pos, op=op, left=left, right=right, is_bool=True)

    def binary(self, ops: tuple[str, str], operand: str) -> Node:
        left = getattr(self, operand)()
        while self.peek()[0] == "op" and self.peek()[1] in ops:
            _, op, pos = self.take()
            right = getattr(self, operand)()
            _need_num(left, pos, op)
            _need_num(right, pos, op)
            left = self.node("arith", pos, op=op, left=left, right=right)
        return left

    def sum(self) -> Node:
        return self.binary(("+", "-"), "term")

    def term(self) -> Node:
        return self.binary(("*", "/"), "unary")

    def unary(self) -> Node:
        kind, text, pos = self.peek()
        if kind == "op" and text in ("-", "!"):
            self.take()
            self.enter(pos)
            operand = self.unary()
            self.depth -= 1
            if text == "-":
                _need_num(operand, pos, "-")
                return self.node("neg", pos, left=operand)
            _need_bool(operand, "`!` needs a condition, e.g. `!(avgcpu > 50)`")
            return self.node("not", pos, left=operand, is_bool=True)
        return self.atom()

    def atom(self) -> Node:
        kind, text, pos = self.take()
        if kind == "num":
            return self.node("num", pos, value=float(text) if "." in text else int(text))
        if kind == "name":
            return self.variable(text, pos)
        if text == "(":
            self.enter(pos)
            inner = self.expr()
            self.depth -= 1
            close = self.take()
            if close[1] != ")":
                raise ExprError(close[2], "expected `)`" if close[0] != "end" else "`(` is never closed")
            return inner
        if kind == "end":
            raise ExprError(pos, "unexpected end of expression")
        raise ExprError(pos, f"unexpected `{text}`")

    def variable(self, text: str, pos: int) -> Node:
        if self.peek()[1] == "(":
            raise ExprError(pos, f"function calls are not allowed (`{text}(`)")
        if text in _KEYWORDS:
            raise ExprError(pos, f"unexpected `{text}`")
        name = ALIASES.get(text, text)
        if name not in self.variables:
            known = ", ".join(sorted(self.variables))
            raise ExprError(pos, f"unknown name `{text}` (known: {known})")
        self.names.add(name)
        return self.node("var", pos, value=name)


def _bad_char_reason(text: str, pos: int) -> str:
    ch = text[pos]
    if ch == "." and pos > 0 and (text[pos - 1].isalnum() or text[pos - 1] in ")_"):
        return "attribute access is not allowed"
    if ch == "=":
        return "`=` is not allowed; use `==` to compare"
    if ch in "&|":
        return f"`{ch}` is not allowed; use `{ch * 2}`"
    if ch in "'\"`":
        return "strings are not allowed"
    return f"unexpected `{ch}`"


def _need_bool(node: Node, reason: str) -> None:
    if not node.is_bool:
        raise ExprError(node.pos, reason)


def _need_num(node: Node, pos: int, op: str) -> None:
    if node.is_bool:
        raise ExprError(pos, f"`{op}` needs numbers, not a condition")


def compile_expr(text: str, variables: Iterable[str] = VARIABLES) -> CompiledExpr:
    """Parse and type-check `text`. Pure, safe to run twice. Raises ExprError naming the position."""
    if not isinstance(text, str):
        raise ExprError(0, "the expression must be a string")
    if len(text) > MAX_LENGTH:
        raise ExprError(MAX_LENGTH, f"expression longer than {MAX_LENGTH} characters")
    if not text.strip():
        raise ExprError(0, "the expression is empty")
    parser = _Parser(text, frozenset(variables))
    root = parser.parse()
    return CompiledExpr(text, root, frozenset(parser.names), _closure(root))


class _DivByZero(Exception):
    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.pos = pos


def _closure(node: Node) -> Run:
    """`node` as a Python closure over the variable values, built once per compiled expression (a tree walk
    per evaluation cost a function call and several tests per node). Operands are evaluated left first."""
    kind = node.kind
    if kind == "num":
        number = node.value
        return lambda values: number  # type: ignore[return-value]
    if kind == "var":
        name = node.value
        return lambda values: values[name]  # type: ignore[index]
    assert node.left is not None
    left = _closure(node.left)
    if kind == "neg":
        return lambda values: -left(values)
    if kind == "not":
        return lambda values: not left(values)
    assert node.right is not None
    right = _closure(node.right)
    if kind == "and":
        return lambda values: left(values) and right(values)
    if kind == "or":
        return lambda values: left(values) or right(values)
    if kind == "arith":
        return _arith(node.op, node.pos, left, right)
    if node.left.is_bool:
        same = node.op == "=="
        return lambda values: (left(values) == right(values)) == same
    compare = _COMPARE[node.op]
    return lambda values: compare(left(values), right(values))  # type: ignore[arg-type]


def _arith(op: str, pos: int, left: Run, right: Run) -> Run:
    if op in _ARITH:
        apply = _ARITH[op]
        return lambda values: apply(left(values), right(values))  # type: ignore[arg-type]

    def divide(values: Mapping[str, float]) -> float:
        num, den = left(values), right(values)
        if den == 0:
            raise _DivByZero(pos)
        return num / den
    return divide


_TRUE, _FALSE = EvalResult(True, None), EvalResult(False, None)


def evaluate(compiled: CompiledExpr, values: Mapping[str, float]) -> EvalResult:
    """Evaluate with variable values (aliases allowed as keys). Pure; never raises for arithmetic."""
    env: dict[str, float] = {}
    for key, val in values.items():
        env[ALIASES.get(key, key)] = val
    return evaluate_canonical(compiled, env)


def evaluate_canonical(compiled: CompiledExpr, env: Mapping[str, float]) -> EvalResult:
    """`evaluate` with the values already under their canonical names (an alias key is not read). Pure."""
    names = compiled.names
    missing = names - env.keys()
    if missing:
        return EvalResult(False, f"no value for {', '.join(sorted(missing))}")
    for name in names:
        value = env[name]
        if type(value) is not float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return EvalResult(False, f"value of {name} is not a number")
    try:
        value = (compiled.run or _closure(compiled.root))(env)
    except _DivByZero as exc:
        return EvalResult(False, f"division by zero at col {exc.pos + 1} of `{compiled.text}`")
    except OverflowError:
        return EvalResult(False, f"number too large in `{compiled.text}`")
    return _TRUE if value else _FALSE
