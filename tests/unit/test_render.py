"""functions.model.render: context vars, placeholders, escaping, tags and placement (pure, no servers)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from functions.model.render import (
    RenderError,
    app_url,
    context_pairs,
    format_pairs,
    parse_context_var,
    placement_lines,
    render_vm,
)

# The shipped example template of the original, with every placeholder of ARCHITECTURE.md §2.
TEMPLATE = """\
NAME   = "%NAME%"
CPU    = %CPU%
VCPU   = 1
MEMORY = %MEMORY%
DISK   = [ IMAGE_ID = %IMAGE_ID% ]
NIC    = [ NETWORK_ID = %NETWORK_ID% ]
# ONE-native variables below are resolved by OpenNebula, not by us: $VMID, $NIC[IP]
CONTEXT = [
  VMID = "$VMID",
  HOSTNAME = "$NAME",
  IP = "$NIC[IP]",
  NETMASK = "$NETWORK[NETMASK, NETWORK_ID=%NETWORK_ID%]",
  FILES = "http://%CARINA_IP%/repo/%SERVICE_NAME%/context/{authorized_keys,init.sh,network.sh,%APP_CONTEXT_SCRIPT%}",
  CARINA_IP = "%CARINA_IP%",
  SERVICE_NAME = "%SERVICE_NAME%",
  ENVID = "%ENVID%",
  DEFUSER = "%ADMIN_USER%",
  SERVICE_PORT = "%MASTER_SERVICE_PORT%",
  %APP_CONTEXT_VAR% ]
"""
SLAVE_TEMPLATE = TEMPLATE.replace('ENVID = "%ENVID%",',
                                  'ENVID = "%ENVID%", MASTER_IP = "%MASTER%", PKG = "%APP_PACKAGE%",')

MASTER_VALUES = {"ENVID": "17", "SERVICE_NAME": "oneenv1", "CARINA_IP": "127.0.0.1:8712", "NAME": "tomcat-m",
                 "NETWORK_ID": "0", "IMAGE_ID": "3", "CPU": "1", "MEMORY": "1024",
                 "APP_CONTEXT_SCRIPT": "tomcat.sh", "ADMIN_USER": "root", "MASTER_SERVICE_PORT": "8080"}
SLAVE_VALUES = {**MASTER_VALUES, "NAME": "tomcat-s", "MASTER": "127.0.1.5", "APP_PACKAGE": "gwt-petstore.war"}
EXTRA = {"CARINA_TOKEN": "tok-_123", "CARINA_ROLE": "master", "CARINA_SLOT": "m"}
TAGS = {"CARINA_SERVICE": "oneenv1", "CARINA_ENVID": "17", "CARINA_ROLE": "master", "CARINA_SLOT": "m"}


# --- a tiny reader of OpenNebula's template text, for checking what we produce -------------------------

_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:\\.|[^"\\])*")|(\[)|(\])|(,)|(=)|([^\s=,\[\]#"]+))', re.DOTALL)


def _tokens(text: str) -> list[tuple[str, str]]:
    pos, out = 0, []
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip():
                raise AssertionError(f"cannot tokenize at {text[pos:pos + 20]!r}")
            break
        pos = m.end()
        kinds = ["comment", "quoted", "open", "close", "comma", "eq", "word"]
        for kind, val in zip(kinds, m.groups()):
            if val is not None and kind != "comment":
                if kind == "quoted":
                    val = re.sub(r"\\(.)", r"\1", val[1:-1], flags=re.DOTALL)
                out.append((kind, val))
    return out


def parse_template(text: str) -> list[tuple[str, object]]:
    """[(NAME, value-or-list-of-pairs)], raising AssertionError on anything malformed."""
    toks, i, attrs = _tokens(text), 0, []
    while i < len(toks):
        assert toks[i][0] == "word" and toks[i + 1][0] == "eq", toks[i:i + 3]
        name, i = toks[i][1].upper(), i + 2
        if toks[i][0] == "open":
            i, pairs = i + 1, []
            while toks[i][0] != "close":
                assert toks[i][0] == "word" and toks[i + 1][0] == "eq" and toks[i + 2][0] in ("word", "quoted")
                pairs.append((toks[i][1].upper(), toks[i + 2][1]))
                i += 3
                if toks[i][0] == "comma":
                    i += 1
            attrs.append((name, pairs))
        else:
            assert toks[i][0] in ("word", "quoted"), toks[i]
            attrs.append((name, toks[i][1]))
        i += 1
    return attrs


def _context(text: str) -> list[tuple[str, str]]:
    ctx = [v for n, v in parse_template(text) if n == "CONTEXT"]
    assert len(ctx) == 1
    return ctx[0]  # type: ignore[return-value]


# --- parse_context_var ---------------------------------------------------------------------------------

def test_guide_tomcat_context_vars() -> None:
    assert parse_context_var("BALANCE_PORT=8080") == [("BALANCE_PORT", "8080")]
    assert parse_context_var('"APP_PACKAGE=gwt-petstore.war, SLAVE_ID=%SLAVE_INDEX%"') == [
        ("APP_PACKAGE", "gwt-petstore.war"), ("SLAVE_ID", "%SLAVE_INDEX%")]


def test_guide_cassandra_context_vars_unescape_slashes_and_drop_trailing_comma() -> None:
    # config.rb says "\"MOUNTLIST=\\/vol\\/data{1-6},\"": after Ruby unescaping the value holds \/
    assert parse_context_var('"MOUNTLIST=\\/vol\\/data{1-6},"') == [("MOUNTLIST", "/vol/data{1-6}")]
    slave = '"SLAVE_ID=%SLAVE_INDEX%, NUM_SLAVES=%NUM_SLAVES%, SEEDS=%MASTER%, MOUNTLIST=\\/vol\\/data{1-6},"'
    assert parse_context_var(slave) == [("SLAVE_ID", "%SLAVE_INDEX%"), ("NUM_SLAVES", "%NUM_SLAVES%"),
                                        ("SEEDS", "%MASTER%"), ("MOUNTLIST", "/vol/data{1-6}")]


def test_quoted_values_keep_commas_and_unescape() -> None:
    assert parse_context_var('HBASE_URL="http://x:1/a,b", B=2') == [("HBASE_URL", "http://x:1/a,b"), ("B", "2")]
    assert parse_context_var('Q="say \\"hi\\""') == [("Q", 'say "hi"')]
    assert parse_context_var("") == []
    assert parse_context_var('""') == []
    assert parse_context_var(" , ,") == []


@pytest.mark.parametrize("raw, culprit", [
    ("1ABC=2", "1ABC=2"),
    ("A-B=1", "A-B=1"),
    ("A=1, NOVALUE", "NOVALUE"),
    ("CARINA_TOKEN=x", "CARINA_TOKEN=x"),
    ("PATH=/tmp", "PATH=/tmp"),
    ('A="unterminated', 'A="unterminated'),
    ('"A=1', '"A=1'),
])
def test_bad_context_var_items_are_named(raw: str, culprit: str) -> None:
    with pytest.raises(RenderError) as err:
        parse_context_var(raw)
    assert culprit in str(err.value)


# --- context_pairs -------------------------------------------------------------------------------------

CASSANDRA_SLAVE = '"SLAVE_ID=%SLAVE_INDEX%, NUM_SLAVES=%NUM_SLAVES%, SEEDS=%MASTER%, MOUNTLIST=\\/vol\\/data{1-6},"'


def test_slave_gets_master_index_and_count() -> None:
    assert context_pairs(CASSANDRA_SLAVE, "slave", master_ip="127.0.1.9", index=2, num_slaves=3) == [
        ("SLAVE_ID", "2"), ("NUM_SLAVES", "3"), ("SEEDS", "127.0.1.9"), ("MOUNTLIST", "/vol/data{1-6}")]


def test_master_gets_num_slaves_only() -> None:
    pairs = context_pairs("N=%NUM_SLAVES%, M=%MASTER%, I=%SLAVE_INDEX%", "master", master_ip="1.1.1.1",
                          index=4, num_slaves=5)
    assert pairs == [("N", "5"), ("M", "%MASTER%"), ("I", "%SLAVE_INDEX%")]


def test_empty_var_becomes_role_flag() -> None:
    assert context_pairs("", "master") == [("MASTER", "true")]
    assert context_pairs('""', "slave", master_ip="1.2.3.4") == [("SLAVE", "true")]


def test_deps_appended_once_per_vm_and_replace_same_name() -> None:
    deps = {"hbase": "http://10.0.0.1:60010", "jenkins": "http://10.0.0.2:8080/"}
    for index in range(3):   # the original appended the deps once more for every slave
        pairs = context_pairs("A=1", "slave", master_ip="1.2.3.4", index=index, num_slaves=3, deps=deps)
        assert pairs == [("A", "1"), ("HBASE_URL", "http://10.0.0.1:60010"), ("JENKINS_URL", "http://10.0.0.2:8080/")]
    pairs = context_pairs("HBASE_URL=old, B=2", "master", deps={"hbase": "new"})
    assert pairs == [("B", "2"), ("HBASE_URL", "new")]
    assert context_pairs("", "master", deps={"my-db": "u"}) == [("MASTER", "true"), ("MY_DB_URL", "u")]


def test_bad_role_and_missing_master_ip() -> None:
    with pytest.raises(RenderError, match="role"):
        context_pairs("", "boss")
    with pytest.raises(RenderError, match="SEEDS"):
        context_pairs("SEEDS=%MASTER%", "slave")


# --- format_pairs ----------------------------------------------------------------------------------------

def test_format_pairs_escapes() -> None:
    assert format_pairs([("K1", "v1"), ("K2", 'a"b\\c')]) == 'K1 = "v1", K2 = "a\\"b\\\\c"'
    with pytest.raises(RenderError, match="context pair"):
        format_pairs([("bad name", "x")])


_names = st.from_regex(r"[A-Z][A-Z0-9_]{0,10}", fullmatch=True)


@given(st.lists(st.tuples(_names, st.text()), min_size=1, max_size=6))
def test_format_pairs_round_trips_through_a_template_parser(pairs: list[tuple[str, str]]) -> None:
    text = f"CONTEXT = [ {format_pairs(pairs)} ]\n"
    assert parse_template(text) == [("CONTEXT", [(n, v) for n, v in pairs])]


# --- placement -------------------------------------------------------------------------------------------

def test_placement_lines() -> None:
    assert placement_lines("pack") == ['SCHED_RANK = "RUNNING_VMS"', 'RANK = "RUNNING_VMS"']
    assert placement_lines("stripe") == ['SCHED_RANK = "-RUNNING_VMS"', 'RANK = "-RUNNING_VMS"']
    assert placement_lines("load") == ['SCHED_RANK = "FREE_CPU"', 'RANK = "FREE_CPU"']
    assert placement_lines(None) == []
    with pytest.raises(RenderError, match="placement_policy"):
        placement_lines("spread")


# --- render_vm -----------------------------------------------------------------------------------------

def test_master_template_renders_every_placeholder() -> None:
    pairs = context_pairs("BALANCE_PORT=8080", "master", num_slaves=2)
    text = render_vm(TEMPLATE, MASTER_VALUES, pairs, context_extra=EXTRA, tags=TAGS, placement="pack")
    assert "%" not in text.replace("$NETWORK[NETMASK, NETWORK_ID=0]", "")
    attrs = dict((n, v) for n, v in parse_template(text) if n != "CONTEXT")
    assert attrs["NAME"] == "tomcat-m" and attrs["CPU"] == "1" and attrs["MEMORY"] == "1024"
    assert attrs["DISK"] == [("IMAGE_ID", "3")] and attrs["NIC"] == [("NETWORK_ID", "0")]
    assert {k: attrs[k] for k in TAGS} == TAGS
    assert attrs["SCHED_RANK"] == "RUNNING_VMS" and attrs["RANK"] == "RUNNING_VMS"
    ctx = _context(text)
    assert ctx[:3] == list(EXTRA.items())           # injected first in CONTEXT
    c = dict(ctx)
    assert c["FILES"] == "http://127.0.0.1:8712/repo/oneenv1/context/{authorized_keys,init.sh,network.sh,tomcat.sh}"
    assert c["VMID"] == "$VMID" and c["IP"] == "$NIC[IP]"   # left for OpenNebula
    assert c["NETMASK"] == "$NETWORK[NETMASK, NETWORK_ID=0]"
    assert c["DEFUSER"] == "root" and c["ENVID"] == "17" and c["SERVICE_PORT"] == "8080"
    assert c["BALANCE_PORT"] == "8080"


def test_slave_template_substitutes_master_package_and_admin_user() -> None:
    pairs = context_pairs('"APP_PACKAGE=gwt-petstore.war, SLAVE_ID=%SLAVE_INDEX%"', "slave",
                          master_ip="127.0.1.5", index=1, num_slaves=2)
    text = render_vm(SLAVE_TEMPLATE, SLAVE_VALUES, pairs, context_extra=EXTRA, tags=TAGS, placement=None)
    c = dict(_context(text))
    assert c["MASTER_IP"] == "127.0.1.5" and c["PKG"] == "gwt-petstore.war"
    assert c["DEFUSER"] == "root"                  # the original left %ADMIN_USER% literal in slaves
    assert c["SLAVE_ID"] == "1" and c["APP_PACKAGE"] == "gwt-petstore.war"
    assert "RANK" not in dict(parse_template(text))


def test_unresolved_placeholder_is_named() -> None:
    values = {k: v for k, v in SLAVE_VALUES.items() if k != "APP_PACKAGE"}
    with pytest.raises(RenderError, match="%APP_PACKAGE%"):
        render_vm(SLAVE_TEMPLATE, values, [("A", "1")], context_extra={}, tags={}, placement=None)


NASTY = ['a"b', "x ] , EVIL = [ A = 1 ]", "$(rm -rf /)", "line1\nline2\nROOT = 1", "back\\slash\\", 'end\\"',
         "", "%NAME%"]


@pytest.mark.parametrize("nasty", NASTY)
def test_hostile_values_stay_inside_one_attribute(nasty: str) -> None:
    values = {**MASTER_VALUES, "NAME": nasty, "CPU": nasty, "ADMIN_USER": nasty}
    pairs = [("APP", nasty)]
    text = render_vm(TEMPLATE, values, pairs, context_extra={**EXTRA, "CARINA_SLOT": nasty},
                     tags={**TAGS, "CARINA_SERVICE": nasty}, placement="stripe")
    attrs = parse_template(text)
    names = [n for n, _ in attrs]
    assert names == ["NAME", "CPU", "VCPU", "MEMORY", "DISK", "NIC", "CONTEXT", *TAGS, "SCHED_RANK", "RANK"]
    top = dict(attrs)
    assert top["NAME"] == nasty and top["CPU"] == nasty and top["CARINA_SERVICE"] == nasty
    ctx = dict(_context(text))
    assert ctx["DEFUSER"] == nasty and ctx["APP"] == nasty and ctx["CARINA_SLOT"] == nasty
    assert len(_context(text)) == 3 + 10 + 1


def test_context_created_when_absent_and_comments_untouched() -> None:
    tmpl = 'NAME = %NAME%\n# a %NOT_A_PLACEHOLDER% in a comment\nMEMORY = 64\n'
    text = render_vm(tmpl, {"NAME": "web-m"}, [], context_extra={"CARINA_TOKEN": "t"}, tags={"CARINA_ENVID": "3"},
                     placement="load")
    assert "# a %NOT_A_PLACEHOLDER% in a comment" in text
    attrs = parse_template(text)
    assert attrs == [("NAME", "web-m"), ("MEMORY", "64"), ("CONTEXT", [("CARINA_TOKEN", "t")]),
                     ("CARINA_ENVID", "3"), ("SCHED_RANK", "FREE_CPU"), ("RANK", "FREE_CPU")]


def test_user_pairs_cannot_override_injected_context() -> None:
    with pytest.raises(RenderError, match="carina_token"):
        render_vm(TEMPLATE, MASTER_VALUES, [("carina_token", "forged")], context_extra=EXTRA, tags={},
                  placement=None)


def test_template_errors() -> None:
    with pytest.raises(RenderError, match="inside quotes"):
        render_vm('X = "%APP_CONTEXT_VAR%"', {}, [("A", "1")], context_extra={}, tags={}, placement=None)
    with pytest.raises(RenderError, match="unterminated"):
        render_vm('X = "abc', {}, [], context_extra={}, tags={}, placement=None)
    with pytest.raises(RenderError, match="tag"):
        render_vm("X = 1", {}, [], context_extra={}, tags={"BAD TAG": "x"}, placement=None)


def test_app_url() -> None:
    assert app_url("http://%MASTER%:8080/gwt-petstore", "127.0.1.5") == "http://127.0.1.5:8080/gwt-petstore"
    assert app_url("", "1.2.3.4") == ""


def test_render_is_pure() -> None:
    tree = ast.parse(Path(__file__).resolve().parents[2].joinpath("functions/model/render.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"redis", "rq", "falcon", "pyone", "paramiko"}


@pytest.mark.parametrize("nasty", NASTY)
def test_simulator_parser_reads_the_same_attributes(nasty: str) -> None:
    """Cross-check with the simulator's OpenNebula template parser (a second, independent reader)."""
    from onesim.template import parse_text

    values = {**MASTER_VALUES, "ADMIN_USER": nasty, "NAME": nasty}
    text = render_vm(TEMPLATE, values, [("APP", nasty)], context_extra=EXTRA, tags={**TAGS, "CARINA_SERVICE": nasty},
                     placement="pack")
    attrs = parse_text(text)
    assert [n for n, _ in attrs] == [n for n, _ in parse_template(text)]
    top = dict(attrs)
    assert top["NAME"] == nasty and top["CARINA_SERVICE"] == nasty
    assert top["CONTEXT"]["DEFUSER"] == nasty and top["CONTEXT"]["APP"] == nasty
    assert top["CONTEXT"]["CARINA_TOKEN"] == EXTRA["CARINA_TOKEN"]


@pytest.mark.parametrize("vm_file", ["example.vm", "cassandra.vm"])
def test_shipped_example_templates_render_for_both_roles(vm_file: str) -> None:
    from onesim.template import parse_text

    path = Path(__file__).resolve().parents[2] / "config" / "examples" / vm_file
    if not path.exists():
        pytest.skip(f"{path} not shipped")
    for role, values in (("master", MASTER_VALUES), ("slave", SLAVE_VALUES)):
        pairs = context_pairs(CASSANDRA_SLAVE, role, master_ip="127.0.1.5", index=0, num_slaves=2)
        text = render_vm(path.read_text(), values, pairs, context_extra=EXTRA, tags=TAGS, placement="pack")
        ctx = dict(parse_text(text))["CONTEXT"]
        assert ctx["CARINA_TOKEN"] == EXTRA["CARINA_TOKEN"] and ctx["DEFUSER"] == "root"
        assert ctx["MOUNTLIST"] == "/vol/data{1-6}"
