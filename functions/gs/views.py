"""JSON shapes and CLI tables of the global scheduler's listings: --pools, --services, --requests. Pure.

JSON keys are the original scheduler's (its Ruby instance variables without the `@`: `legacy` puts the
`@` back for scripts written against the original), plus a few the rebuild adds (`reason`, `pool_wanted`,
`class`, `priority`, `created`). Capacity in use is always derived from the ALLOCATED requests.
The original's per-service `clientList` (registered oneenvd daemons) has no counterpart; a service's
`client` is whatever the caller passes (e.g. its gateway address), None shows as NONE like the original.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from functions.gs.allocate import usage
from functions.gs.model import Pool, Request, ServiceQuota, Size
from functions.views.shapes import ruby_time
from functions.views.tables import render_table

POOL_HEADERS = ("NAME", "ZONE", "PRIORITY_CLASS", "MEM_TOT", "MEM_AVAIL", "VCPUS_TOT", "VCPUS_AVAIL")
SERVICE_HEADERS = ("NAME", "PRIORITY_CLASS", "MEM(ALLOC/MAX)", "VCPUS(ALLOC/MAX)", "CLIENT")
REQUEST_HEADERS = ("ID", "ENVID", "SERVICE", "MEM", "VCPUS", "STATUS", "POOL")


def legacy(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The document with the original's `@` key prefix (`{"@name": ...}`)."""
    return {f"@{key}": value for key, value in doc.items()}


# ---------------------------------------------------------------- pools


def pool_json(pool: Pool, used: Size) -> dict[str, Any]:
    """{name, zone, vcpus, mem, priclass, availvcpus, availmem}: totals and what is not allocated (MB)."""
    return {"name": pool.name, "zone": pool.zone, "vcpus": pool.vcpus_total, "mem": pool.mem_total,
            "priclass": pool.cls, "availvcpus": pool.vcpus_total - used.vcpus,
            "availmem": pool.mem_total - used.mem}


def pool_row(doc: Mapping[str, Any]) -> list[object]:
    """`NAME ZONE PRIORITY_CLASS MEM_TOT MEM_AVAIL VCPUS_TOT VCPUS_AVAIL` from a pool_json document."""
    return [doc["name"], doc["zone"], doc["priclass"], doc["mem"], doc["availmem"], doc["vcpus"], doc["availvcpus"]]


def pools_json(pools: Mapping[str, Pool], requests: Iterable[Request]) -> list[dict[str, Any]]:
    """Every pool's document, by name, with availability from the ALLOCATED requests."""
    per_pool = usage(requests)[0]
    return [pool_json(pools[name], per_pool.get(name, Size())) for name in sorted(pools)]


def pools_table(docs: Sequence[Mapping[str, Any]]) -> str:
    """The --pools table text."""
    return render_table(POOL_HEADERS, [pool_row(doc) for doc in docs])


# ---------------------------------------------------------------- services


def service_json(quota: ServiceQuota, used: Size, client: str | None = None) -> dict[str, Any]:
    """{name, zone (always null, as in the original), maxcpus, maxmemory, priclass, vcpusallocated,
    memallocated, client}."""
    return {"name": quota.name, "zone": None, "maxcpus": quota.max_vcpus, "maxmemory": quota.max_mem,
            "priclass": quota.cls, "vcpusallocated": used.vcpus, "memallocated": used.mem, "client": client}


def service_row(doc: Mapping[str, Any]) -> list[object]:
    """`NAME PRIORITY_CLASS MEM(ALLOC/MAX) VCPUS(ALLOC/MAX) CLIENT` from a service_json document."""
    return [doc["name"], doc["priclass"], f"{doc['memallocated']}/{doc['maxmemory']}",
            f"{doc['vcpusallocated']}/{doc['maxcpus']}", doc.get("client") or "NONE"]


def services_json(services: Mapping[str, ServiceQuota], requests: Iterable[Request],
                  clients: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Every service's document, by name, with usage from the ALLOCATED requests; `clients` by service."""
    per_service = usage(requests)[1]
    return [service_json(services[name], per_service.get(name, Size()), (clients or {}).get(name))
            for name in sorted(services)]


def services_table(docs: Sequence[Mapping[str, Any]]) -> str:
    """The --services table text."""
    return render_table(SERVICE_HEADERS, [service_row(doc) for doc in docs])


# ---------------------------------------------------------------- requests


def request_json(req: Request, pools: Mapping[str, Pool]) -> dict[str, Any]:
    """The original's {type, zone, service, mem, vcpus, envid, env, pool, submittime, status, reqid} (`pool`
    is the granting pool once allocated, else the wanted one; `zone` that of the wanted pool, null if it is
    unknown; `submittime` in the original's Ruby format) plus reason, pool_wanted, class, priority, created."""
    wanted = pools.get(req.pool_wanted)
    return {"type": "ALLOCATE", "zone": wanted.zone if wanted else None, "service": req.service,
            "mem": req.memory, "vcpus": req.vcpus, "envid": req.envid, "env": req.env, "pool": req.shown_pool,
            "submittime": ruby_time(req.created), "status": req.status, "reqid": str(req.id),
            "reason": req.reason, "pool_wanted": req.pool_wanted, "class": req.cls, "priority": req.priority,
            "created": req.created}


def request_row(doc: Mapping[str, Any]) -> list[object]:
    """`ID ENVID SERVICE MEM VCPUS STATUS POOL` from a request_json document."""
    return [doc["reqid"], doc["envid"], doc["service"], doc["mem"], doc["vcpus"], doc["status"], doc["pool"]]


def requests_json(requests: Iterable[Request], pools: Mapping[str, Pool],
                  service: str | None = None) -> list[dict[str, Any]]:
    """The requests' documents by id; only `service`'s when given (a service token sees its own)."""
    chosen = [r for r in requests if service is None or r.service == service]
    return [request_json(r, pools) for r in sorted(chosen, key=lambda r: r.id)]


def requests_table(docs: Sequence[Mapping[str, Any]]) -> str:
    """The --requests table text."""
    return render_table(REQUEST_HEADERS, [request_row(doc) for doc in docs])
