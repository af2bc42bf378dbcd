"""Read the environment `spec` snapshot (taken at create) the same way everywhere (pure).

The spec holds the environment's config entry, its master/slave template entries, the .vm texts and the
endpoint's proxy URL (never the oneauth secret). Accepted shapes: the config entry flattened at the top
level or under "env"/"config"; template entries under "templates" keyed by role or by template name, or as
"<role>_template_entry"; .vm texts under "vm_files"/"vm_texts" keyed by file name or role, or as
"<role>_vm"; the proxy as "proxy" or "endpoint_proxy".
"""

from __future__ import annotations

from typing import Any


class SpecError(ValueError):
    """The spec lacks something the lifecycle needs; the message names it."""


def env_entry(spec: dict[str, Any]) -> dict[str, Any]:
    """The environment's config entry (master_template, num_slaves, adminuser, ...)."""
    for key in ("env", "config", "environment"):
        if isinstance(spec.get(key), dict) and "master_template" in spec[key]:
            return spec[key]
    return spec


def template_entry(spec: dict[str, Any], role: str) -> dict[str, Any]:
    """The TEMPLATE entry (file, cpu, memory, network_id, image_id) used for `role` (master/slave)."""
    name = env_entry(spec).get(f"{role}_template", "")
    direct = spec.get(f"{role}_template_entry")
    if isinstance(direct, dict):
        return direct
    templates = spec.get("templates") or spec.get("TEMPLATE") or {}
    for key in (role, name):
        if isinstance(templates, dict) and isinstance(templates.get(key), dict):
            return templates[key]
    raise SpecError(f"spec: no template entry for the {role} (template {name!r})")


def vm_text(spec: dict[str, Any], role: str) -> str:
    """The .vm template text used for `role`."""
    if isinstance(spec.get(f"{role}_vm"), str):
        return spec[f"{role}_vm"]
    entry = template_entry(spec, role)
    if isinstance(entry.get("text"), str):
        return entry["text"]
    files = spec.get("vm_files") or spec.get("vm_texts") or {}
    for key in (entry.get("file", ""), role):
        if isinstance(files, dict) and isinstance(files.get(key), str):
            return files[key]
    raise SpecError(f"spec: template file {entry.get('file', '?')!r} of the {role} was not uploaded")


def proxy(spec: dict[str, Any]) -> str:
    """The XML-RPC URL of the environment's endpoint."""
    url = spec.get("proxy") or spec.get("endpoint_proxy") or ""
    if not url:
        raise SpecError("spec: no endpoint proxy URL")
    return str(url)


def endpoint(spec: dict[str, Any]) -> str:
    return str(spec.get("endpoint") or env_entry(spec).get("endpoint") or "")


def deps(spec: dict[str, Any]) -> dict[str, str]:
    """Group dependency URLs (member -> app URL) to pass as <MEMBER>_URL context vars."""
    value = spec.get("deps") or {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
