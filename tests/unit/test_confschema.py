"""Service configuration: the examples load, and every kind of bad config is named (global: test_gs_config)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from functions.conf.rbparse import MAX_INPUT
from functions.conf.schema import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "config" / "examples"
VM_FILES = {"example.vm", "cassandra.vm"}


def example_raw() -> dict[str, Any]:
    """The example config as plain data (via its YAML twin), to mutate in tests."""
    data = yaml.safe_load((EXAMPLES / "config.yaml").read_text())
    data["ENDPOINT"]["onesim"] = {"proxy": "http://127.0.0.1:2633/RPC2", "oneauth": "oneadmin:onesim"}
    return data


def errors_of(data: dict[str, Any], vm_files: set[str] = VM_FILES) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(yaml.safe_dump(data, sort_keys=False), "yaml", vm_files)
    assert str(info.value) == "; ".join(info.value.errors)
    return info.value.errors


def test_examples_load_to_the_same_normalized_dict() -> None:
    from_rb = load_config((EXAMPLES / "config.rb").read_text(), "rb", VM_FILES)
    from_yaml = load_config((EXAMPLES / "config.yaml").read_text(), "yaml", VM_FILES)
    assert from_rb == from_yaml
    assert json.loads(json.dumps(from_rb)) == from_rb          # JSON-able
    assert set(from_rb["ENVIRONMENT"]) == {"tomcat", "e-tomcat", "cassandra", "hbase", "jenkins", "analytics",
                                           "tomcat_ha_active", "tomcat_ha_passive"}
    assert load_config((EXAMPLES / "config.rb").read_text(), "rb", VM_FILES) == from_rb   # safe to run twice


def test_normalized_shape_of_the_examples() -> None:
    config = load_config((EXAMPLES / "config.rb").read_text(), "rb", VM_FILES)
    assert config["ENDPOINT"] == {"onesim": {"proxy": "http://127.0.0.1:2633/RPC2", "oneauth": "oneadmin:onesim"}}
    assert config["TEMPLATE"]["example"] == {"file": "example.vm", "cpu": 1, "memory": 512,
                                             "network_id": {"onesim": 0}, "image_id": {"onesim": 0}}
    assert config["ENVIRONMENT"]["tomcat"] == {
        "type": "compute", "endpoint": "onesim", "description": "Load-balanced Tomcat cluster",
        "placement_policy": "pack", "master_template": "example", "slave_template": "example",
        "master_context_script": "tomcat-master.sh", "slave_context_script": "tomcat-slave.sh",
        "master_setup_time": 0, "master_context_var": "BALANCE_PORT=8080",
        "slave_context_var": '"APP_PACKAGE=gwt-petstore.war, SLAVE_ID=%SLAVE_INDEX%"',
        "num_slaves": 2, "slavedata": "8080", "adminuser": "root",
        "app_url": "http://%MASTER%:8080/gwt-petstore", "master_service_port": "", "app_package": "",
        "drain_time": 0, "scaledown_verb": "remove", "elasticity_policy": None, "availability_policy": None}
    assert config["ENVIRONMENT"]["e-tomcat"]["elasticity_policy"] == {
        "mode": "auto", "windows": {}, "min": 2, "max": 4, "priority": 10, "period": 3, "cooldown": None,
        "scaleup_expr": "avgcpu > 50", "scaledown_expr": "avgcpu < 20", "timezone": "UTC"}
    assert config["ENVIRONMENT"]["cassandra"]["slave_context_var"] == (
        '"SLAVE_ID=%SLAVE_INDEX%, NUM_SLAVES=%NUM_SLAVES%, SEEDS=%MASTER%, MOUNTLIST=\\/vol\\/data{1-6},"')
    assert config["ENVIRONMENT"]["analytics"] == {
        "type": "group", "description": "BI Analytics environment with Hbase data store and Tomcat cluster "
        "for processing and a Jenkins build environment", "members": ["hbase", "jenkins", "tomcat"],
        "dependencies": {"tomcat": ["hbase", "jenkins"], "jenkins": ["hbase"]}}
    assert config["ENVIRONMENT"]["tomcat_ha_active"]["availability_policy"] == {
        "period": 3, "recreate_expr": "nummissing > 0 || numunknown > 0 || numfailed > 0",
        "failover_role": "active", "failover_group": "tomcat-ha",
        "failover_expr": "(numunknown + nummissing + numfail)/numvms > 0.50", "failback_expr": "numunknown == 0"}
    passive = config["ENVIRONMENT"]["tomcat_ha_passive"]
    assert passive["elasticity_policy"]["windows"] == {"all": {"spec": "Mon-Fri 0000-2359", "min": 4}}
    assert passive["availability_policy"]["failover_role"] == "passive"


def test_minimal_config_gets_defaults() -> None:
    text = """
ENDPOINT = { 'e' => { proxy: 'https://one.example.org/RPC2', oneauth: 'svc:pw' } }
TEMPLATE = { 't' => { file: 'small.vm', cpu: 0.5, memory: '256', network_id: {'e' => 1}, image_id: {'e' => 2} } }
ENVIRONMENT = { 'env' => { endpoint: 'e', master_template: 't' } }
"""
    config = load_config(text, "rb", {"small.vm"})
    env = config["ENVIRONMENT"]["env"]
    assert env["type"] == "compute" and env["slave_template"] == "t" and env["placement_policy"] is None
    assert env["adminuser"] == "root" and env["drain_time"] is None and env["scaledown_verb"] == "remove"
    assert env["num_slaves"] == 0 and env["master_setup_time"] == 0 and env["description"] == ""
    assert config["TEMPLATE"]["t"]["cpu"] == 0.5 and config["TEMPLATE"]["t"]["memory"] == 256


def test_unknown_key_names_key_and_path() -> None:
    data = example_raw()
    data["ENVIRONMENT"]["tomcat"]["num_slave"] = 3
    data["ENVIRONMENT"]["e-tomcat"]["elasticity_policy"]["scale_up_expr"] = "avgcpu > 1"
    data["TEMPLATE"]["example"]["disk"] = 10
    data["ENDPOINT"]["onesim"]["user"] = "x"
    errors = errors_of(data)
    assert "ENVIRONMENT.tomcat.num_slave: unknown key" in errors
    assert "ENVIRONMENT.e-tomcat.elasticity_policy.scale_up_expr: unknown key" in errors
    assert "TEMPLATE.example.disk: unknown key" in errors
    assert "ENDPOINT.onesim.user: unknown key" in errors
    assert len(errors) == 4                                   # all of them, not just the first


def test_bad_values_are_named() -> None:
    data = example_raw()
    env = data["ENVIRONMENT"]["tomcat"]
    env.update(placement_policy="spread", num_slaves=-1, master_setup_time="soon", adminuser="root; rm -rf /",
               master_context_script="../../etc/passwd", scaledown_verb="rm -rf", drain_time=-5,
               description=["x"], slavedata=True)
    del env["endpoint"]
    data["TEMPLATE"]["example"].update(cpu=0, memory=2.5, file="/home/x/", network_id={"onesim": "zero"})
    data["ENDPOINT"]["onesim"].update(proxy="ftp://x", oneauth="nopassword")
    text = "\n".join(errors_of(data, VM_FILES | {""}))
    for expected in [
        "ENVIRONMENT.tomcat.placement_policy: Must be one of: pack, stripe, load.",
        "ENVIRONMENT.tomcat.num_slaves: Must be greater than or equal to 0",
        "ENVIRONMENT.tomcat.master_setup_time: must be an integer",
        "ENVIRONMENT.tomcat.adminuser: must be a user name",
        "ENVIRONMENT.tomcat.master_context_script: must be a plain file name",
        "ENVIRONMENT.tomcat.scaledown_verb: must be a single word",
        "ENVIRONMENT.tomcat.drain_time: Must be greater than or equal to 0",
        "ENVIRONMENT.tomcat.description: must be a string",
        "ENVIRONMENT.tomcat.slavedata: must be a string",
        "ENVIRONMENT.tomcat.endpoint: missing (required)",
        "TEMPLATE.example.cpu: Must be greater than 0",
        "TEMPLATE.example.memory: must be an integer",
        "TEMPLATE.example.file: '/home/x/' does not end in a plain file name",
        "TEMPLATE.example.network_id.onesim: must be an integer",
        "ENDPOINT.onesim.proxy: not a valid http(s) URL",
        "ENDPOINT.onesim.oneauth: must be `user:password`",
    ]:
        assert expected in text, expected


def test_references_are_cross_checked() -> None:
    data = example_raw()
    data["ENVIRONMENT"]["tomcat"]["endpoint"] = "flm01"
    data["ENVIRONMENT"]["hbase"]["slave_template"] = "missing"
    data["TEMPLATE"]["cassandra"]["image_id"] = {"other": 3}
    data["ENVIRONMENT"]["analytics"]["members"] = ["hbase", "tomcat", "nosuch", "e-tomcat", "jenkins"]
    errors = errors_of(data, {"example.vm"})
    assert "ENVIRONMENT.tomcat.endpoint: unknown endpoint 'flm01' (defined: onesim)" in errors
    assert "ENVIRONMENT.hbase.slave_template: unknown template 'missing' (defined: example, cassandra)" in errors
    assert ("ENVIRONMENT.cassandra.master_template: template 'cassandra' has no image_id for endpoint 'onesim' "
            "(add 'onesim' => <id> to TEMPLATE.cassandra.image_id)") in errors
    assert ("TEMPLATE.cassandra.file: cassandra.vm has not been uploaded; upload it first "
            "(oneenv --upload cassandra.vm)") in errors
    assert "ENVIRONMENT.analytics.members: unknown environment 'nosuch'" in errors
    assert ("ENVIRONMENT.analytics.members: 'e-tomcat' is not usable in a context variable "
            "(use only letters, digits and _)") in errors
    assert ("ENVIRONMENT.analytics.dependencies.tomcat: 'jenkins' is created after 'tomcat'; "
            "list it earlier in members") in errors
    assert len(errors) == 7


def test_group_problems() -> None:
    data = example_raw()
    group = data["ENVIRONMENT"]["analytics"]
    group["dependencies"] = {"tomcat": ["tomcat", "apache"], "apache": ["hbase"], "hbase": "jenkins"}
    group["members"] = ["hbase", "jenkins", "tomcat", "hbase"]
    data["ENVIRONMENT"]["meta"] = {"type": "group", "members": ["analytics"]}
    data["ENVIRONMENT"]["empty"] = {"type": "group", "members": []}
    data["ENVIRONMENT"]["nomembers"] = {"type": "group", "endpoint": "onesim"}
    text = "\n".join(errors_of(data))
    for expected in [
        "ENVIRONMENT.analytics.members: listed twice: hbase",
        "ENVIRONMENT.analytics.dependencies.hbase: Not a valid list.",
        "ENVIRONMENT.meta.members: 'analytics' is a group; groups cannot be nested",
        "ENVIRONMENT.empty.members: must list at least one member",
        "ENVIRONMENT.nomembers.members: missing (required)",
        "ENVIRONMENT.nomembers.endpoint: unknown key",
    ]:
        assert expected in text, expected
    group["members"] = ["hbase", "jenkins", "tomcat"]
    group["dependencies"] = {"tomcat": ["tomcat", "apache"], "apache": ["hbase"]}
    del data["ENVIRONMENT"]["empty"], data["ENVIRONMENT"]["nomembers"], data["ENVIRONMENT"]["meta"]
    assert errors_of(data) == [
        "ENVIRONMENT.analytics.dependencies.tomcat: 'tomcat' cannot depend on itself",
        "ENVIRONMENT.analytics.dependencies.tomcat: 'apache' is not a member of the group",
        "ENVIRONMENT.analytics.dependencies.apache: 'apache' is not a member of the group"]


def test_policy_problems() -> None:
    data = example_raw()
    auto = data["ENVIRONMENT"]["e-tomcat"]["elasticity_policy"]
    auto.update(min=5, max=3, scaleup_expr="avgcpu > 50 && __import__('os')", timezone="Mars/Base")
    del auto["scaledown_expr"]
    timed = data["ENVIRONMENT"]["tomcat_ha_passive"]["elasticity_policy"]
    timed["windows"] = {"all": {"spec": "Monday 0900-1700", "min": 0}, "x": {"spec": "Mon", "max": 3}}
    avail = data["ENVIRONMENT"]["tomcat_ha_active"]["availability_policy"]
    avail.update(recreate_expr="cpu > 1", failback_expr="numunknown = 0", period=0)
    data["ENVIRONMENT"]["tomcat"]["availability_policy"] = {"failover_role": "active", "failover_group": "tomcat-ha",
                                                            "failover_expr": "numvms == 0"}
    data["ENVIRONMENT"]["jenkins"]["availability_policy"] = {"failover_role": "passive", "failover_expr": "1 > 0"}
    data["ENVIRONMENT"]["hbase"]["elasticity_policy"] = {"mode": "time-based"}
    data["ENVIRONMENT"]["cassandra"]["elasticity_policy"] = {"mode": "sometimes"}
    text = "\n".join(errors_of(data))
    for expected in [
        "ENVIRONMENT.e-tomcat.elasticity_policy.scaleup_expr: bad expression `avgcpu > 50 && __import__('os')`: "
        "col 27: strings are not allowed",
        "ENVIRONMENT.e-tomcat.elasticity_policy.timezone: unknown time zone 'Mars/Base'",
        "ENVIRONMENT.tomcat_ha_passive.elasticity_policy.windows.all.spec: `Monday` is not a day",
        "ENVIRONMENT.tomcat_ha_passive.elasticity_policy.windows.all.min: must be at least 1",
        "ENVIRONMENT.tomcat_ha_passive.elasticity_policy.windows.x.max: unknown key",
        "ENVIRONMENT.tomcat_ha_passive.elasticity_policy.windows.x.min: missing (required)",
        "ENVIRONMENT.tomcat_ha_active.availability_policy.recreate_expr: bad expression `cpu > 1`: col 1: "
        "unknown name `cpu`",
        "ENVIRONMENT.tomcat_ha_active.availability_policy.failback_expr: bad expression `numunknown = 0`: col 12: "
        "`=` is not allowed; use `==` to compare",
        "ENVIRONMENT.tomcat_ha_active.availability_policy.period: Must be greater than or equal to 1",
        "ENVIRONMENT.jenkins.availability_policy.failover_group: missing (required with failover_role)",
        "ENVIRONMENT.jenkins.availability_policy.failover_expr: only applies with failover_role active",
        "ENVIRONMENT.hbase.elasticity_policy.windows: time-based mode needs at least one window",
        "ENVIRONMENT.cassandra.elasticity_policy.mode: Must be one of: manual, time-based, auto.",
    ]:
        assert expected in text, expected
    # schema-level checks run once the fields are valid
    auto.update(scaleup_expr="avgcpu > 50", timezone="Europe/Paris", scaledown_expr="avgcpu < 20")
    avail.update(recreate_expr="numfailed > 0", failback_expr="numunknown == 0", period=3)
    data["ENVIRONMENT"]["jenkins"]["availability_policy"] = None
    data["ENVIRONMENT"]["hbase"]["elasticity_policy"] = {"mode": "manual"}
    data["ENVIRONMENT"]["cassandra"]["elasticity_policy"] = {"mode": "auto"}
    timed["windows"] = {"all": {"spec": "Mon-Fri 0000-2359", "min": 4}}
    assert errors_of(data) == [
        "ENVIRONMENT.e-tomcat.elasticity_policy.min: min (5) is larger than max (3)",
        "ENVIRONMENT.cassandra.elasticity_policy.min: missing (required in auto mode)",
        "ENVIRONMENT.cassandra.elasticity_policy.max: missing (required in auto mode)",
        "ENVIRONMENT.cassandra.elasticity_policy.scaleup_expr: missing (required in auto mode)",
        "ENVIRONMENT.cassandra.elasticity_policy.scaledown_expr: missing (required in auto mode)",
        "ENVIRONMENT.tomcat_ha_active.availability_policy.failover_role: failover group 'tomcat-ha' already has "
        "its active environment (tomcat)",
    ]


def test_structure_problems() -> None:
    assert errors_of({"ENDPOINT": {}, "TEMPLATE": {}}) == ["ENVIRONMENT: missing (define ENVIRONMENT = {...})"]
    data = example_raw()
    data["TEMPLATE"] = ["example"]
    data["ENVIRONMENT"]["bad name!"] = {}
    data["ENVIRONMENT"]["scalar"] = "tomcat"
    errors = errors_of(data)
    assert "TEMPLATE: must be a hash of name => settings" in errors
    assert "ENVIRONMENT.bad name!: bad name (letters, digits, `_`, `-`, `.`; at most 64 characters)" in errors
    assert "ENVIRONMENT.scalar: must be a hash of settings" in errors
    assert "ENVIRONMENT.tomcat.master_template: unknown template 'example' (defined: none)" in errors
    with pytest.raises(ConfigError) as info:
        load_config(yaml.safe_dump({**example_raw(), "SERVICES": {}}), "yaml", VM_FILES)
    assert info.value.errors == ["SERVICES: unknown key (allowed: ENDPOINT, ENVIRONMENT, TEMPLATE)"]


@pytest.mark.parametrize(("text", "kind", "message"), [
    ("ENDPOINT = {}\nTEMPLATE = {}\nENVIRONMENT = {\n  'x' => File.read('/etc/passwd')\n}", "rb",
     "config.rb line 4 col 10: constant `File` is not allowed here"),
    ("ENDPOINT = `id`", "rb", "config.rb line 1 col 12: backticks (shell commands) are not allowed"),
    ("ENDPOINT: {\n  a: [1, 2\n", "yaml", "config.yaml line 3 col 1: expected ',' or ']', but got '<stream end>'"),
    ("ENDPOINT: !!python/object/apply:os.system ['id']", "yaml", "config.yaml line 1 col 11: could not determine"),
    ("- just a list", "yaml", "config.yaml: the top level must be a mapping"),
    ("x", "json", "unknown configuration kind 'json' (use rb or yaml)"),
])
def test_syntax_errors_name_line_and_col(text: str, kind: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(text, kind, VM_FILES)
    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith(message), info.value.errors[0]


def test_yaml_alias_bomb_is_capped() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    text = "ENDPOINT:\n" + "\n".join("  " + line for line in lines) + "\nTEMPLATE: {}\nENVIRONMENT: {}\n"
    with pytest.raises(ConfigError, match="too large or too deeply nested"):
        load_config(text, "yaml", VM_FILES)
    for deep in ("[" * 5000, "a: " + "{a: " * 3000, "- " * 3000 + "x"):
        with pytest.raises(ConfigError, match="too large or too deeply nested"):
            load_config(deep, "yaml", VM_FILES)
    with pytest.raises(ConfigError, match="config.yaml: larger than"):
        load_config("#" * (MAX_INPUT + 1), "yaml", VM_FILES)
    with pytest.raises(ConfigError, match="config.rb line 1 col 1: input larger than"):
        load_config("#" * (MAX_INPUT + 1), "rb", VM_FILES)


def test_yaml_keys_with_and_without_colons_agree() -> None:
    data = example_raw()
    colon = copy.deepcopy(data)
    colon["ENVIRONMENT"]["tomcat"] = {f":{k}": v for k, v in colon["ENVIRONMENT"]["tomcat"].items()}
    plain = load_config(yaml.safe_dump(data, sort_keys=False), "yaml", VM_FILES)
    assert load_config(yaml.safe_dump(colon, sort_keys=False), "yaml", VM_FILES) == plain


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.sampled_from(["rb", "yaml"]))
def test_any_text_gives_a_config_or_config_error(text: str, kind: str) -> None:
    try:
        config = load_config(text, kind, VM_FILES)
    except ConfigError as exc:
        assert exc.errors and all(isinstance(e, str) and e for e in exc.errors)
    else:
        assert set(config) == {"ENDPOINT", "TEMPLATE", "ENVIRONMENT"}
