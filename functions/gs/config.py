"""The global configuration (global.rb or YAML: SHAREDPOOLS, SERVICES): parse, validate, normalize. Pure.

`load_global(text, kind)` returns
    {"SHAREDPOOLS": {pool: {"zone": str, "allocateable_cpus": int, "allocateable_mem": int (MB),
                            "service_class": class}},
     "SERVICES":    {service: {"priority": class, "maxcpus": int, "maxmemory": int (MB),
                               "scaleups_only": bool (only when given)}}}
with numbers as ints (the original wrote them as strings) and class names lower-cased, or raises
ConfigError listing every problem by place (`SHAREDPOOLS.pool1.allocateable_cpus: must be an integer`).
`pools_of` / `services_of` turn it into the model the allocator takes; `check_service_classes` compares
it with the classes the services were added with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from functions.conf.fields import Int, Text
from functions.conf.rbparse import GLOBAL_CONSTANTS
from functions.conf.schema import ConfigError, load_section, parse_text
from functions.gs.model import CLASSES, Pool, ServiceQuota, rank

_NON_NEG = validate.Range(min=0, error="must not be negative")


class ClassName(Text):
    """A priority class name (bronze, silver, gold, platinum), case-insensitive, returned lower-case."""

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs).strip().lower()
        if text not in CLASSES:
            raise ValidationError(f"unknown class {value!r} (use one of {', '.join(CLASSES)}, lowest first)")
        return text


class PoolSchema(Schema):
    zone = Text(required=True, validate=validate.Length(min=1, max=64))
    allocateable_cpus = Int(required=True, validate=_NON_NEG)
    allocateable_mem = Int(required=True, validate=_NON_NEG)
    service_class = ClassName(required=True)


class ServiceSchema(Schema):
    priority = ClassName(required=True)
    maxcpus = Int(required=True, validate=_NON_NEG)
    maxmemory = Int(required=True, validate=_NON_NEG)
    # Optional: true = only scale-up VMs ask the scheduler (the original's behaviour); absent/false = every VM
    # the service's environments want (a create's master and slaves included).
    scaleups_only = fields.Boolean(error_messages={"invalid": "must be true or false"})


def _cross_check(pools: dict[str, Any], services: dict[str, Any]) -> list[str]:
    """A service whose class no pool reaches could never be given anything."""
    best = max((rank(p["service_class"]) for p in pools.values()), default=-1)
    return [f"SERVICES.{name}.priority: no pool in SHAREDPOOLS has class {svc['priority']} or better, "
            "so this service's requests could never be placed"
            for name, svc in services.items() if rank(svc["priority"]) > best]


def load_global(text: str, kind: str) -> dict[str, Any]:
    """Parse and validate global.rb (kind "rb") or its YAML twin ("yaml"). Pure, safe to run twice.
    Raises ConfigError with every problem."""
    raw = parse_text(text, kind, GLOBAL_CONSTANTS, "global")
    errors: list[str] = []
    pools = load_section(raw, "SHAREDPOOLS", lambda _: PoolSchema, errors)
    services = load_section(raw, "SERVICES", lambda _: ServiceSchema, errors)
    if not errors:
        errors = _cross_check(pools, services)
    if errors:
        raise ConfigError(errors)
    return {"SHAREDPOOLS": pools, "SERVICES": services}


def pools_of(conf: Mapping[str, Any]) -> dict[str, Pool]:
    """The pools of a load_global() result, by name."""
    return {name: Pool(name, p["zone"], p["service_class"], p["allocateable_cpus"], p["allocateable_mem"])
            for name, p in conf["SHAREDPOOLS"].items()}


def services_of(conf: Mapping[str, Any]) -> dict[str, ServiceQuota]:
    """The service quotas of a load_global() result, by name."""
    return {name: ServiceQuota(name, s["priority"], s["maxcpus"], s["maxmemory"])
            for name, s in conf["SERVICES"].items()}


def check_service_classes(conf: Mapping[str, Any], service_classes: Mapping[str, str],
                          require_listed: bool = True) -> list[str]:
    """Problems between the classes services were added with (`carina-admin service add --class`) and
    SERVICES of the global configuration, sorted by service; [] when they agree. A service missing from
    SERVICES is a problem unless `require_listed` is False (its scale-ups would wait forever). Pure."""
    listed = conf.get("SERVICES") or {}
    errors: list[str] = []
    for name in sorted(service_classes):
        cls = service_classes[name]
        entry = listed.get(name)
        if cls not in CLASSES:
            errors.append(f"service {name}: unknown class {cls!r} (use one of {', '.join(CLASSES)})")
        elif entry is None:
            if require_listed:
                errors.append(f"service {name}: not in SERVICES of the global configuration; add "
                              f"'{name}' => {{:priority => '{cls}', :maxcpus => N, :maxmemory => MB}}")
        elif entry["priority"] != cls:
            errors.append(f"service {name}: class {cls} (carina-admin service add --class) but "
                          f"SERVICES.{name}.priority is {entry['priority']}; make them agree")
    return errors
