"""Cross-checks between the sections of a validated service config (used by confschema). Pure.

Linear in the size of the config: the defined names of each section are indexed once (`Names`), and no message
lists more than NAMES_SHOWN names or quotes more than QUOTE_MAX characters of a user's text.
"""

from __future__ import annotations

from typing import Any

from functions.conf.fields import CONTEXT_NAME

NAMES_SHOWN = 5
QUOTE_MAX = 64


def listing(names: list[str]) -> str:
    """At most NAMES_SHOWN of `names`, then "and N more"; "none" for none. Pure."""
    if not names:
        return "none"
    head = ", ".join(names[:NAMES_SHOWN])
    more = len(names) - NAMES_SHOWN
    return f"{head} and {more} more" if more > 0 else head


def quoted(name: str) -> str:
    """repr(name), cut to QUOTE_MAX characters of the name (then `...`). Pure."""
    return repr(name) if len(name) <= QUOTE_MAX else repr(name[:QUOTE_MAX])[:-1] + "...'"


class Names:
    """The names one section defines, indexed once: `in` is a set lookup, `shown` the short listing."""

    def __init__(self, raw: dict[str, Any], section: str) -> None:
        value = raw.get(section)
        names = [k for k in value if isinstance(k, str)] if isinstance(value, dict) else []
        self.names = set(names)
        self.shown = listing(names)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names


def check_files(templates: dict[str, Any], vm_files: set[str]) -> list[str]:
    """Every template's file must already be uploaded."""
    return [f"TEMPLATE.{name}.file: {t['file']} has not been uploaded; upload it first "
            f"(oneenv --upload {t['file']})" for name, t in templates.items() if t["file"] not in vm_files]


def check_compute(name: str, env: dict[str, Any], config: dict[str, Any], endpoints: Names,
                  templates: Names) -> list[str]:
    """The environment's endpoint and templates exist, and the templates have ids for that endpoint."""
    path = f"ENVIRONMENT.{name}"
    errors: list[str] = []
    endpoint = env["endpoint"]
    if endpoint not in endpoints:
        errors.append(f"{path}.endpoint: unknown endpoint {quoted(endpoint)} (defined: {endpoints.shown})")
    seen: set[str] = set()
    for role in ("master_template", "slave_template"):
        tname = env[role]
        if tname in seen:
            continue
        seen.add(tname)
        if tname not in templates:
            errors.append(f"{path}.{role}: unknown template {quoted(tname)} (defined: {templates.shown})")
            continue
        template = config["TEMPLATE"].get(tname)
        if template is None or endpoint not in endpoints:
            continue
        for key in ("network_id", "image_id"):
            if endpoint not in template[key]:
                errors.append(f"{path}.{role}: template {quoted(tname)} has no {key} for endpoint "
                              f"{quoted(endpoint)} (add {quoted(endpoint)} => <id> to TEMPLATE.{tname}.{key})")
    return errors


def check_group(name: str, group: dict[str, Any], raw: dict[str, Any]) -> list[str]:
    """Members exist, are not groups, have context-variable names; dependencies point to earlier members."""
    path = f"ENVIRONMENT.{name}"
    errors: list[str] = []
    envs = raw.get("ENVIRONMENT") or {}
    members: list[str] = group["members"]
    position: dict[str, int] = {}
    for i, member in enumerate(members):
        position.setdefault(member, i)
        if not CONTEXT_NAME.fullmatch(member):
            errors.append(f"{path}.members: {quoted(member)} is not usable in a context variable "
                          "(use only letters, digits and _)")
        if member not in envs:
            errors.append(f"{path}.members: unknown environment {quoted(member)}")
        elif isinstance(envs[member], dict) and envs[member].get("type") == "group":
            errors.append(f"{path}.members: {quoted(member)} is a group; groups cannot be nested")
    for dependant, needs in group["dependencies"].items():
        where = f"{path}.dependencies.{quoted(dependant)[1:-1]}"
        if dependant not in position:
            errors.append(f"{where}: {quoted(dependant)} is not a member of the group")
            continue
        for need in needs:
            if need not in position:
                errors.append(f"{where}: {quoted(need)} is not a member of the group")
            elif need == dependant:
                errors.append(f"{where}: {quoted(need)} cannot depend on itself")
            elif position[need] > position[dependant]:
                errors.append(f"{where}: {quoted(need)} is created after {quoted(dependant)}; "
                              "list it earlier in members")
    return errors


def check_failover(envs: dict[str, Any]) -> list[str]:
    """At most one active and one passive environment per failover_group."""
    errors: list[str] = []
    holders: dict[tuple[str, str], str] = {}
    for name, env in envs.items():
        policy = env.get("availability_policy") if env.get("type") != "group" else None
        if not policy or not policy.get("failover_group"):
            continue
        key = (policy["failover_group"], policy["failover_role"])
        if key in holders:
            errors.append(f"ENVIRONMENT.{name}.availability_policy.failover_role: failover group {key[0]!r} "
                          f"already has its {key[1]} environment ({holders[key]})")
        else:
            holders[key] = name
    return errors


def cross_check(config: dict[str, Any], raw: dict[str, Any], vm_files: set[str]) -> list[str]:
    """All cross-section problems of a config whose entries passed their schemas."""
    errors = check_files(config["TEMPLATE"], vm_files)
    endpoints, templates = Names(raw, "ENDPOINT"), Names(raw, "TEMPLATE")
    for name, env in config["ENVIRONMENT"].items():
        if env.get("type") == "group":
            errors += check_group(name, env, raw)
        else:
            errors += check_compute(name, env, config, endpoints, templates)
    return errors + check_failover(config["ENVIRONMENT"])
