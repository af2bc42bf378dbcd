"""Environment groups: the pure decisions (which members are valid, what to do next, which URLs to pass).

A group's members are created strictly in `members` order; the next one starts only when every earlier
member's CREATE ended DONE. A member that ended FAIL or ABORT stops the chain: every PENDING member is aborted.
"""

from __future__ import annotations

from typing import Any

FINAL_BAD = ("FAIL", "ABORT")


class GroupError(ValueError):
    """The group cannot be created as configured; `field` names the config path at fault."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def check_members(envs: dict[str, Any], name: str) -> list[str]:
    """The members of group `name` in creation order. Raises GroupError naming a missing or nested member."""
    group = envs.get(name) or {}
    members = group.get("members")
    where = f"ENVIRONMENT.{name}.members"
    if not isinstance(members, list) or not members:
        raise GroupError(f"{where}: a group needs at least one member", where)
    for member in members:
        entry = envs.get(member)
        if not isinstance(entry, dict):
            raise GroupError(f"{where}: member {member!r} is not defined in ENVIRONMENT", where)
        if entry.get("type") == "group":
            raise GroupError(f"{where}: member {member!r} is a group; groups cannot be nested", where)
    if len(set(members)) != len(members):
        raise GroupError(f"{where}: a member is listed twice", where)
    return [str(m) for m in members]


def decide(statuses: list[str]) -> tuple[str, int]:
    """What the group does next, from its members' CREATE job statuses (in members order).

    ("abort", i): member i ended FAIL/ABORT while members are still PENDING (abort them);
    ("start", i): members before i are DONE and i is PENDING; ("wait", i): member i is running;
    ("end", -1): nothing is PENDING any more.
    """
    if "PENDING" not in statuses:
        return "end", -1
    for i, status in enumerate(statuses):
        if status in FINAL_BAD:
            return "abort", i
        if status == "PENDING":
            return "start", i
        if status != "DONE":
            return "wait", i
    return "end", -1


def dep_urls(member: str, dependencies: dict[str, Any], app_urls: dict[str, str | None]
             ) -> tuple[dict[str, str], list[str], list[str]]:
    """The dependency URLs to hand to `member`: ({DEP_UPPER: url}, deps not created, deps with an empty URL).

    `app_urls` maps each member already created (its CREATE DONE) to its app_url; others are skipped.
    The keys are rendered as <DEP_UPPER>_URL context variables (functions.model.render.context_pairs).
    """
    urls: dict[str, str] = {}
    missing: list[str] = []
    empty: list[str] = []
    for dep in dependencies.get(member) or []:
        url = app_urls.get(dep)
        if url is None:
            missing.append(dep)
            continue
        if not url:
            empty.append(dep)
        urls[str(dep).upper()] = url
    return urls, missing, empty


def dependstr(urls: dict[str, str]) -> str:
    """The job's `dependstr` (the original's `,NAME_URL="value"` list, without the shell escaping)."""
    return ",".join(f'{name}_URL="{url}"' for name, url in urls.items())
