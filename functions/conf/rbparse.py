"""Safe parser for the config.rb literal subset. Pure: it reads text and never executes anything.

Accepted: `NAME = value` assignments to known constants; values are strings ('…' and "…" with escapes),
symbols (`:name`, `:"…"`, turned into plain strings), integers, floats, negative numbers, true/false/nil,
arrays, hashes with `=>` or `key:` pairs, `#` and `=begin`/`=end` comments, trailing commas, newlines
anywhere inside brackets. Everything else (method calls, backticks, %-literals, heredocs, interpolation,
unknown constants) raises RbSyntaxError with the line and column.
"""

from __future__ import annotations

import re
from typing import Any

MAX_INPUT = 256_000        # characters (a large real config.rb is a few tens of KB)
MAX_DEPTH = 32             # nesting of [ ] and { }
DEFAULT_CONSTANTS = frozenset({"ENDPOINT", "TEMPLATE", "ENVIRONMENT"})
GLOBAL_CONSTANTS = frozenset({"SHAREDPOOLS", "SERVICES"})

_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "s": " ", "0": "\0", "a": "\a", "b": "\b",
                   "e": "\x1b", "f": "\f", "v": "\v"}
_NUMBER = re.compile(r"-?\d(?:_?\d)*(\.\d(?:_?\d)*)?([eE][+-]?\d+)?")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*[?!]?")
_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*[?!]?):(?!:)")
_WORDS = {"true": True, "false": False, "nil": None}


class RbSyntaxError(ValueError):
    """A config.rb text outside the accepted subset. `.line`/`.col` are 1-based, `.reason` is bare."""

    def __init__(self, line: int, col: int, reason: str) -> None:
        super().__init__(f"line {line}, col {col}: {reason}")
        self.line = line
        self.col = col
        self.reason = reason


class _Parser:
    """Recursive-descent parser over the raw text (no separate token list)."""

    def __init__(self, text: str, constants: frozenset[str]) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0
        self.constants = constants

    # -- positions and errors -------------------------------------------------------------
    def error(self, reason: str, pos: int | None = None) -> RbSyntaxError:
        at = self.pos if pos is None else pos
        line = self.text.count("\n", 0, at) + 1
        col = at - (self.text.rfind("\n", 0, at) + 1) + 1
        return RbSyntaxError(line, col, reason)

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos:self.pos + n]

    def skip_space(self) -> bool:
        """Skip blanks, comments and newlines; return True if a newline (or `;`-free line end) was passed."""
        newline = False
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            at_line_start = self.pos == 0 or text[self.pos - 1] == "\n"
            if ch in " \t\r\f\v":
                self.pos += 1
            elif ch == "\\" and text.startswith("\n", self.pos + 1):
                self.pos += 2                                   # explicit line continuation
            elif ch == "\n":
                newline = True
                self.pos += 1
            elif ch == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            elif at_line_start and text.startswith("=begin", self.pos):
                end = re.compile(r"^=end\b.*$", re.M).search(text, self.pos)
                if end is None:
                    raise self.error("`=begin` comment without `=end`")
                self.pos = end.end()
            elif at_line_start and text.startswith("__END__", self.pos) and \
                    text[self.pos + 7:self.pos + 8] in ("", "\n", "\r"):
                self.pos = len(text)
            else:
                break
        return newline

    # -- top level ------------------------------------------------------------------------
    def parse_file(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        self.skip_space()
        while self.pos < len(self.text):
            start = self.pos
            match = _IDENT.match(self.text, self.pos)
            if match is None or not match.group()[0].isupper():
                raise self.unexpected("expected an assignment like `ENVIRONMENT = {...}`")
            name = match.group()
            if name not in self.constants:
                allowed = ", ".join(sorted(self.constants))
                raise self.error(f"unknown constant `{name}` (allowed: {allowed})")
            self.pos = match.end()
            self.skip_space()
            if self.peek() != "=" or self.peek(2) in ("==", "=>", "=~"):
                raise self.unexpected(f"expected `=` after `{name}`")
            if name in result:
                raise self.error(f"`{name}` is assigned twice", start)
            self.pos += 1
            self.skip_space()
            result[name] = self.parse_value()
            if self.pos == start:  # pragma: no cover - defensive, parse_value always advances
                raise self.error("parser made no progress")
            newline = self.skip_space()
            if self.peek() == ";":
                self.pos += 1
                self.skip_space()
            elif self.pos < len(self.text) and not newline:
                raise self.unexpected("expected a new line after the value")
        return result

    def unexpected(self, hint: str) -> RbSyntaxError:
        """The error for whatever sits at the current position, with a specific reason when known."""
        text, pos = self.text, self.pos
        if pos >= len(text):
            return self.error(f"unexpected end of input ({hint})")
        ch = text[pos]
        if ch == "`":
            return self.error("backticks (shell commands) are not allowed")
        if ch == "%":
            return self.error("%-literals are not allowed")
        if text.startswith("<<", pos):
            return self.error("heredocs are not allowed")
        if ch == "(":
            return self.error("parentheses and expressions are not allowed")
        if ch == "." or text.startswith("::", pos) or text.startswith("&.", pos):
            return self.error("method calls are not allowed")
        if ch == "$" or ch == "@":
            return self.error("variables are not allowed")
        match = _IDENT.match(text, pos)
        if match:
            word = match.group()
            if word[0].isupper():
                return self.error(f"constant `{word}` is not allowed here")
            return self.error(f"method calls are not allowed (`{word}`)")
        return self.error(f"unexpected `{ch}` ({hint})")

    # -- values ---------------------------------------------------------------------------
    def parse_value(self) -> Any:
        ch = self.peek()
        if ch == "{":
            return self.nested(self.parse_hash)
        if ch == "[":
            return self.nested(self.parse_array)
        if ch in "\"'":
            return self.parse_string()
        if ch == ":" and self.peek(2) != "::":
            return self.parse_symbol()
        if ch.isdigit() or (ch == "-" and self.peek(2)[1:].isdigit()):
            return self.parse_number()
        match = _IDENT.match(self.text, self.pos)
        if match and match.group() in _WORDS:
            end = match.end()
            if not re.match(r"\s*(\.|\(|::|&\.)", self.text[end:end + 8]):
                self.pos = end
                return _WORDS[match.group()]
        raise self.unexpected("expected a value")

    def nested(self, parse: Any) -> Any:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"nesting deeper than {MAX_DEPTH} levels")
        try:
            value = parse()
        finally:
            self.depth -= 1
        self.check_no_call()
        return value

    def check_no_call(self) -> None:
        """Reject a method call glued to a value, e.g. `{...}.freeze` or `'a'.upcase`."""
        save = self.pos
        self.skip_space_inline()
        if self.peek() in (".", "(") or self.peek(2) in ("::", "&."):
            raise self.error("method calls are not allowed")
        self.pos = save

    def skip_space_inline(self) -> None:
        while self.peek() in (" ", "\t"):
            self.pos += 1

    def parse_number(self) -> int | float:
        match = _NUMBER.match(self.text, self.pos)
        assert match is not None
        end = match.end()
        nxt = self.text[end:end + 1]
        if nxt and (nxt.isalnum() or nxt == "_" or (nxt == "." and self.text[end + 1:end + 2].isdigit())):
            raise self.error("malformed number")
        digits = match.group().lstrip("-")
        if len(digits) > 64:
            raise self.error("number too long")
        if len(digits) > 1 and digits[0] == "0" and digits[1].isdigit():
            raise self.error("numbers with a leading zero are not allowed (Ruby reads them as octal)")
        self.pos = end
        raw = match.group().replace("_", "")
        if match.group(1) or match.group(2):
            value = float(raw)
            if value in (float("inf"), float("-inf")):
                raise self.error("number out of range", match.start())
            self.check_no_call()
            return value
        self.check_no_call()
        return int(raw)

    def parse_symbol(self) -> str:
        start = self.pos
        self.pos += 1
        if self.peek() in "\"'" and self.peek():
            return self.parse_string()
        match = _IDENT.match(self.text, self.pos)
        if match is None:
            raise self.unexpected("expected a symbol name after `:`")
        self.pos = match.end()
        if self.peek() == ":" and self.peek(2) != "::":
            raise self.error("unexpected `:` after symbol", start)
        self.check_no_call()
        return match.group()

    def parse_string(self) -> str:
        quote = self.peek()
        start = self.pos
        self.pos += 1
        out: list[str] = []
        text = self.text
        while True:
            if self.pos >= len(text):
                raise self.error("unterminated string", start)
            ch = text[self.pos]
            if ch == quote:
                self.pos += 1
                break
            if ch == "\\":
                out.append(self.escape(quote))
                continue
            if quote == '"' and ch == "#" and text[self.pos + 1:self.pos + 2] in ("{", "@", "$"):
                raise self.error("string interpolation (`#{`, `#@`, `#$`) is not allowed")
            out.append(ch)
            self.pos += 1
        if self.peek() == ":" and self.peek(2) != "::":
            return "".join(out)          # a `"key": value` label; the caller handles the colon
        self.check_no_call()
        return "".join(out)

    def escape(self, quote: str) -> str:
        """Decode the escape at self.pos (a backslash) and advance past it."""
        text = self.text
        nxt = text[self.pos + 1:self.pos + 2]
        if not nxt:
            raise self.error("unterminated string")
        if quote == "'":
            self.pos += 2
            return nxt if nxt in ("'", "\\") else "\\" + nxt
        self.pos += 2
        if nxt in _SIMPLE_ESCAPES and not (nxt == "0" and text[self.pos:self.pos + 1].isdigit()):
            return _SIMPLE_ESCAPES[nxt]
        if nxt == "\n":
            return ""
        if nxt == "u":
            return self.unicode_escape()
        if nxt == "x":
            match = re.compile(r"[0-9A-Fa-f]{1,2}").match(text, self.pos)
            if match is None:
                raise self.error("invalid \\x escape", self.pos - 2)
            self.pos = match.end()
            return chr(int(match.group(), 16))
        if nxt in "01234567":
            match = re.compile(r"[0-7]{1,3}").match(text, self.pos - 1)
            assert match is not None
            self.pos = match.end()
            return chr(int(match.group(), 8) & 0xFF)
        if nxt in "cCM":
            raise self.error(f"\\{nxt} escapes are not supported", self.pos - 2)
        return nxt

    def unicode_escape(self) -> str:
        text, start = self.text, self.pos - 2
        match = re.compile(r"\{([0-9A-Fa-f]{1,6})\}|([0-9A-Fa-f]{4})").match(text, self.pos)
        if match is None:
            raise self.error("invalid \\u escape", start)
        code = int(match.group(1) or match.group(2), 16)
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise self.error("invalid \\u escape", start)
        self.pos = match.end()
        return chr(code)

    def parse_array(self) -> list[Any]:
        open_pos = self.pos
        self.pos += 1
        items: list[Any] = []
        while True:
            self.skip_space()
            self.check_open(open_pos, "[")
            if self.peek() == "]":
                self.pos += 1
                return items
            items.append(self.parse_value())
            self.after_item(open_pos, "]")

    def check_open(self, open_pos: int, bracket: str) -> None:
        if self.pos >= len(self.text):
            raise self.error(f"`{bracket}` is never closed", open_pos)

    def after_item(self, open_pos: int, close: str) -> None:
        """Consume the `,` after an array item or hash entry, or check that `close` follows."""
        newline = self.skip_space()
        self.check_open(open_pos, "[" if close == "]" else "{")
        if self.peek() == ",":
            self.pos += 1
        elif self.peek() != close:
            if newline:
                raise self.error(f"missing `,` before this entry (or a `{close}`)")
            raise self.unexpected(f"expected `,` or `{close}`")

    def parse_hash(self) -> dict[Any, Any]:
        open_pos = self.pos
        self.pos += 1
        result: dict[Any, Any] = {}
        while True:
            self.skip_space()
            self.check_open(open_pos, "{")
            if self.peek() == "}":
                self.pos += 1
                return result
            key_pos = self.pos
            key = self.parse_key()
            if key in result:
                raise self.error(f"duplicate key {key!r}", key_pos)
            self.skip_space()
            self.check_open(open_pos, "{")
            result[key] = self.parse_value()
            self.after_item(open_pos, "}")

    def parse_key(self) -> Any:
        """A hash key followed by `=>`, or a `label:` / `"label":` key. Leaves pos after the separator."""
        label = _LABEL.match(self.text, self.pos)
        if label:
            self.pos = label.end()
            return label.group(1)
        key_pos = self.pos
        key = self.parse_value()
        if isinstance(key, (list, dict)):
            raise self.error("hash keys must be strings, symbols or numbers", key_pos)
        if self.text[key_pos] in "\"'" and self.peek() == ":":
            self.pos += 1
            return key
        self.skip_space()
        if self.peek(2) != "=>":
            raise self.unexpected("expected `=>` after the hash key")
        self.pos += 2
        return key


def parse_rb(text: str, constants: frozenset[str] | set[str] = DEFAULT_CONSTANTS) -> dict[str, Any]:
    """Parse config.rb text into {constant: value}. Pure and safe to run twice; raises RbSyntaxError."""
    if not isinstance(text, str):
        raise TypeError("text must be a str")
    if len(text) > MAX_INPUT:
        raise RbSyntaxError(1, 1, f"input larger than {MAX_INPUT} characters")
    if text.startswith("\ufeff"):
        text = text[1:]
    return _Parser(text, frozenset(constants)).parse_file()
