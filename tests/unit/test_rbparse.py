"""The config.rb literal parser: accepted syntax, refused syntax with line/col, and properties."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from functions.conf.rbparse import MAX_DEPTH, MAX_INPUT, RbSyntaxError, parse_rb

ROOT = Path(__file__).resolve().parents[2]


def test_literals_of_every_kind() -> None:
    text = """
# a comment
ENDPOINT = {
  'a' => { :proxy => "http://h:2633/RPC2", oneauth: 'u:p', "label": 1, },   # trailing commas
  :sym => [1, -2, 3.5, -0.25, 1e3, 2E-2, 1_000, true, false, nil, [], {},],
  42 => :pack,
}
TEMPLATE = {}; ENVIRONMENT =
  {}
"""
    assert parse_rb(text) == {
        "ENDPOINT": {
            "a": {"proxy": "http://h:2633/RPC2", "oneauth": "u:p", "label": 1},
            "sym": [1, -2, 3.5, -0.25, 1000.0, 0.02, 1000, True, False, None, [], {}],
            42: "pack",
        },
        "TEMPLATE": {},
        "ENVIRONMENT": {},
    }


@pytest.mark.parametrize(("ruby", "value"), [
    (r'"a\"b"', 'a"b'),
    (r'"back\\slash"', "back\\slash"),
    (r'"tab\tnl\n"', "tab\tnl\n"),
    (r'"\/vol\/data"', "/vol/data"),
    (r'"\u00e9\u{1F600}\x41\101"', "\u00e9\U0001F600AA"),
    (r'"\q"', "q"),
    (r"'it\'s'", "it's"),
    (r"'a\\b'", "a\\b"),
    (r"'keep\n\t'", "keep\\n\\t"),
    (r'"#not {interp} #"', "#not {interp} #"),
    (r":'quoted sym'", "quoted sym"),
    (r'"\"MOUNTLIST=\\/vol\\/data{1-6},\""', '"MOUNTLIST=\\/vol\\/data{1-6},"'),
])
def test_string_escapes(ruby: str, value: str) -> None:
    assert parse_rb(f"ENDPOINT = {ruby}") == {"ENDPOINT": value}


def test_block_comments_and_end_marker() -> None:
    text = "=begin\nENDPOINT = `rm -rf /`\n=end\nENDPOINT = 1\n__END__\nanything `goes` here"
    assert parse_rb(text) == {"ENDPOINT": 1}


def test_global_constants_only_when_asked() -> None:
    text = "SHAREDPOOLS = {'p' => {:zone => 'z'}}\nSERVICES = {}"
    assert parse_rb(text, {"SHAREDPOOLS", "SERVICES"})["SHAREDPOOLS"] == {"p": {"zone": "z"}}
    with pytest.raises(RbSyntaxError, match="unknown constant `SHAREDPOOLS`"):
        parse_rb(text)


@pytest.mark.parametrize(("text", "line", "col", "reason"), [
    ("ENDPOINT = {}.freeze", 1, 14, "method calls are not allowed"),
    ("require 'json'\nENDPOINT = {}", 1, 1, "method calls are not allowed (`require`)"),
    ("ENDPOINT = {\n  :a => File.read('/etc/passwd')\n}", 2, 9, "constant `File` is not allowed here"),
    ("ENDPOINT = {\n  :a => system('id')\n}", 2, 9, "method calls are not allowed (`system`)"),
    ("ENDPOINT = `id`", 1, 12, "backticks (shell commands) are not allowed"),
    ("ENDPOINT = %x(id)", 1, 12, "%-literals are not allowed"),
    ("ENDPOINT = %w[a b]", 1, 12, "%-literals are not allowed"),
    ("ENDPOINT = <<~EOS\nx\nEOS", 1, 12, "heredocs are not allowed"),
    ('ENDPOINT = "a#{`id`}"', 1, 14, "string interpolation"),
    ('ENDPOINT = "a#@x"', 1, 14, "string interpolation"),
    ("ENDPOINT = $stdin", 1, 12, "variables are not allowed"),
    ("FOO = 1", 1, 1, "unknown constant `FOO`"),
    ("ENDPOINT = 1\nENDPOINT = 2", 2, 1, "assigned twice"),
    ("ENDPOINT = {}\nENDPOINT.merge!(:a => 1)", 2, 9, "method calls are not allowed"),
    ("ENDPOINT = {:a => 1, :a => 2}", 1, 22, "duplicate key 'a'"),
    ("ENDPOINT = {:a => 1 :b => 2}", 1, 21, "expected `,` or `}`"),
    ("ENDPOINT = {\n  :a => 1\n  :b => 2\n}", 3, 3, "missing `,`"),
    ("ENDPOINT = {\n  :a => [1, 2\n", 2, 9, "`[` is never closed"),
    ("ENDPOINT = {", 1, 12, "`{` is never closed"),
    ("ENDPOINT = 'abc", 1, 12, "unterminated string"),
    ("ENDPOINT = 010", 1, 12, "leading zero"),
    ("ENDPOINT = 0x10", 1, 12, "malformed number"),
    ("ENDPOINT = (1)", 1, 12, "parentheses"),
    ("ENDPOINT = 1 + 2", 1, 14, "expected a new line"),
    ("ENDPOINT = {[1] => 2}", 1, 13, "hash keys must be strings"),
    ("ENDPOINT = {:a, 1}", 1, 15, "expected `=>`"),
    ("ENDPOINT == 1", 1, 10, "expected `=`"),
    ("ENDPOINT = 1; x = 2", 1, 15, "method calls are not allowed (`x`)"),
    ("ENDPOINT = 1e999", 1, 12, "out of range"),
])
def test_refused_syntax_names_line_and_col(text: str, line: int, col: int, reason: str) -> None:
    with pytest.raises(RbSyntaxError) as info:
        parse_rb(text)
    assert (info.value.line, info.value.col) == (line, col), str(info.value)
    assert reason in info.value.reason
    assert str(info.value).startswith(f"line {line}, col {col}: ")


def test_caps_on_depth_and_size() -> None:
    deep = "ENDPOINT = " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    with pytest.raises(RbSyntaxError, match="nesting deeper"):
        parse_rb(deep)
    ok = "ENDPOINT = " + "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert parse_rb(ok)["ENDPOINT"] is not None
    with pytest.raises(RbSyntaxError, match="larger than"):
        parse_rb("#" * (MAX_INPUT + 1))
    with pytest.raises(RbSyntaxError, match="too long"):
        parse_rb("ENDPOINT = " + "9" * 5000)


def _guide_blocks() -> list[str]:
    """The hash snippets of the guide, split at blank lines (each one a hash entry or hash body)."""
    guide = (ROOT / "tests" / "fixtures" / "carina-guide.txt").read_text()   # the seed user guide, verbatim
    blocks = []
    for start, stop in [("'flm01' => {", "The following explains"), ("  :elasticity_policy   => {\n", "Load-Based"),
                        ("       :elasticity_policy   => {", "Application Storage"),
                        ("  'cassandra-flm01' => {", "In the contextualization"),
                        ("    'analytics' => {", "  \u2022 type: must")]:
        body = guide[guide.index(start):guide.index(stop, guide.index(start))]
        blocks += [b.strip() for b in body.split("\n\n") if b.strip()]
    return blocks


def _close(body: str) -> str:
    """Close the open brackets of a snippet (the guide page lost the closing lines)."""
    stack = []
    for ch in re.sub(r"(\"(\\.|[^\"\\])*\"|'[^']*')", "", body):
        if ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            stack.pop()
    return body.rstrip().rstrip(",") + "".join(reversed(stack))


def test_guide_snippets_parse() -> None:
    parsed = {}
    for block in _guide_blocks():
        parsed.update(parse_rb("ENVIRONMENT = " + _close("{" + block))["ENVIRONMENT"])
    assert set(parsed) == {"flm01", "example", "tomcat", "elasticity_policy", "cassandra-flm01", "analytics"}
    assert parsed["flm01"] == {"proxy": "http://oneserver:2633/RPC2", "oneauth": "flm01-oneenv2:XXXXXX"}
    assert parsed["example"]["network_id"] == {"flm01": 21, "hlx01": 7}
    assert parsed["tomcat"]["slave_context_var"] == '"APP_PACKAGE=gwt-petstore.war, SLAVE_ID=%SLAVE_INDEX%"'
    assert parsed["cassandra-flm01"]["master_context_var"] == '"MOUNTLIST=\\/vol\\/data{1-6},"'
    assert parsed["elasticity_policy"] == {"mode": "auto", "min": 2, "max": 4, "priority": 10, "period": 3,
                                           "scaleup_expr": "avgcpu > 50", "scaledown_expr": "avgcpu < 20"}
    assert parsed["analytics"]["dependencies"] == {"tomcat": ["hbase", "jenkins"], "jenkins": ["hbase"]}


def test_guide_ha_snippet_without_commas_is_refused_clearly() -> None:
    text = ("ENVIRONMENT = {'tomcat_ha_active' => {:availability_policy => {\n  :period => 3,\n"
            "  :recreate_expr => \"nummissing > 0\"\n  :failover_role => \"active\"\n}}}")
    with pytest.raises(RbSyntaxError) as info:
        parse_rb(text)
    assert (info.value.line, info.value.col) == (4, 3)
    assert "missing `,`" in info.value.reason


def test_example_files_parse() -> None:
    parsed = parse_rb((ROOT / "config/examples/config.rb").read_text())
    assert set(parsed) == {"ENDPOINT", "TEMPLATE", "ENVIRONMENT"}
    assert parsed["ENDPOINT"]["onesim"]["proxy"] == "http://127.0.0.1:2633/RPC2"


# -- properties ------------------------------------------------------------------------------

_keys = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
_scalars = (st.integers(min_value=-10**12, max_value=10**12)
            | st.floats(allow_nan=False, allow_infinity=False, width=64)
            | st.booleans() | st.none() | st.text(max_size=20))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(_keys | st.text(max_size=8), inner, max_size=4), max_leaves=20)


def _ruby_string(text: str, style: int) -> str:
    if style == 0:
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    out = []
    for ch in text:
        if ch in '"\\#':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 32 or 0xD800 <= ord(ch) <= 0xDFFF:
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _render(value: object, draw: st.DrawFn) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text if ("." in text or "e" in text) else text + ".0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if re.fullmatch(r"[a-z_][a-z0-9_]*", value) and value not in ("true", "false", "nil") and draw(st.booleans()):
            return ":" + value
        return _ruby_string(value, draw(st.integers(0, 1)))
    sep = draw(st.sampled_from([",", ", ", ",\n  ", " ,# c\n"]))
    trailing = draw(st.sampled_from(["", ",", ",\n"]))
    if isinstance(value, list):
        return "[" + sep.join(_render(v, draw) for v in value) + (trailing if value else "") + "]"
    assert isinstance(value, dict)
    parts = []
    for key, item in value.items():
        if re.fullmatch(r"[a-z_][a-z0-9_]*", key) and draw(st.booleans()):
            parts.append(f"{key}: {_render(item, draw)}")
        else:
            parts.append(f"{_render(key, draw)} => {_render(item, draw)}")
    return "{" + sep.join(parts) + (trailing if value else "") + "}"


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@settings(max_examples=300, deadline=None)
@given(st.data(), _values)
def test_rendered_literals_parse_back_equal(data: st.DataObject, value: object) -> None:
    text = "# generated\nENVIRONMENT = " + _render(value, data.draw) + "\n"
    assert _same(parse_rb(text)["ENVIRONMENT"], value)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200) | st.text(alphabet="ENVIRONMENT ={}[]:'\"#\\,=>-1.e\n_abc%`$@(){", max_size=80))
def test_any_text_gives_a_value_or_rb_syntax_error(text: str) -> None:
    try:
        result = parse_rb(text)
    except RbSyntaxError as exc:
        assert exc.line >= 1 and exc.col >= 1
    else:
        assert isinstance(result, dict)
