"""The stored policy state of one environment, as Redis hash fields (strings). Pure.

`to_fields()` gives the fields to HSET into the environment hash (`policy_status`, `info` and `metrics`
are the original's env keys; the counters are `pol_*`). `from_fields()` reads them back from a hash that
may lack any of them or hold garbage: a bad counter reads 0, a bad status INIT, so nothing can raise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import Any

STATUSES = ("INIT", "READY", "ACTIVE", "PASSIVE", "FAILED")
MAX_INFO = 512
MAX_COUNTER = 1440
FIELD_NAMES = {"status": "policy_status", "info": "info", "metrics": "metrics", "minute": "pol_minute",
               "up": "pol_up", "down": "pol_down", "recreate": "pol_recreate", "failover": "pol_failover",
               "failback": "pol_failback", "last_action_at": "pol_last_action"}


@dataclass(frozen=True)
class PolicyState:
    """status: policy_status; minute: the last minute evaluated (-1 = never); up/down: consecutive true
    ticks of scaleup_expr/scaledown_expr; recreate/failover/failback: the same for the availability
    expressions; last_action_at: epoch seconds of the last action a policy emitted (0 = never)."""

    status: str = "INIT"
    info: str = ""
    metrics: str = ""
    minute: int = -1
    up: int = 0
    down: int = 0
    recreate: int = 0
    failover: int = 0
    failback: int = 0
    last_action_at: float = 0.0

    def to_fields(self) -> dict[str, str]:
        """Every field as a string, keyed by its Redis hash field name. Pure."""
        return {name: repr(value) if isinstance(value, float) else str(value)
                for name, value in zip(_NAMES, _VALUES(self), strict=True)}

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> PolicyState:
        """Read a state back from hash fields (other fields ignored; missing or bad values defaulted). Pure."""
        get = data.get
        status = str(get("policy_status") or "INIT").strip().upper()
        return cls(status if status in STATUSES else "INIT", clip(get("info")), clip(get("metrics")),
                   _int(get("pol_minute"), -1, low=-1, high=2**53), _int(get("pol_up"), 0), _int(get("pol_down"), 0),
                   _int(get("pol_recreate"), 0), _int(get("pol_failover"), 0), _int(get("pol_failback"), 0),
                   _float(get("pol_last_action")))

    def with_info(self, info: str) -> PolicyState:
        return replace(self, info=clip(info))


_NAMES = tuple(FIELD_NAMES.values())
_VALUES = attrgetter(*FIELD_NAMES)          # FIELD_NAMES is in the order of PolicyState's fields


def clip(value: Any) -> str:
    """`value` as an `info`/`metrics` field: a string cut to MAX_INFO characters; anything else is ""."""
    return value[:MAX_INFO] if isinstance(value, str) else ""


def _int(value: Any, default: int, low: int = 0, high: int = MAX_COUNTER) -> int:
    try:
        number = int((value if type(value) is str else str(value)).strip())
    except (TypeError, ValueError):
        return default
    return number if low <= number <= high else default


def _float(value: Any) -> float:
    try:
        number = float((value if type(value) is str else str(value)).strip())
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) and number >= 0 else 0.0
