"""The --pools, --services and --requests listings: the guide's rows, the original's JSON keys."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from functions.gs.model import ALLOCATED, RELEASED, Pool, Request, ServiceQuota, Size
from functions.gs.views import (
    POOL_HEADERS,
    REQUEST_HEADERS,
    SERVICE_HEADERS,
    legacy,
    pool_json,
    pools_json,
    pools_table,
    request_json,
    requests_json,
    requests_table,
    service_json,
    services_json,
    services_table,
)

POOLS = {"hlx02": Pool("hlx02", "helix", "silver", 5, 4096), "flm01": Pool("flm01", "flame", "gold", 10, 10248)}
SERVICES = {"oneenv1": ServiceQuota("oneenv1", "silver", 12, 128000), "arch": ServiceQuota("arch", "silver", 12, 64000),
            "oneenv2": ServiceQuota("oneenv2", "gold", 12, 64000)}
REQUESTS = [
    Request(7, "19", "oneenv1", 1, 512, "hlx02", "silver", 0, 1347893053.0, env="tomcat-hlx02"),
    Request(4, "14", "oneenv1", 1, 512, "flm01", "silver", 10, 1347892889.0, status=ALLOCATED, pool="flm01",
            env="tomcat-flm01"),
    Request(3, "14", "oneenv1", 1, 512, "flm01", "silver", 10, 1347892000.0, status=RELEASED, env="tomcat-flm01"),
]


def data_rows(text: str) -> list[str]:
    return text.splitlines()[2:]


def test_pools_as_the_guide_shows_them() -> None:
    docs = pools_json(POOLS, REQUESTS)
    assert docs[0] == {"name": "flm01", "zone": "flame", "vcpus": 10, "mem": 10248, "priclass": "gold",
                       "availvcpus": 9, "availmem": 9736}
    text = pools_table(docs)
    assert text.splitlines()[0] == " NAME  ZONE PRIORITY_CLASS MEM_TOT MEM_AVAIL VCPUS_TOT VCPUS_AVAIL"
    assert data_rows(text) == ["flm01 flame           gold   10248      9736        10 9",
                               "hlx02 helix         silver    4096      4096         5 5"]


def test_services_as_the_guide_shows_them() -> None:
    docs = services_json(SERVICES, REQUESTS, clients={"oneenv2": "10.0.0.5:8080"})
    assert [d["name"] for d in docs] == ["arch", "oneenv1", "oneenv2"]
    assert docs[1] == {"name": "oneenv1", "zone": None, "maxcpus": 12, "maxmemory": 128000, "priclass": "silver",
                       "vcpusallocated": 1, "memallocated": 512, "client": None}
    assert data_rows(services_table(docs)) == [
        "   arch         silver        0/64000             0/12 NONE",
        "oneenv1         silver     512/128000             1/12 NONE",
        "oneenv2           gold        0/64000             0/12 10.0.0.5:8080"]
    assert services_table(docs).splitlines()[0] == " ".join(
        ["   NAME", "PRIORITY_CLASS", "MEM(ALLOC/MAX)", "VCPUS(ALLOC/MAX)", "CLIENT"])


def test_requests_as_the_guide_shows_them() -> None:
    docs = requests_json(REQUESTS, POOLS)
    assert [d["reqid"] for d in docs] == ["3", "4", "7"]
    # the guide's rows, except that MEM and VCPUS are as wide as their headers (the original printed
    # dash rows longer than those two headers, which widened the columns by one)
    assert data_rows(requests_table(docs[1:])) == [" 4    14 oneenv1 512     1 ALLOCATED flm01",
                                                   " 7    19 oneenv1 512     1      PEND hlx02"]
    assert docs[2] == {"type": "ALLOCATE", "zone": "helix", "service": "oneenv1", "mem": 512, "vcpus": 1,
                       "envid": "19", "env": "tomcat-hlx02", "pool": "hlx02",
                       "submittime": "Mon Sep 17 14:44:13 +0000 2012", "status": "PEND", "reqid": "7", "reason": "",
                       "pool_wanted": "hlx02", "class": "silver", "priority": 0, "created": 1347893053.0}
    unknown = Request(9, "1", "x", 1, 1, "nowhere", "gold")
    assert request_json(unknown, POOLS)["zone"] is None
    assert requests_json([*REQUESTS, unknown], POOLS, service="x") == [request_json(unknown, POOLS)]


def test_legacy_keys_and_headers() -> None:
    assert legacy(pool_json(POOLS["hlx02"], Size()))["@availmem"] == 4096
    assert set(legacy(service_json(SERVICES["arch"], Size()))) >= {"@name", "@maxcpus", "@maxmemory", "@priclass",
                                                                   "@vcpusallocated", "@memallocated", "@zone"}
    assert (len(POOL_HEADERS), len(SERVICE_HEADERS), len(REQUEST_HEADERS)) == (7, 5, 7)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 4096)), max_size=6))
def test_availability_is_total_minus_allocated(sizes: list[tuple[int, int]]) -> None:
    pool = Pool("p", "z", "gold", 64, 65536)
    reqs = [Request(i, str(i), "s", v, m, "p", "gold", status=ALLOCATED, pool="p") for i, (v, m) in enumerate(sizes)]
    doc = pools_json({"p": pool}, reqs)[0]
    assert doc["availvcpus"] == 64 - sum(v for v, _ in sizes)
    assert doc["availmem"] == 65536 - sum(m for _, m in sizes)
