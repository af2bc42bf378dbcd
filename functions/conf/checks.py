"""Cross-checks between the sections of a validated service config (used by confschema). Pure."""

from __future__ import annotations

from typing import Any

from functions.conf.fields import CONTEXT_NAME


def _names(raw: dict[str, Any], section: str) -> list[str]:
    value = raw.get(section)
    return [k for k in value if isinstance(k, str)] if isinstance(value, dict) else []


def _defined(names: list[str]) -> str:
    return ", ".join(names) if names else "none"


def check_files(templates: dict[str, Any], vm_files: set[str]) -> list[str]:
    """Every template's file must already be uploaded."""
    return [f"TEMPLATE.{name}.file: {t['file']} has not been uploaded; upload it first "
            f"(oneenv --upload {t['file']})" for name, t in templates.items() if t["file"] not in vm_files]


def check_compute(name: str, env: dict[str, Any], config: dict[str, Any], raw: dict[str, Any]) -> list[str]:
    """The environment's endpoint and templates exist, and the templates have ids for that endpoint."""
    path = f"ENVIRONMENT.{name}"
    errors: list[str] = []
    endpoints, templates = _names(raw, "ENDPOINT"), _names(raw, "TEMPLATE")
    endpoint = env["endpoint"]
    if endpoint not in endpoints:
        errors.append(f"{path}.endpoint: unknown endpoint {endpoint!r} (defined: {_defined(endpoints)})")
    seen: set[str] = set()
    for role in ("master_template", "slave_template"):
        tname = env[role]
        if tname in seen:
            continue
        seen.add(tname)
        if tname not in templates:
            errors.append(f"{path}.{role}: unknown template {tname!r} (defined: {_defined(templates)})")
            continue
        template = config["TEMPLATE"].get(tname)
        if template is None or endpoint not in endpoints:
            continue
        for key in ("network_id", "image_id"):
            if endpoint not in template[key]:
                errors.append(f"{path}.{role}: template {tname!r} has no {key} for endpoint {endpoint!r} "
                              f"(add {endpoint!r} => <id> to TEMPLATE.{tname}.{key})")
    return errors


def check_group(name: str, group: dict[str, Any], raw: dict[str, Any]) -> list[str]:
    """Members exist, are not groups, have context-variable names; dependencies point to earlier members."""
    path = f"ENVIRONMENT.{name}"
    errors: list[str] = []
    envs = raw.get("ENVIRONMENT") or {}
    members: list[str] = group["members"]
    for member in members:
        if not CONTEXT_NAME.fullmatch(member):
            errors.append(f"{path}.members: {member!r} is not usable in a context variable "
                          "(use only letters, digits and _)")
        if member not in envs:
            errors.append(f"{path}.members: unknown environment {member!r}")
        elif isinstance(envs[member], dict) and envs[member].get("type") == "group":
            errors.append(f"{path}.members: {member!r} is a group; groups cannot be nested")
    for dependant, needs in group["dependencies"].items():
        where = f"{path}.dependencies.{dependant}"
        if dependant not in members:
            errors.append(f"{where}: {dependant!r} is not a member of the group")
            continue
        for need in needs:
            if need not in members:
                errors.append(f"{where}: {need!r} is not a member of the group")
            elif need == dependant:
                errors.append(f"{where}: {need!r} cannot depend on itself")
            elif members.index(need) > members.index(dependant):
                errors.append(f"{where}: {need!r} is created after {dependant!r}; "
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
    for name, env in config["ENVIRONMENT"].items():
        if env.get("type") == "group":
            errors += check_group(name, env, raw)
        else:
            errors += check_compute(name, env, config, raw)
    return errors + check_failover(config["ENVIRONMENT"])
