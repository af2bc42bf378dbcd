"""The global scheduler's administration and listings: the admin's upload of the global configuration (global.rb
or YAML), the class check of a new service, and the documents of --pools, --services, --requests and the
environments' gsTokens / gsOutStandingReqs (shapes from functions.gs.views, usage from the stored counters).
"""

from __future__ import annotations

from typing import Any

import redis

from functions.conf.schema import ConfigError
from functions.errors import BadInput
from functions.gs import views
from functions.gs.config import check_service_classes, load_global, pools_of, services_of
from functions.gs.model import ALLOCATED, CLASSES, PEND, ServiceQuota, Size
from functions.model.clock import Clock
from functions.store import gsstore, tenants

KINDS = ("rb", "yaml")


# ---------------------------------------------------------------- the admin's upload


def stranded_pools(r: redis.Redis, conf: dict[str, Any]) -> list[str]:
    """Errors (one per pool) when `conf` drops a pool that ALLOCATED requests still hold capacity in. Read-only."""
    kept = set(conf.get("SHAREDPOOLS") or {})
    holders: dict[str, list[str]] = {}
    for stored in gsstore.in_status(r, ALLOCATED):
        pool = stored.req.pool or ""
        if pool not in kept:
            holders.setdefault(pool, []).append(str(stored.req.id))
    return [f"SHAREDPOOLS.{pool}: still holds request(s) {', '.join(ids[:10])}"
            f"{f' and {len(ids) - 10} more' if len(ids) > 10 else ''}; keep the pool until their VMs are gone"
            for pool, ids in sorted(holders.items())]


def upload_global(r: redis.Redis, text: str, kind: str, clock: Clock) -> dict[str, Any]:
    """Validate and store the global configuration; returns it normalized. Raises BadInput (kind) or ConfigError
    listing every problem by place (syntax, SHAREDPOOLS / SERVICES entries, a service whose class disagrees with
    `carina-admin service add --class` or that is missing from SERVICES, a dropped pool still in use); a refused
    upload changes nothing. Safe to run twice."""
    if kind not in KINDS:
        raise BadInput("kind: must be rb or yaml", "kind")
    conf = load_global(text, kind)
    classes = {str(s["name"]): str(s.get("class") or "") for s in tenants.list_services(r)}
    problems = check_service_classes(conf, classes) + stranded_pools(r, conf)
    if problems:
        raise ConfigError(problems)
    gsstore.save_global(r, conf, text, kind, clock)
    return conf


def check_new_service(r: redis.Redis, name: str, cls: str) -> list[str]:
    """Why a service `name` of class `cls` disagrees with the global configuration in force ([] if it agrees,
    is not listed in SERVICES, or there is none). Read-only."""
    conf = gsstore.get_global(r)
    if conf is None:
        return []
    return check_service_classes(conf, {name: cls}, require_listed=False)


def global_doc(r: redis.Redis) -> dict[str, Any] | None:
    """{kind, uploaded_at, source, SHAREDPOOLS, SERVICES} of the configuration in force, or None."""
    record = gsstore.global_record(r)
    conf = gsstore.get_global(r)
    if record is None or conf is None:
        return None
    return {"kind": record.get("kind", ""), "uploaded_at": float(record.get("uploaded_at") or 0),
            "source": record.get("source", ""), **conf}


# ---------------------------------------------------------------- listings


def pool_docs(r: redis.Redis) -> list[dict[str, Any]]:
    """The --pools documents (gs.views.pool_json), by name; [] without a global configuration."""
    conf = gsstore.get_global(r)
    if conf is None:
        return []
    pools = pools_of(conf)
    used = gsstore.counters(r)[0]
    return [views.pool_json(pools[name], used.get(name, Size())) for name in sorted(pools)]


def service_doc(quota: ServiceQuota, used: Size, client: str | None = None) -> dict[str, Any]:
    """The original's service document (gs.views.service_json: name zone maxcpus maxmemory priclass
    vcpusallocated memallocated client) plus the keys this gateway answered before (class, mem_alloc, mem_max,
    vcpus_alloc, vcpus_max)."""
    doc = views.service_json(quota, used, client)
    doc.update({"class": quota.cls, "mem_alloc": used.mem, "mem_max": quota.max_mem, "vcpus_alloc": used.vcpus,
                "vcpus_max": quota.max_vcpus})
    return doc


def _record_quota(record: dict[str, str]) -> ServiceQuota:
    """A service's quota from its record (`carina-admin service add --class --max-memory --max-vcpus`)."""
    cls = str(record.get("class") or "")
    return ServiceQuota(str(record["name"]), cls if cls in CLASSES else "", int(record.get("max_vcpus") or 0),
                        int(record.get("max_memory") or 0))


def service_docs(r: redis.Redis, only: str | None = None) -> list[dict[str, Any]]:
    """The --services documents by name: every service and every SERVICES entry (admin), or only `only`. A service
    listed in SERVICES shows that entry's class and maxima, else its record's; usage from the counters."""
    conf = gsstore.get_global(r)
    quotas = services_of(conf) if conf else {}
    if only is None:
        records = {str(s["name"]): s for s in tenants.list_services(r)}
        names = sorted(set(records) | set(quotas))
    else:
        own = tenants.get_service(r, only)
        records = {only: own} if own else {}
        names = [only] if own else []
    used = gsstore.counters(r)[1]
    return [service_doc(quotas.get(name) or _record_quota(records[name]), used.get(name, Size())) for name in names]


def request_docs(r: redis.Redis, service: str | None = None) -> list[dict[str, Any]]:
    """The --requests documents (gs.views.request_json) by id: all (admin) or only `service`'s."""
    conf = gsstore.get_global(r)
    pools = pools_of(conf) if conf else {}
    return views.requests_json([s.req for s in gsstore.listed(r, service)], pools, service)


def env_tokens(r: redis.Redis, envid: str) -> tuple[list[str], int]:
    """(gsTokens: ids of the environment's ALLOCATED requests, gsOutStandingReqs: how many are PEND). Read-only."""
    slots = gsstore.env_slots(r, envid).values()
    tokens = sorted(s.req.id for s in slots if s.req.status == ALLOCATED)
    return [str(t) for t in tokens], sum(1 for s in slots if s.req.status == PEND)
