"""The OpenNebula template language: text and XML forms, errors, and a hypothesis round trip."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onesim.template import TemplateError, merge_attrs, parse, render_text, replace_attrs


def test_text_syntax() -> None:
    text = """# a comment
cpu = 0.5   # trailing comment
MEMORY=512
NAME = "a \\"quoted\\" name # not a comment"
EMPTY =
CONTEXT = [ NETWORK = "YES", SSH_KEY = "$USER[SSH_PUBLIC_KEY]", ]
DISK = [IMAGE_ID = 0]
DISK = [ IMAGE_ID = 1,
         SIZE = 10 ]
A = 1 B = 2
"""
    assert parse(text) == [
        ("CPU", "0.5"), ("MEMORY", "512"), ("NAME", 'a "quoted" name # not a comment'), ("EMPTY", ""),
        ("CONTEXT", {"NETWORK": "YES", "SSH_KEY": "$USER[SSH_PUBLIC_KEY]"}),
        ("DISK", {"IMAGE_ID": "0"}), ("DISK", {"IMAGE_ID": "1", "SIZE": "10"}), ("A", "1"), ("B", "2"),
    ]


def test_xml_syntax_like_pyone_sends() -> None:
    xml = ("<TEMPLATE><CONTEXT><SERVICE_ID><![CDATA[1]]></SERVICE_ID><X>a&amp;b</X></CONTEXT>"
           "<nic><network_id>0</network_id></nic><NIC><NETWORK_ID>1</NETWORK_ID></NIC><MEMORY>64</MEMORY></TEMPLATE>")
    assert parse("  \n" + xml) == [("CONTEXT", {"SERVICE_ID": "1", "X": "a&b"}), ("NIC", {"NETWORK_ID": "0"}),
                                   ("NIC", {"NETWORK_ID": "1"}), ("MEMORY", "64")]


@pytest.mark.parametrize("bad, where", [
    ("A", "expected '='"),
    ("A = [ ]", "at least one"),
    ('A = "open', "unterminated"),
    ("= 3", "attribute name"),
    ("A = [ B = 1 C = 2 ]", "expected ',' or ']'"),
    ("A = 1 , B = 2", "unexpected ','"),
    ("X = 1\nY = [ Z = 1", "line 2"),
    ("<T><A><B><C>1</C></B></A></T>", "nested too deep"),
    ("<T><A>", "XML"),
    ('<!DOCTYPE T [<!ENTITY e SYSTEM "file:///etc/passwd">]><T><A>&e;</A></T>', ""),
])
def test_errors_name_the_problem(bad: str, where: str) -> None:
    try:
        result = parse(bad)
    except TemplateError as exc:
        assert where in str(exc) and str(exc).startswith("Parse error")
    else:  # an external entity must never be resolved
        assert "root:" not in str(result)


def test_replace_and_merge() -> None:
    base = parse("A = 1\nCTX = [ X = 1, Y = 2 ]\nNIC = [ N = 0 ]\nNIC = [ N = 1 ]")
    assert replace_attrs(base, parse("CTX = [ Z = 3 ]")) == parse("A = 1\nNIC = [ N = 0 ]\nNIC = [ N = 1 ]\n"
                                                                   "CTX = [ Z = 3 ]")
    assert merge_attrs(base, parse("CTX = [ Y = 9 ]\nB = 2")) == parse(
        "A = 1\nNIC = [ N = 0 ]\nNIC = [ N = 1 ]\nCTX = [ X = 1, Y = 9 ]\nB = 2")


names = st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True)
values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"), max_size=30)
attrs = st.lists(st.tuples(names, st.one_of(values, st.dictionaries(names, values, min_size=1, max_size=4))),
                 max_size=8)


@settings(max_examples=200, deadline=None)
@given(attrs)
def test_render_parse_round_trip(tmpl: list) -> None:
    assert parse(render_text(tmpl)) == tmpl


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_parses_or_raises_template_error(text: str) -> None:
    try:
        result = parse(text)
    except TemplateError:
        return
    assert all(name == name.upper() for name, _ in result)
