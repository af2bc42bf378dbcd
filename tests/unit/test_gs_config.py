"""The global configuration (global.rb / YAML): examples load, errors name their place, classes are checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from functions.conf.schema import ConfigError
from functions.gs.config import check_service_classes, load_global, pools_of, services_of
from functions.gs.model import Pool, ServiceQuota

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"

EXAMPLE = {
    "SHAREDPOOLS": {
        "onesim": {"zone": "lab", "allocateable_cpus": 8, "allocateable_mem": 8192, "service_class": "silver"},
        "onesim-gold": {"zone": "lab", "allocateable_cpus": 16, "allocateable_mem": 32768, "service_class": "gold"},
    },
    "SERVICES": {
        "oneenv1": {"priority": "silver", "maxcpus": 12, "maxmemory": 16384},
        "oneenv2": {"priority": "gold", "maxcpus": 16, "maxmemory": 32768},
        "batch": {"priority": "bronze", "maxcpus": 4, "maxmemory": 4096},
    },
}


def errors_of(text: str, kind: str = "rb") -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_global(text, kind)
    return info.value.errors


def test_examples_load_and_agree() -> None:
    assert load_global((EXAMPLES / "global.rb").read_text(), "rb") == EXAMPLE
    assert load_global((EXAMPLES / "global.yaml").read_text(), "yaml") == EXAMPLE


def test_the_guide_style_file_with_quoted_numbers() -> None:
    text = ("SHAREDPOOLS = {'flm01' => {:zone => 'flame', :allocateable_cpus => '10', :allocateable_mem => '10248',"
            " :service_class => 'gold'}}\n"
            "SERVICES = {'oneenv1' => {:priority => 'silver', :maxcpus => '12', :maxmemory => '128000'},"
            " 'oneenv2' => {priority: :Gold, maxcpus: 12, maxmemory: 64000.0}}")
    assert load_global(text, "rb") == {
        "SHAREDPOOLS": {"flm01": {"zone": "flame", "allocateable_cpus": 10, "allocateable_mem": 10248,
                                  "service_class": "gold"}},
        "SERVICES": {"oneenv1": {"priority": "silver", "maxcpus": 12, "maxmemory": 128000},
                     "oneenv2": {"priority": "gold", "maxcpus": 12, "maxmemory": 64000}}}


def test_every_problem_is_named_by_place() -> None:
    bad = ("SHAREDPOOLS = { 'pool1' => { :zone => 'z', :allocateable_cpus => 'ten', :allocateable_mem => -1,"
           " :service_class => 'diamond', :extra => 1 } }\nSERVICES = { 's' => { :priority => 'gold' } }")
    assert errors_of(bad) == [
        "SHAREDPOOLS.pool1.allocateable_cpus: must be an integer",
        "SHAREDPOOLS.pool1.allocateable_mem: must not be negative",
        "SHAREDPOOLS.pool1.service_class: unknown class 'diamond' (use one of bronze, silver, gold, platinum, "
        "lowest first)",
        "SHAREDPOOLS.pool1.extra: unknown key",
        "SERVICES.s.maxcpus: missing (required)",
        "SERVICES.s.maxmemory: missing (required)",
    ]


def test_sections_and_syntax_errors() -> None:
    assert errors_of("SERVICES = {}") == ["SHAREDPOOLS: missing (define SHAREDPOOLS = {...})"]
    assert errors_of("SHAREDPOOLS = []\nSERVICES = {'a b' => {}}") == [
        "SHAREDPOOLS: must be a hash of name => settings",
        "SERVICES.a b: bad name (letters, digits, `_`, `-`, `.`; at most 64 characters)"]
    assert errors_of("ENDPOINT = {}") == [
        "global.rb line 1 col 1: unknown constant `ENDPOINT` (allowed: SERVICES, SHAREDPOOLS)"]
    assert errors_of("SHAREDPOOLS = {'p' => {:zone => `ls`}}") == [
        "global.rb line 1 col 33: backticks (shell commands) are not allowed"]
    assert errors_of("SHAREDPOOLS: [1", "yaml")[0].startswith("global.yaml line")
    assert errors_of("SHAREDPOOLS: {}\nENVIRONMENT: {}", "yaml") == [
        "ENVIRONMENT: unknown key (allowed: SERVICES, SHAREDPOOLS)"]


def test_a_service_above_every_pool_is_refused() -> None:
    text = ("SHAREDPOOLS = {'p' => {:zone => 'z', :allocateable_cpus => 1, :allocateable_mem => 1,"
            " :service_class => 'silver'}}\nSERVICES = {'top' => {:priority => 'platinum', :maxcpus => 1,"
            " :maxmemory => 1}, 'low' => {:priority => 'bronze', :maxcpus => 1, :maxmemory => 1}}")
    assert errors_of(text) == ["SERVICES.top.priority: no pool in SHAREDPOOLS has class platinum or better, "
                               "so this service's requests could never be placed"]


def test_yaml_keys_with_colons() -> None:
    text = yaml.safe_dump({"SHAREDPOOLS": {"p": {":zone": "z", ":allocateable_cpus": "2", ":allocateable_mem": 3,
                                                 ":service_class": "BRONZE"}},
                           "SERVICES": {"s": {":priority": "bronze", ":maxcpus": 1, ":maxmemory": "2"}}})
    conf = load_global(text, "yaml")
    assert conf["SERVICES"] == {"s": {"priority": "bronze", "maxcpus": 1, "maxmemory": 2}}
    assert pools_of(conf) == {"p": Pool("p", "z", "bronze", 2, 3)}
    assert services_of(conf) == {"s": ServiceQuota("s", "bronze", 1, 2)}


def test_model_from_example() -> None:
    conf = load_global((EXAMPLES / "global.rb").read_text(), "rb")
    assert pools_of(conf)["onesim-gold"] == Pool("onesim-gold", "lab", "gold", 16, 32768)
    assert services_of(conf)["batch"] == ServiceQuota("batch", "bronze", 4, 4096)


def test_service_classes_must_agree() -> None:
    assert check_service_classes(EXAMPLE, {"oneenv1": "silver", "oneenv2": "gold", "batch": "bronze"}) == []
    assert check_service_classes(EXAMPLE, {"oneenv2": "silver", "oneenv1": "silver", "x": "gold", "y": "iron"}) == [
        "service oneenv2: class silver (carina-admin service add --class) but SERVICES.oneenv2.priority is gold; "
        "make them agree",
        "service x: not in SERVICES of the global configuration; add "
        "'x' => {:priority => 'gold', :maxcpus => N, :maxmemory => MB}",
        "service y: unknown class 'iron' (use one of bronze, silver, gold, platinum)",
    ]
    assert check_service_classes(EXAMPLE, {"x": "gold"}, require_listed=False) == []
    assert check_service_classes({"SHAREDPOOLS": {}, "SERVICES": {}}, {}) == []


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200), st.sampled_from(["rb", "yaml"]))
def test_any_text_gives_a_config_or_config_error(text: str, kind: str) -> None:
    try:
        conf = load_global(text, kind)
    except ConfigError as exc:
        assert exc.errors and all(isinstance(e, str) and e for e in exc.errors)
    else:
        assert set(conf) == {"SHAREDPOOLS", "SERVICES"}


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True),
                       st.tuples(st.sampled_from(["z1", "z2"]), st.integers(0, 64), st.integers(0, 10**6),
                                 st.sampled_from(["bronze", "silver", "gold", "platinum"])), min_size=1),
       st.booleans())
def test_quoted_and_plain_numbers_load_the_same(pools: dict, quoted: bool) -> None:
    def num(n: int) -> str:
        return f"'{n}'" if quoted else str(n)
    entries = ", ".join(f"'{name}' => {{:zone => '{z}', :allocateable_cpus => {num(c)}, "
                        f":allocateable_mem => {num(m)}, :service_class => '{k}'}}"
                        for name, (z, c, m, k) in pools.items())
    conf = load_global(f"SHAREDPOOLS = {{{entries}}}\nSERVICES = {{}}", "rb")
    assert pools_of(conf) == {name: Pool(name, z, k, c, m) for name, (z, c, m, k) in pools.items()}
