"""What a new configuration upload must not break for the environments already running."""

from __future__ import annotations

from typing import Any

import redis

from functions.model import specview
from functions.store import envstore


def stranded_endpoints(r: redis.Redis, service: str, config: dict[str, Any]) -> list[str]:
    """Errors (one per endpoint) when `config` drops an ENDPOINT that environments of `service` still use: their
    credentials would vanish and nothing could reach their VMs. Read-only."""
    kept = set(config.get("ENDPOINT") or {})
    users: dict[str, list[str]] = {}
    for env in envstore.list_envs(r, service):
        try:
            endpoint = str(env.get("endpoint") or specview.endpoint(env.get("spec") or {}))
        except specview.SpecError:
            continue
        if endpoint and endpoint not in kept:
            users.setdefault(endpoint, []).append(str(env["envid"]))
    return [f"ENDPOINT.{name}: still used by environment(s) {', '.join(ids[:10])}"
            f"{f' and {len(ids) - 10} more' if len(ids) > 10 else ''}; remove them first or keep the endpoint"
            for name, ids in sorted(users.items())]
