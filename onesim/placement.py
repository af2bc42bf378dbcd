"""Host selection as OpenNebula's scheduler does it: SCHED_REQUIREMENTS filter, SCHED_RANK order (pure).

Requirements: ``VAR (= | != | > | < | @>) value`` joined with ``&``, ``|``, ``!`` and parentheses; value is a
number, a ``"quoted string"`` or a bare word; ``=`` on strings is a shell glob; ``@>`` means "list contains".
A missing host attribute makes every comparison false (as oned's ``rc == 0 && ...``).
Rank: ``+ - * /``, unary minus, parentheses, numbers and host variables (missing or non-numeric = 0,
``x / 0`` = 0). Higher rank wins; ties go to the lowest host id. Never uses eval.
``$NAME`` / ``$NAME[SUB]`` in either language are replaced at compile time through a lookup function.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

MAX_EXPR_LEN = 4096
MAX_DEPTH = 64

HostValue = str | float | int | list[str]
Lookup = Callable[[str, str | None], str | None]

_TOKEN_RE = re.compile(
    r"""\s*(?:
      (?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)
    | "(?P<str>(?:[^"\\]|\\.)*)"
    | \$(?P<var>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<sub>[A-Za-z0-9_]+)\])?
    | (?P<word>[A-Za-z_][A-Za-z0-9_/]*)
    | (?P<op>@>|!=|[=<>!&|()+\-*/])
    )""",
    re.VERBOSE,
)


class PlacementError(ValueError):
    """An expression could not be parsed; the message gives the position."""


@dataclass(frozen=True)
class Tok:
    kind: str  # num | str | word | op | end
    text: str
    pos: int


def tokenize(text: str, lookup: Lookup | None = None) -> list[Tok]:
    """Split an expression into tokens; `$VAR` is substituted through `lookup` (missing = "")."""
    if not isinstance(text, str):
        raise PlacementError("expression must be a string")
    if len(text) > MAX_EXPR_LEN:
        raise PlacementError(f"expression longer than {MAX_EXPR_LEN} characters")
    toks: list[Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN_RE.match(text, pos)
        if not m or m.end() == pos:
            bad = text[pos:].lstrip()[:1]
            raise PlacementError(f"unexpected {bad!r} at position {len(text) - len(text[pos:].lstrip())}")
        start = m.start(m.lastgroup or 0)
        if m.group("num") is not None:
            toks.append(Tok("num", m.group("num"), start))
        elif m.group("str") is not None:
            toks.append(Tok("str", re.sub(r"\\(.)", r"\1", m.group("str")), start))
        elif m.group("var") is not None:
            value = lookup(m.group("var").upper(), m.group("sub") and m.group("sub").upper()) if lookup else None
            toks.append(_literal_token(value or "", start))
        elif m.group("word") is not None:
            toks.append(Tok("word", m.group("word"), start))
        else:
            toks.append(Tok("op", m.group("op"), start))
        pos = m.end()
    toks.append(Tok("end", "", len(text)))
    return toks


def _literal_token(value: str, pos: int) -> Tok:
    try:
        float(value)
        return Tok("num", value, pos)
    except ValueError:
        return Tok("str", value, pos)


class _Parser:
    def __init__(self, toks: list[Tok]) -> None:
        self.toks = toks
        self.i = 0
        self.depth = 0

    def peek(self) -> Tok:
        return self.toks[self.i]

    def take(self) -> Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def fail(self, what: str) -> PlacementError:
        tok = self.peek()
        found = "end of expression" if tok.kind == "end" else repr(tok.text)
        return PlacementError(f"{what} at position {tok.pos}, found {found}")

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail("expression nested too deep")

    def finish(self) -> None:
        if self.peek().kind != "end":
            raise self.fail("unexpected trailing input")

    def is_op(self, *ops: str) -> bool:
        tok = self.peek()
        return tok.kind == "op" and tok.text in ops

    # ---- requirements -------------------------------------------------------------------------
    def req_or(self) -> tuple:
        node = self.req_and()
        while self.is_op("|"):
            self.take()
            node = ("or", node, self.req_and())
        return node

    def req_and(self) -> tuple:
        node = self.req_not()
        while self.is_op("&"):
            self.take()
            node = ("and", node, self.req_not())
        return node

    def req_not(self) -> tuple:
        self.enter()
        try:
            if self.is_op("!"):
                self.take()
                return ("not", self.req_not())
            if self.is_op("("):
                self.take()
                node = self.req_or()
                if not self.is_op(")"):
                    raise self.fail("expected ')'")
                self.take()
                return node
            return self.comparison()
        finally:
            self.depth -= 1

    def comparison(self) -> tuple:
        var = self.take()
        if var.kind not in ("word", "str"):
            self.i -= 1
            raise self.fail("expected an attribute name")
        if not self.is_op("=", "!=", ">", "<", "@>"):
            raise self.fail(f"expected a comparison after {var.text}")
        op = self.take().text
        val = self.take()
        if val.kind not in ("num", "str", "word"):
            self.i -= 1
            raise self.fail(f"expected a value after {op}")
        value: str | float = float(val.text) if val.kind == "num" else val.text
        return ("cmp", op, var.text.upper(), value)

    # ---- rank ---------------------------------------------------------------------------------
    def rank_sum(self) -> tuple:
        node = self.rank_term()
        while self.is_op("+", "-"):
            op = self.take().text
            node = (op, node, self.rank_term())
        return node

    def rank_term(self) -> tuple:
        node = self.rank_unary()
        while self.is_op("*", "/"):
            op = self.take().text
            node = (op, node, self.rank_unary())
        return node

    def rank_unary(self) -> tuple:
        self.enter()
        try:
            if self.is_op("-"):
                self.take()
                return ("neg", self.rank_unary())
            if self.is_op("+"):
                self.take()
                return self.rank_unary()
            if self.is_op("("):
                self.take()
                node = self.rank_sum()
                if not self.is_op(")"):
                    raise self.fail("expected ')'")
                self.take()
                return node
            tok = self.take()
            if tok.kind == "num":
                return ("num", float(tok.text))
            if tok.kind in ("word", "str"):
                return ("var", tok.text.upper())
            self.i -= 1
            raise self.fail("expected a number or a host attribute")
        finally:
            self.depth -= 1


@dataclass(frozen=True)
class Requirements:
    """A compiled SCHED_REQUIREMENTS expression (None tree = always true)."""

    tree: tuple | None
    source: str

    def matches(self, attrs: Mapping[str, HostValue]) -> bool:
        """True when a host with these attributes satisfies the requirements."""
        return True if self.tree is None else _eval_req(self.tree, attrs)


@dataclass(frozen=True)
class Rank:
    """A compiled SCHED_RANK / RANK expression."""

    tree: tuple | None
    source: str

    def value(self, attrs: Mapping[str, HostValue]) -> float:
        """The rank of a host (0 when the expression is empty)."""
        return 0.0 if self.tree is None else _eval_rank(self.tree, attrs)


def compile_requirements(text: str, lookup: Lookup | None = None) -> Requirements:
    """Parse a requirements expression; raises PlacementError. Empty text matches every host."""
    toks = tokenize(text, lookup)
    if toks[0].kind == "end":
        return Requirements(None, text)
    parser = _Parser(toks)
    tree = parser.req_or()
    parser.finish()
    return Requirements(tree, text)


def compile_rank(text: str, lookup: Lookup | None = None) -> Rank:
    """Parse a rank expression; raises PlacementError. Empty text ranks every host 0."""
    toks = tokenize(text, lookup)
    if toks[0].kind == "end":
        return Rank(None, text)
    parser = _Parser(toks)
    tree = parser.rank_sum()
    parser.finish()
    return Rank(tree, text)


def _as_float(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _scalar_eq(host: object, want: str | float) -> bool:
    if isinstance(want, float):
        num = _as_float(host)
        return num is not None and num == want
    return fnmatch.fnmatchcase(str(host), want)


def _compare(op: str, host: HostValue | None, want: str | float) -> bool:
    if host is None:
        return False
    items = host if isinstance(host, list) else [host]
    if op == "@>":
        return any(_scalar_eq(item, want) for item in items)
    if op == "=":
        return any(_scalar_eq(item, want) for item in items)
    if op == "!=":
        return not any(_scalar_eq(item, want) for item in items)
    left, right = _as_float(items[0] if items else None), _as_float(want)
    if left is None or right is None:
        return False
    return left > right if op == ">" else left < right


def _eval_req(node: tuple, attrs: Mapping[str, HostValue]) -> bool:
    kind = node[0]
    if kind == "and":
        return _eval_req(node[1], attrs) and _eval_req(node[2], attrs)
    if kind == "or":
        return _eval_req(node[1], attrs) or _eval_req(node[2], attrs)
    if kind == "not":
        return not _eval_req(node[1], attrs)
    _, op, name, want = node
    return _compare(op, attrs.get(name), want)


def _eval_rank(node: tuple, attrs: Mapping[str, HostValue]) -> float:
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "var":
        return _as_float(attrs.get(node[1])) or 0.0
    if kind == "neg":
        return -_eval_rank(node[1], attrs)
    left, right = _eval_rank(node[1], attrs), _eval_rank(node[2], attrs)
    if kind == "+":
        return left + right
    if kind == "-":
        return left - right
    if kind == "*":
        return left * right
    return left / right if right else 0.0


@dataclass(frozen=True)
class Candidate:
    """A host as the scheduler sees it: id, attributes, and whether the VM fits its free capacity."""

    id: int
    attrs: Mapping[str, HostValue]
    has_room: bool


def choose_host(hosts: Sequence[Candidate], requirements: Requirements, rank: Rank) -> int | None:
    """The id of the best host that has room and meets the requirements (highest rank, then lowest id)."""
    best: tuple[float, int] | None = None
    for host in hosts:
        if not host.has_room or not requirements.matches(host.attrs):
            continue
        key = (rank.value(host.attrs), -host.id)
        if best is None or key > best:
            best = key
    return None if best is None else -best[1]
