"""Service configuration: parse (config.rb or YAML), validate with marshmallow, cross-check, normalize. Pure.

`load_config(text, kind, vm_files)` returns the normalized dict of docs/internals.md or raises ConfigError
with every problem found, each naming its place (`ENVIRONMENT.tomcat.num_slave: unknown key`).
The global configuration (global.rb: SHAREDPOOLS, SERVICES) is loaded by functions.gs.config with the
same `parse_text` and `load_section`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

import yaml
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from functions.conf import checks as confcheck
from functions.conf.fields import Int, Num, Text, Windows, check_expr, check_tz, file_name, name_list
from functions.conf.rbparse import DEFAULT_CONSTANTS, MAX_INPUT, RbSyntaxError, parse_rb

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 32
_MESSAGES = {"Unknown field.": "unknown key", "Missing data for required field.": "missing (required)",
             "Field may not be null.": "may not be empty (nil/null)"}
_SCRIPT = validate.Regexp(r"^([A-Za-z0-9_][A-Za-z0-9_.+-]{0,127})?$",
                          error="must be a plain file name (letters, digits, `_.+-`), no path")
_USER = validate.Regexp(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$", error="must be a user name like `root`")
_VERB = validate.Regexp(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$", error="must be a single word like `remove`")
_NON_NEG = validate.Range(min=0)


MAX_ERRORS = 50             # errors listed in a refusal; the rest are counted
MAX_MESSAGE = 300           # characters of one error message
ERROR_BUDGET = 14_000       # characters of JSON for all the listed messages (a refusal stays under 20 KB)


def cap_errors(errors: list[str]) -> list[str]:
    """The first errors (at most MAX_ERRORS, each cut to MAX_MESSAGE characters, within ERROR_BUDGET characters
    of JSON), then "... and N more errors" if some were left out. Pure."""
    out: list[str] = []
    used = 0
    for i, error in enumerate(errors):
        message = error if len(error) <= MAX_MESSAGE else error[:MAX_MESSAGE - 3] + "..."
        used += len(json.dumps(message))
        if i >= MAX_ERRORS or used > ERROR_BUDGET:
            rest = len(errors) - i
            out.append(f"... and {rest} more error{'s' if rest != 1 else ''}")
            break
        out.append(message)
    return out


class ConfigError(ValueError):
    """A refused configuration; `.errors` lists the first problems (cap_errors), each naming its path or
    line/col; `.total` counts them all."""

    def __init__(self, errors: list[str]) -> None:
        self.total = len(errors)
        self.errors = cap_errors(list(errors))
        super().__init__("; ".join(self.errors))


class EndpointSchema(Schema):
    proxy = fields.Url(required=True, schemes={"http", "https"}, require_tld=False,
                       error_messages={"invalid": "not a valid http(s) URL (e.g. http://host:2633/RPC2)"})
    oneauth = Text(required=True, validate=validate.Regexp(r"^[^:\s]+:\S+$", error="must be `user:password`"))


class TemplateSchema(Schema):
    file = Text(required=True, validate=file_name)
    cpu = Num(required=True, validate=validate.Range(min=0, min_inclusive=False, max=1024))
    memory = Int(required=True, validate=validate.Range(min=1))
    network_id = fields.Dict(required=True, keys=Text(), values=Int(validate=_NON_NEG))
    image_id = fields.Dict(required=True, keys=Text(), values=Int(validate=_NON_NEG))


class ElasticitySchema(Schema):
    mode = Text(required=True, validate=validate.OneOf(["manual", "time-based", "auto"]))
    windows = Windows(load_default=dict)
    min = Int(allow_none=True, load_default=None, validate=validate.Range(min=1))
    max = Int(allow_none=True, load_default=None, validate=validate.Range(min=1))
    priority = Int(load_default=0)
    period = Int(load_default=1, validate=validate.Range(min=1, max=1440))
    cooldown = Int(allow_none=True, load_default=None, validate=_NON_NEG)
    scaleup_expr = Text(allow_none=True, load_default=None, validate=check_expr)
    scaledown_expr = Text(allow_none=True, load_default=None, validate=check_expr)
    timezone = Text(load_default="UTC", validate=check_tz)

    @validates_schema
    def check_mode(self, data: dict[str, Any], **kwargs: Any) -> None:
        errors: dict[str, list[str]] = {}
        if data.get("mode") == "time-based" and not data.get("windows"):
            errors["windows"] = ["time-based mode needs at least one window"]
        if data.get("mode") == "auto":
            for key in ("min", "max", "scaleup_expr", "scaledown_expr"):
                if data.get(key) is None:
                    errors[key] = ["missing (required in auto mode)"]
            low, high = data.get("min"), data.get("max")
            if low is not None and high is not None and low > high:
                errors["min"] = [f"min ({low}) is larger than max ({high})"]
        if errors:
            raise ValidationError(errors)


class AvailabilitySchema(Schema):
    period = Int(load_default=1, validate=validate.Range(min=1, max=1440))
    recreate_expr = Text(allow_none=True, load_default=None, validate=check_expr)
    failover_role = Text(allow_none=True, load_default=None, validate=validate.OneOf(["active", "passive"]))
    failover_group = Text(allow_none=True, load_default=None, validate=validate.Length(min=1, max=64))
    failover_expr = Text(allow_none=True, load_default=None, validate=check_expr)
    failback_expr = Text(allow_none=True, load_default=None, validate=check_expr)

    @validates_schema
    def check_failover(self, data: dict[str, Any], **kwargs: Any) -> None:
        errors: dict[str, list[str]] = {}
        role, group = data.get("failover_role"), data.get("failover_group")
        if role and not group:
            errors["failover_group"] = ["missing (required with failover_role)"]
        if group and not role:
            errors["failover_role"] = ["missing (required with failover_group)"]
        for key in ("failover_expr", "failback_expr"):
            if data.get(key) and role != "active":
                errors[key] = ["only applies with failover_role active"]
        if errors:
            raise ValidationError(errors)


class ComputeSchema(Schema):
    type = Text(load_default="compute", validate=validate.Length(min=1, max=32))
    endpoint = Text(required=True)
    description = Text(load_default="")
    placement_policy = Text(allow_none=True, load_default=None, validate=validate.OneOf(["pack", "stripe", "load"]))
    master_template = Text(required=True)
    slave_template = Text(allow_none=True, load_default=None)
    master_context_script = Text(load_default="", validate=_SCRIPT)
    slave_context_script = Text(load_default="", validate=_SCRIPT)
    master_setup_time = Int(load_default=0, validate=validate.Range(min=0, max=86400))
    master_context_var = Text(load_default="")
    slave_context_var = Text(load_default="")
    num_slaves = Int(load_default=0, validate=validate.Range(min=0, max=1000))
    slavedata = Text(load_default="")
    adminuser = Text(load_default="root", validate=_USER)
    app_url = Text(load_default="")
    master_service_port = Text(load_default="")
    app_package = Text(load_default="")
    drain_time = Num(allow_none=True, load_default=None, validate=validate.Range(min=0, max=86400))
    scaledown_verb = Text(load_default="remove", validate=_VERB)
    elasticity_policy = fields.Nested(ElasticitySchema, allow_none=True, load_default=None)
    availability_policy = fields.Nested(AvailabilitySchema, allow_none=True, load_default=None)


class GroupSchema(Schema):
    type = Text(required=True, validate=validate.Equal("group"))
    description = Text(load_default="")
    members = fields.List(Text(), required=True, validate=name_list)
    dependencies = fields.Dict(keys=Text(), values=fields.List(Text()), load_default=dict)


def flatten(messages: Any, path: str) -> list[str]:
    """marshmallow's nested error messages as `path.to.key: message` lines (Dict key/value levels merged)."""
    if isinstance(messages, dict):
        out: list[str] = []
        for key, value in messages.items():
            if key in ("key", "value") and isinstance(value, (list, dict)) and _dict_level(messages):
                out += flatten(value, path)
            else:
                out += flatten(value, path if key == "_schema" else f"{path}.{key}")
        return out
    if isinstance(messages, list):
        return [line for item in messages for line in flatten(item, path)]
    text = str(messages)
    return [f"{path}: {_MESSAGES.get(text, text)}"]


def _dict_level(messages: dict[Any, Any]) -> bool:
    """True for the {'key': [...], 'value': [...]} shape marshmallow gives a Dict entry's errors."""
    return set(messages) <= {"key", "value"} and all(
        isinstance(v, list) and all(isinstance(m, str) and m != "Unknown field." for m in v)
        or isinstance(v, dict) for v in messages.values())


def load_section(raw: dict[str, Any], section: str, pick: Callable[[Any], type[Schema]],
                 errors: list[str]) -> dict[str, Any]:
    """Validate every entry of one section; good entries are returned, problems appended to errors.

    One schema instance per kind serves every entry (building a marshmallow schema costs more than a load)."""
    schemas: dict[type[Schema], Schema] = {}
    value = raw.get(section)
    if value is None:
        errors.append(f"{section}: missing (define {section} = {{...}})")
        return {}
    if not isinstance(value, dict):
        errors.append(f"{section}: must be a hash of name => settings")
        return {}
    out: dict[str, Any] = {}
    for name, entry in value.items():
        path = f"{section}.{name}"
        if not isinstance(name, str) or not NAME.fullmatch(name):
            errors.append(f"{path}: bad name (letters, digits, `_`, `-`, `.`; at most 64 characters)")
            continue
        if not isinstance(entry, dict):
            errors.append(f"{path}: must be a hash of settings")
            continue
        try:
            cls = pick(entry)
            out[name] = (schemas.get(cls) or schemas.setdefault(cls, cls())).load(entry)
        except ValidationError as exc:
            errors += flatten(exc.messages, path)
    return out


def _pick_env(entry: dict[str, Any]) -> type[Schema]:
    return GroupSchema if entry.get("type") == "group" else ComputeSchema


def parse_text(text: str, kind: str, constants: frozenset[str], filename: str) -> dict[str, Any]:
    """Parse config text ("rb" or "yaml") into {CONSTANT: value}; raises ConfigError with line/col."""
    if not isinstance(text, str):
        raise ConfigError([f"{filename}: the upload is not text"])
    if kind == "rb":
        try:
            return parse_rb(text, constants)
        except RbSyntaxError as exc:
            raise ConfigError([f"{filename}.rb line {exc.line} col {exc.col}: {exc.reason}"]) from None
    if kind not in ("yaml", "yml"):
        raise ConfigError([f"unknown configuration kind {kind!r} (use rb or yaml)"])
    if len(text) > MAX_INPUT:
        raise ConfigError([f"{filename}.yaml: larger than {MAX_INPUT} characters"])
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} col {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{filename}.yaml{where}: {problem}"]) from None
    except RecursionError:
        raise ConfigError([f"{filename}.yaml: too large or too deeply nested"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{filename}.yaml: the top level must be a mapping of {', '.join(sorted(constants))}"])
    data = _plain(data, [0], 0, filename)
    unknown = [f"{key}: unknown key (allowed: {', '.join(sorted(constants))})" for key in data
               if key not in constants]
    if unknown:
        raise ConfigError(unknown)
    return data


def _plain(value: Any, budget: list[int], depth: int, filename: str) -> Any:
    """Copy YAML data with one leading ':' stripped from keys; caps size and depth (alias bombs)."""
    budget[0] += 1
    if budget[0] > MAX_YAML_NODES or depth > MAX_YAML_DEPTH:
        raise ConfigError([f"{filename}.yaml: too large or too deeply nested"])
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            key = key[1:] if isinstance(key, str) and key.startswith(":") else key
            out[key] = _plain(item, budget, depth + 1, filename)
        return out
    if isinstance(value, list):
        return [_plain(item, budget, depth + 1, filename) for item in value]
    return value


def _normalize(endpoints: dict[str, Any], templates: dict[str, Any], envs: dict[str, Any]) -> dict[str, Any]:
    for template in templates.values():
        template["file"] = PurePosixPath(template["file"]).name
    for env in envs.values():
        if env.get("type") != "group" and env.get("slave_template") is None:
            env["slave_template"] = env["master_template"]
    return {"ENDPOINT": endpoints, "TEMPLATE": templates, "ENVIRONMENT": envs}


def load_config(text: str, kind: str, vm_files: set[str]) -> dict[str, Any]:
    """Parse, validate and cross-check a service config. Pure, safe to run twice. Raises ConfigError."""
    return validate_config(parse_text(text, kind, DEFAULT_CONSTANTS, "config"), vm_files)


def validate_config(raw: dict[str, Any], vm_files: set[str]) -> dict[str, Any]:
    """Validate and cross-check parsed config data ({CONSTANT: value}). Pure. Raises ConfigError."""
    errors: list[str] = []
    endpoints = load_section(raw, "ENDPOINT", lambda _: EndpointSchema, errors)
    templates = load_section(raw, "TEMPLATE", lambda _: TemplateSchema, errors)
    envs = load_section(raw, "ENVIRONMENT", _pick_env, errors)
    config = _normalize(endpoints, templates, envs)
    errors += confcheck.cross_check(config, raw, set(vm_files))
    if errors:
        raise ConfigError(errors)
    return config
