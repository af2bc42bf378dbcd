"""The spec snapshot written at create (env field `spec`) is the environment's config entry (flat: endpoint,
num_slaves, master_context_script, ...) plus:
  name       the configuration name          service   the owning service
  proxy      the endpoint's XML-RPC URL (never its oneauth secret: read that from tenants.get_config)
  drain_time seconds (the entry's value, else settings.drain_time_default)
  templates  {"master": {...TEMPLATE entry, "name": <template name>, "text": <.vm text>},
              "slave": same, or None when the environment has no slave template}

Pure: no Redis, no queue.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from functions.errors import Invalid, NotFound


def _template(cfg: dict[str, Any], env_name: str, role: str, tname: str, endpoint: str,
              vm_text: Callable[[str], str | None]) -> dict[str, Any]:
    where = f"ENVIRONMENT.{env_name}.{role}_template"
    entry = (cfg.get("TEMPLATE") or {}).get(tname)
    if not isinstance(entry, dict):
        raise Invalid(f"{where}: template {tname!r} is not defined in TEMPLATE", where)
    for key in ("network_id", "image_id"):
        if endpoint not in (entry.get(key) or {}):
            raise Invalid(f"TEMPLATE.{tname}.{key}: no value for endpoint {endpoint!r}", f"TEMPLATE.{tname}.{key}")
    filename = str(entry.get("file") or "")
    text = vm_text(filename) if filename else None
    if text is None:
        raise Invalid(f"TEMPLATE.{tname}.file: VM template {filename!r} was not uploaded", f"TEMPLATE.{tname}.file")
    return {**copy.deepcopy(entry), "name": tname, "text": text}


def build_spec(cfg: dict[str, Any], name: str, service: str, vm_text: Callable[[str], str | None],
               drain_default: int) -> dict[str, Any]:
    """The spec snapshot for creating configuration `name` (see the module docstring). Pure.

    Raises NotFound (no such configuration) or Invalid (a group, or a missing piece, named by its config path).
    """
    entry = (cfg.get("ENVIRONMENT") or {}).get(name)
    if not isinstance(entry, dict):
        raise NotFound(f"name: no configuration named {name!r} in this service's config", "name")
    if entry.get("type") == "group":
        raise Invalid(f"name: {name!r} is a group; group creation is not supported yet", "name")
    endpoint = str(entry.get("endpoint") or "")
    ep = (cfg.get("ENDPOINT") or {}).get(endpoint)
    if not isinstance(ep, dict) or not ep.get("proxy"):
        raise Invalid(f"ENVIRONMENT.{name}.endpoint: endpoint {endpoint!r} is not defined in ENDPOINT",
                      f"ENVIRONMENT.{name}.endpoint")
    master_t = str(entry.get("master_template") or "")
    if not master_t:
        raise Invalid(f"ENVIRONMENT.{name}.master_template: missing", f"ENVIRONMENT.{name}.master_template")
    templates: dict[str, Any] = {"master": _template(cfg, name, "master", master_t, endpoint, vm_text)}
    slave_t = str(entry.get("slave_template") or "")
    if not slave_t and int(entry.get("num_slaves") or 0) > 0:
        raise Invalid(f"ENVIRONMENT.{name}.slave_template: missing (num_slaves > 0)",
                      f"ENVIRONMENT.{name}.slave_template")
    templates["slave"] = _template(cfg, name, "slave", slave_t, endpoint, vm_text) if slave_t else None
    drain = entry.get("drain_time")
    spec = copy.deepcopy(entry)
    spec.update(name=name, service=service, proxy=str(ep["proxy"]), templates=templates,
                drain_time=int(drain) if drain is not None else int(drain_default))
    return spec
