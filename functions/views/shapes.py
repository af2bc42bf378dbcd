"""JSON shapes and CLI table rows of environments, VMs, jobs and events (pure: no Redis, no Falcon).

The JSON keys are the original Carina ones (`oneenv --json` users keep their scripts); the table rows
follow the original `oneenv` columns. Inputs are plain mappings as stored by functions.store.envstore (an env
hash with decoded spec, a VM record as a dict, a job hash, an event entry).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

ENV_HEADERS = ("ID", "NAME", "VMS", "P_STATUS", "D_STATUS", "APP_URL")
VM_HEADERS = ("VMID", "ENVID", "HOSTNAME", "IPADDR", "STATUS", "CPU")
JOB_HEADERS = ("ID", "ENVID", "CONFIG_NAME", "TYPE", "SUBMIT_TIME", "STATUS")
EVENT_HEADERS = ("TIME", "TYPE", "MESSAGE")
D_STATUS_WIDTH = 21

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Observed OpenNebula states (VmRecord.one_state) that override the reported status in listings.
_OBSERVED = {"unkn": "UNKNOWN", "unknown": "UNKNOWN", "fail": "FAILED", "failed": "FAILED",
             "failure": "FAILED", "missing": "MISSING", "gone": "MISSING", "done": "MISSING"}
_EVENT_CORE = ("ts", "type", "msg", "envid", "id")


def ruby_time(ts: float | str | None) -> str | None:
    """An epoch time as the original printed it (Ruby Time#to_s, UTC): `Mon Sep 17 14:41:29 +0000 2012`.

    Locale-independent; None or an empty/unreadable value gives None.
    """
    value = _float(ts)
    if value is None:
        return None
    t = datetime.fromtimestamp(value, tz=UTC)
    return f"{_DAYS[t.weekday()]} {_MONTHS[t.month - 1]} {t:%d %H:%M:%S} +0000 {t.year}"


def iso_time(ts: float | str | None) -> str | None:
    """An epoch time as ISO 8601 UTC to the second (`2012-09-17T14:41:29Z`), or None."""
    value = _float(ts)
    if value is None:
        return None
    return datetime.fromtimestamp(value, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _float(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        num = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return num if math.isfinite(num) else None


def _number(value: object) -> int | float:
    """A CPU figure: whole numbers as int, others rounded to one decimal; unreadable → -1."""
    num = _float(value)
    if num is None:
        return -1
    return int(num) if num == int(num) else round(num, 1)


def _or_none(value: object) -> Any:
    return value if value not in (None, "") else None


# ---------------------------------------------------------------- environments


def count_vms(vms: Iterable[Mapping[str, Any]]) -> int:
    """How many VM records count as the environment's VMs (every slot not already gone)."""
    return sum(1 for vm in vms if vm.get("state") != "gone")


def env_json(env: Mapping[str, Any], num_vms: int, gs_tokens: Iterable[str] = (),
             outstanding: int = 0) -> dict[str, Any]:
    """The original env JSON: envid name status policy_status url numVMs metrics gsTokens gsOutStandingReqs
    info groupid (`url` is null until the app URL is known; gsTokens are the ids of the global scheduler's
    requests the environment holds, gsOutStandingReqs how many it waits for), then `policy_source`: which
    configuration upload the policies came from at the last minute's evaluation (its upload time, "snapshot" for
    the spec taken at create when the configuration was removed, null before any evaluation)."""
    return {"envid": str(env.get("envid", "")), "name": env.get("name", ""), "status": env.get("status", ""),
            "policy_status": env.get("policy_status", ""), "url": _or_none(env.get("app_url")),
            "numVMs": num_vms, "metrics": env.get("metrics") or "", "gsTokens": [str(t) for t in gs_tokens],
            "gsOutStandingReqs": outstanding,
            "info": env.get("info") or "", "groupid": str(env.get("groupid", "-1")),
            "policy_source": _or_none(env.get("policy_source"))}


def env_row(doc: Mapping[str, Any]) -> list[object]:
    """`ID NAME VMS P_STATUS D_STATUS APP_URL` from an env_json document (statuses lowercased, D_STATUS cut)."""
    return [doc["envid"], doc["name"], doc["numVMs"], str(doc["policy_status"]).lower(),
            str(doc["status"]).lower()[:D_STATUS_WIDTH], doc["url"] or "-"]


# ---------------------------------------------------------------- VMs


def vm_status(vm: Mapping[str, Any]) -> str:
    """The status a listing shows: UNKNOWN / FAILED / MISSING when OpenNebula says so, else the reported one."""
    observed = str(vm.get("one_state") or "").lower()
    return _OBSERVED.get(observed, str(vm.get("status") or ""))


def vm_json(envid: str, vm: Mapping[str, Any]) -> dict[str, Any]:
    """{vmid, envid, endpoint, hostname, ipaddress, status, cpu, slot, role} for one VM record (as a dict)."""
    return {"vmid": vm.get("vmid"), "envid": str(envid), "endpoint": vm.get("endpoint", ""),
            "hostname": vm.get("hostname") or "", "ipaddress": vm.get("ip") or "", "status": vm_status(vm),
            "cpu": _number(vm.get("cpu")), "slot": vm.get("slot", ""), "role": vm.get("role", "")}


def vm_row(doc: Mapping[str, Any]) -> list[object]:
    """`VMID ENVID HOSTNAME IPADDR STATUS CPU` from a vm_json document (status lowercased, blanks as `-`)."""
    return [doc["vmid"], doc["envid"], doc["hostname"] or "-", doc["ipaddress"] or "-",
            str(doc["status"]).lower() or "-", doc["cpu"]]


# ---------------------------------------------------------------- jobs


def job_json(job: Mapping[str, Any]) -> dict[str, Any]:
    """The original job JSON (jobid name pid envid type predjob group groupid submit start end dependstr status
    priority) plus `info` (why a job failed), `origin` ("user", or "policy" for a job a policy started) and,
    for a policy's job, `source` (elasticity, availability, failback) and `slots`. Times are in the original's
    Ruby format; pid is always null."""
    priority = _float(job.get("priority"))
    return {"jobid": str(job.get("jobid", "")), "name": job.get("name", ""), "pid": None,
            "envid": str(job.get("envid", "")), "type": job.get("type", ""),
            "predjob": _or_none(job.get("predjob")), "group": None, "groupid": _or_none(job.get("groupid")),
            "submit": ruby_time(job.get("submit")), "start": ruby_time(job.get("start")),
            "end": ruby_time(job.get("end")), "dependstr": job.get("dependstr") or "",
            "status": job.get("status", ""), "priority": int(priority) if priority is not None else 0,
            "info": job.get("info") or "", "origin": job.get("origin") or "user",
            **({"source": job.get("source") or "", "slots": [s for s in str(job.get("slots") or "").split(",") if s]}
               if job.get("origin") == "policy" else {})}


def job_row(doc: Mapping[str, Any]) -> list[object]:
    """`ID ENVID CONFIG_NAME TYPE SUBMIT_TIME STATUS` from a job_json document."""
    return [doc["jobid"], doc["envid"], doc["name"], doc["type"], doc["submit"], doc["status"]]


# ---------------------------------------------------------------- events


def event_json(event: Mapping[str, Any]) -> dict[str, Any]:
    """One event: {id, time (ISO UTC), ts, type, msg, ...extra fields}."""
    doc: dict[str, Any] = {"id": event.get("id", ""), "time": iso_time(event.get("ts")),
                           "ts": _float(event.get("ts")), "type": event.get("type", ""), "msg": event.get("msg", "")}
    doc.update({k: v for k, v in event.items() if k not in _EVENT_CORE})
    return doc


def event_row(doc: Mapping[str, Any]) -> list[object]:
    """`TIME TYPE MESSAGE` from an event_json document."""
    return [doc["time"], doc["type"], doc["msg"]]
