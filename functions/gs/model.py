"""The global scheduler's data: priority classes, pools, service quotas and requests. Pure.

A request is one VM an environment wants from the shared pools. Its life:
PEND -> ALLOCATED -> RELEASED, or PEND/ALLOCATED -> CANCELLED. Only ALLOCATED requests hold capacity;
every pool's free capacity and every service's usage is derived from them (see allocate.usage).
Requests are stored as flat string hashes (`to_hash` / `from_hash`), so a Redis hash holds one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import NamedTuple

CLASSES = ("bronze", "silver", "gold", "platinum")
PEND, ALLOCATED, RELEASED, CANCELLED = "PEND", "ALLOCATED", "RELEASED", "CANCELLED"
STATUSES = (PEND, ALLOCATED, RELEASED, CANCELLED)


class Size(NamedTuple):
    """An amount of capacity: vCPUs and memory (MB)."""

    vcpus: int = 0
    mem: int = 0

    def __add__(self, other: Size) -> Size:  # type: ignore[override]
        return Size(self.vcpus + other.vcpus, self.mem + other.mem)

    def __sub__(self, other: Size) -> Size:
        return Size(self.vcpus - other.vcpus, self.mem - other.mem)

    def fits_in(self, room: Size) -> bool:
        """True when this amount fits in `room` in both dimensions."""
        return self.vcpus <= room.vcpus and self.mem <= room.mem


def rank(cls: str) -> int:
    """The order of a class (bronze 0 .. platinum 3); ValueError naming the class if unknown."""
    try:
        return CLASSES.index(cls)
    except ValueError:
        raise ValueError(f"unknown class {cls!r} (use one of {', '.join(CLASSES)})") from None


@dataclass(frozen=True)
class Pool:
    """A shared resource pool (SHAREDPOOLS entry): zone, class, total vCPUs and memory (MB)."""

    name: str
    zone: str
    cls: str
    vcpus_total: int
    mem_total: int

    @property
    def total(self) -> Size:
        return Size(self.vcpus_total, self.mem_total)


@dataclass(frozen=True)
class ServiceQuota:
    """A service's class and its maximum vCPUs and memory (MB) across all its allocations (SERVICES entry)."""

    name: str
    cls: str
    max_vcpus: int
    max_mem: int

    @property
    def limit(self) -> Size:
        return Size(self.max_vcpus, self.max_mem)


@dataclass(frozen=True)
class Request:
    """One VM an environment wants.

    `pool_wanted` is the environment's endpoint name, `cls` the service's class when the request was made
    (shown in listings; allocation uses the service's current class), `priority` the environment's
    elasticity priority (higher first within a class), `created` an epoch time or sequence number (older
    first). `pool` is set when ALLOCATED, `reason` says why a request is still PEND, `reclaimed_at` when
    the scheduler last asked its environment to give it back (None if never), `env` the env's name.
    """

    id: int
    envid: str
    service: str
    vcpus: int
    memory: int
    pool_wanted: str
    cls: str
    priority: int = 0
    created: float = 0.0
    status: str = PEND
    pool: str | None = None
    reason: str = ""
    env: str = ""
    reclaimed_at: float | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status: {self.status!r} is not one of {', '.join(STATUSES)}")
        if self.vcpus < 0 or self.memory < 0:
            raise ValueError(f"request {self.id}: vcpus and memory must not be negative")
        if self.status == ALLOCATED and not self.pool:
            raise ValueError(f"request {self.id}: ALLOCATED without a pool")

    @property
    def size(self) -> Size:
        return Size(self.vcpus, self.memory)

    @property
    def shown_pool(self) -> str:
        """The POOL column: the granting pool once allocated, else the wanted one (as the original showed)."""
        return self.pool or self.pool_wanted

    def to_hash(self) -> dict[str, str]:
        """The request as a flat string hash (None as ""); `from_hash` reads it back equal."""
        return {"id": str(self.id), "envid": self.envid, "service": self.service, "vcpus": str(self.vcpus),
                "memory": str(self.memory), "pool_wanted": self.pool_wanted, "class": self.cls,
                "priority": str(self.priority), "created": repr(float(self.created)), "status": self.status,
                "pool": self.pool or "", "reason": self.reason, "env": self.env,
                "reclaimed_at": "" if self.reclaimed_at is None else repr(float(self.reclaimed_at))}

    @classmethod
    def from_hash(cls, data: Mapping[str, str | bytes]) -> Request:
        """A request from its stored hash (str or bytes values). ValueError naming the bad field."""
        text = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
                for k, v in data.items()}
        status = text.get("status", PEND)
        reclaimed = text.get("reclaimed_at", "")
        return cls(id=_int(text, "id"), envid=_str(text, "envid"), service=_str(text, "service"),
                   vcpus=_int(text, "vcpus"), memory=_int(text, "memory"),
                   pool_wanted=_str(text, "pool_wanted"), cls=_str(text, "class"),
                   priority=_int(text, "priority", "0"), created=_float(text, "created", "0"), status=status,
                   pool=text.get("pool") or None, reason=text.get("reason", ""), env=text.get("env", ""),
                   reclaimed_at=_float(text, "reclaimed_at") if reclaimed else None)


def _str(data: Mapping[str, str], key: str) -> str:
    value = data.get(key)
    if not value:
        raise ValueError(f"{key}: missing")
    return value


def _int(data: Mapping[str, str], key: str, default: str | None = None) -> int:
    value = data.get(key) or default
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{key}: {value!r} is not an integer") from None


def _float(data: Mapping[str, str], key: str, default: str | None = None) -> float:
    value = data.get(key) or default
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{key}: {value!r} is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{key}: {value!r} is not a finite number")
    return number


def release(req: Request) -> Request:
    """The request given back (RELEASED): only an ALLOCATED one changes; RELEASED/CANCELLED stay as they are
    (safe to run twice). Releasing a PEND request cancels it instead (nothing was held)."""
    if req.status == ALLOCATED:
        return replace(req, status=RELEASED, reason="")
    if req.status == PEND:
        return replace(req, status=CANCELLED, reason="released before it was allocated")
    return req


def cancel(req: Request, reason: str = "cancelled") -> Request:
    """The request withdrawn (CANCELLED, capacity freed if it held any). Finished ones stay as they are
    (safe to run twice)."""
    if req.status in (PEND, ALLOCATED):
        return replace(req, status=CANCELLED, reason=reason)
    return req
