"""The pure group decisions: member checks, what to do next, which dependency URLs to pass."""

from __future__ import annotations

import pytest

from functions.model.groupplan import GroupError, check_members, decide, dep_urls, dependstr


def test_check_members_names_the_bad_member() -> None:
    envs = {"a": {"type": "compute"}, "g": {"type": "group", "members": ["a", "b"]},
            "h": {"type": "group", "members": ["a", "g"]}, "e": {"type": "group", "members": []}}
    with pytest.raises(GroupError, match="member 'b' is not defined") as exc:
        check_members(envs, "g")
    assert exc.value.field == "ENVIRONMENT.g.members"
    with pytest.raises(GroupError, match="member 'g' is a group"):
        check_members(envs, "h")
    with pytest.raises(GroupError, match="at least one member"):
        check_members(envs, "e")
    assert check_members({**envs, "g": {"members": ["a"]}}, "g") == ["a"]


@pytest.mark.parametrize("statuses, expected", [
    (["RUNNING", "PENDING", "PENDING"], ("wait", 0)),
    (["DONE", "PENDING", "PENDING"], ("start", 1)),
    (["DONE", "RUNNING", "PENDING"], ("wait", 1)),
    (["DONE", "FAIL", "PENDING"], ("abort", 1)),
    (["FAIL", "ABORT", "ABORT"], ("end", -1)),
    (["DONE", "DONE", "DONE"], ("end", -1)),
    (["DONE"], ("end", -1)),
])
def test_decide(statuses: list[str], expected: tuple[str, int]) -> None:
    assert decide(statuses) == expected


def test_dep_urls_upper_cases_and_reports_missing_and_empty() -> None:
    urls, missing, empty = dep_urls("web", {"web": ["db", "cache", "late"]}, {"db": "http://d/", "cache": ""})
    assert urls == {"DB": "http://d/", "CACHE": ""} and missing == ["late"] and empty == ["cache"]
    assert dep_urls("db", {"web": ["db"]}, {}) == ({}, [], [])
    assert dependstr(urls) == 'DB_URL="http://d/",CACHE_URL=""'
