"""OpenNebula template language: parse text or XML templates, render them back (pure).

A template is an ordered list of attributes ``(NAME, value)`` where value is a string (single attribute)
or a ``dict[str, str]`` (vector attribute). Names are upper-cased; repeated names are kept in order.

Text syntax (as oned's lexer): ``NAME = value`` with an unquoted value free of blanks and ``=#,[]``, or
``NAME = "quoted value"`` (``\\"`` and ``\\\\`` escapes), ``NAME =`` (empty), vectors
``NAME = [ K = v, K2 = "v2" ]`` (a trailing comma is accepted), ``#`` comments to end of line.
A template whose first non-blank character is ``<`` is read as XML: the root's children are attributes,
a child with element children is a vector (one level only).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from lxml import etree

Value = str | dict[str, str]
Attr = tuple[str, Value]
Template = list[Attr]

MAX_TEMPLATE_BYTES = 1_000_000
_NAME_RE = re.compile(r"[A-Za-z0-9_]+")
_UNQUOTED_RE = re.compile(r"[^=#\s,\[\]\"]+")


class TemplateError(ValueError):
    """A template could not be parsed; the message names the line and what was wrong."""


class _Lexer:
    """Character cursor over template text, tracking the line for error messages."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    @property
    def line(self) -> int:
        return self.text.count("\n", 0, self.pos) + 1

    def fail(self, what: str) -> TemplateError:
        return TemplateError(f"Parse error: line {self.line}: {what}")

    def skip(self, newlines: bool = True) -> None:
        """Skip blanks (and newlines and comments when `newlines`)."""
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch in " \t\r" or (newlines and ch == "\n"):
                self.pos += 1
            elif ch == "#" and newlines:
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end + 1
            else:
                return

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            found = repr(self.peek()) if self.peek() else "end of template"
            raise self.fail(f"expected {ch!r}, found {found}")
        self.pos += 1

    def name(self) -> str:
        m = _NAME_RE.match(self.text, self.pos)
        if not m:
            found = repr(self.peek()) if self.peek() else "end of template"
            raise self.fail(f"expected an attribute name, found {found}")
        self.pos = m.end()
        return m.group(0).upper()

    def quoted(self) -> str:
        """Read a double-quoted string starting at the cursor."""
        self.pos += 1
        out: list[str] = []
        text = self.text
        while True:
            if self.pos >= len(text):
                raise self.fail("unterminated quoted string")
            ch = text[self.pos]
            if ch == "\\" and self.pos + 1 < len(text) and text[self.pos + 1] in "\"\\":
                out.append(text[self.pos + 1])
                self.pos += 2
            elif ch == '"':
                self.pos += 1
                return "".join(out)
            else:
                out.append(ch)
                self.pos += 1

    def scalar(self, in_vector: bool) -> str:
        """Read a value: quoted, unquoted word, or empty (end of line / `,` / `]`)."""
        self.skip(newlines=in_vector)
        ch = self.peek()
        if ch == '"':
            return self.quoted()
        m = _UNQUOTED_RE.match(self.text, self.pos)
        if m:
            self.pos = m.end()
            return m.group(0)
        if ch in ("", "\n", "#", ",", "]"):
            return ""
        raise self.fail(f"unexpected {ch!r} in value")


def _parse_vector(lx: _Lexer) -> dict[str, str]:
    lx.pos += 1  # the '['
    vec: dict[str, str] = {}
    while True:
        lx.skip()
        if lx.peek() == "]":
            lx.pos += 1
            break
        key = lx.name()
        lx.skip()
        lx.expect("=")
        vec[key] = lx.scalar(in_vector=True)
        lx.skip()
        if lx.peek() == ",":
            lx.pos += 1
        elif lx.peek() != "]":
            found = repr(lx.peek()) if lx.peek() else "end of template"
            raise lx.fail(f"expected ',' or ']' in vector, found {found}")
    if not vec:
        raise lx.fail("a vector attribute needs at least one KEY = value pair")
    return vec


def parse_text(text: str) -> Template:
    """Parse the `A = v` template syntax. Raises TemplateError naming the line."""
    lx = _Lexer(text)
    out: Template = []
    while True:
        lx.skip()
        if not lx.peek():
            return out
        name = lx.name()
        lx.skip(newlines=False)
        lx.expect("=")
        lx.skip(newlines=False)
        if lx.peek() == "[":
            out.append((name, _parse_vector(lx)))
        else:
            out.append((name, lx.scalar(in_vector=False)))
        lx.skip(newlines=False)
        if lx.peek() not in ("", "\n", "#") and not _NAME_RE.match(lx.peek()):
            raise lx.fail(f"unexpected {lx.peek()!r} after the value of {name}")


def _xml_parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)


def parse_xml(text: str) -> Template:
    """Parse an XML template (root name ignored). Raises TemplateError."""
    try:
        root = etree.fromstring(text.encode("utf-8"), parser=_xml_parser())
    except etree.XMLSyntaxError as exc:
        raise TemplateError(f"Parse error: XML: {exc}") from None
    out: Template = []
    for child in root:
        if not isinstance(child.tag, str):
            continue  # comments, processing instructions
        name = _xml_name(child.tag)
        subs = [c for c in child if isinstance(c.tag, str)]
        if not subs:
            out.append((name, child.text or ""))
            continue
        vec: dict[str, str] = {}
        for sub in subs:
            if any(isinstance(c.tag, str) for c in sub):
                raise TemplateError(f"Parse error: XML: {name}/{_xml_name(sub.tag)} is nested too deep")
            vec[_xml_name(sub.tag)] = sub.text or ""
        out.append((name, vec))
    return out


def _xml_name(tag: str) -> str:
    name = etree.QName(tag).localname.upper()
    if not _NAME_RE.fullmatch(name):
        raise TemplateError(f"Parse error: XML: bad attribute name {name!r}")
    return name


def parse(text: str) -> Template:
    """Parse a template in either syntax (XML when the first non-blank char is `<`)."""
    if not isinstance(text, str):
        raise TemplateError("Parse error: template must be a string")
    if len(text) > MAX_TEMPLATE_BYTES:
        raise TemplateError(f"Parse error: template larger than {MAX_TEMPLATE_BYTES} bytes")
    if text.lstrip().startswith("<"):
        return parse_xml(text)
    return parse_text(text)


def quote(value: str) -> str:
    """Quote a value for the text syntax (escapes `\\` and `"`)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_text(tmpl: Iterable[Attr]) -> str:
    """Render attributes in the text syntax, every value quoted; parse_text() reads it back equal."""
    lines = []
    for name, value in tmpl:
        if isinstance(value, dict):
            inner = ",\n  ".join(f"{k} = {quote(v)}" for k, v in value.items())
            lines.append(f"{name} = [\n  {inner} ]")
        else:
            lines.append(f"{name} = {quote(value)}")
    return "\n".join(lines) + ("\n" if lines else "")


def first(tmpl: Iterable[Attr], name: str) -> Value | None:
    """The first value of attribute `name`, or None."""
    for key, value in tmpl:
        if key == name:
            return value
    return None


def first_str(tmpl: Iterable[Attr], name: str) -> str | None:
    """The first single (non-vector) value of `name`, or None."""
    value = first(tmpl, name)
    return value if isinstance(value, str) else None


def replace_attrs(base: Template, extra: Template) -> Template:
    """`base` with every attribute named in `extra` replaced by extra's values (instantiate semantics)."""
    names = {k for k, _ in extra}
    return [(k, v) for k, v in base if k not in names] + list(extra)


def merge_attrs(base: Template, extra: Template) -> Template:
    """Merge `extra` into `base` (update type 1): extra's names replace base's, vectors merge by key."""
    out: Template = []
    extra_by_name: dict[str, list[Value]] = {}
    for k, v in extra:
        extra_by_name.setdefault(k, []).append(v)
    for k, v in base:
        if k not in extra_by_name:
            out.append((k, v))
        elif isinstance(v, dict) and len(extra_by_name[k]) == 1 and isinstance(extra_by_name[k][0], dict):
            merged = dict(v)
            merged.update(extra_by_name[k][0])
            extra_by_name[k] = [merged]
    for k, values in extra_by_name.items():
        out.extend((k, v) for v in values)
    return out
