"""The global scheduler's allocation and reclaim decisions, case by case (properties: test_gs_properties)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from functions.gs.allocate import allocate, apply, change, plan, reclaim, usage
from functions.gs.model import ALLOCATED, CANCELLED, PEND, RELEASED, Pool, Request, ServiceQuota, Size, cancel, release

ZONE = "lab"
POOLS = {"silver1": Pool("silver1", ZONE, "silver", 4, 4096),
         "gold1": Pool("gold1", ZONE, "gold", 8, 8192),
         "gold2": Pool("gold2", ZONE, "gold", 6, 8192),
         "far": Pool("far", "other", "platinum", 64, 65536)}
SERVICES = {"web": ServiceQuota("web", "silver", 12, 16384),
            "db": ServiceQuota("db", "gold", 16, 32768),
            "batch": ServiceQuota("batch", "bronze", 2, 2048)}


def req(id: int, service: str = "web", pool: str = "silver1", vcpus: int = 1, mem: int = 512, *,
        env: str | None = None, priority: int = 0, created: float | None = None, status: str = PEND,
        granted: str | None = None, reclaimed_at: float | None = None) -> Request:
    return Request(id=id, envid=env or f"e{id}", service=service, vcpus=vcpus, memory=mem, pool_wanted=pool,
                   cls=SERVICES[service].cls if service in SERVICES else "silver", priority=priority,
                   created=float(id if created is None else created), status=status, pool=granted,
                   reclaimed_at=reclaimed_at)


def held(id: int, service: str, pool: str, vcpus: int = 1, mem: int = 512, **kw: object) -> Request:
    return req(id, service, pool, vcpus, mem, status=ALLOCATED, granted=pool, **kw)  # type: ignore[arg-type]


def decided(requests: list[Request], pools: dict[str, Pool] = POOLS) -> dict[int, tuple[str, str | None, str]]:
    return {r.id: (r.status, r.pool, r.reason) for r in allocate(pools, SERVICES, requests)}


# ---------------------------------------------------------------- allocation


def test_wanted_pool_first_then_tightest_fit_then_name() -> None:
    assert decided([req(1, "db", "gold1")])[1][:2] == (ALLOCATED, "gold1")
    full = [held(9, "db", "gold1", 8, 512)]
    # gold1 is full: gold2 (6 free) is the only other gold pool of the zone; the platinum one is elsewhere
    assert decided([*full, req(1, "db", "gold1")])[1][:2] == (ALLOCATED, "gold2")
    # a silver request that does not fit its silver pool goes to the tightest gold pool (gold2: 6 < 8)
    assert decided([held(9, "web", "silver1", 4), req(1, "web", "silver1")])[1][:2] == (ALLOCATED, "gold2")
    twins = {"b": Pool("b", ZONE, "gold", 4, 4096), "a": Pool("a", ZONE, "gold", 4, 4096),
             "w": Pool("w", ZONE, "gold", 0, 0)}
    assert decided([req(1, "db", "w")], twins)[1][:2] == (ALLOCATED, "a")


def test_class_then_priority_then_age_decide_who_gets_the_last_room() -> None:
    pools = {"g": Pool("g", ZONE, "gold", 1, 512)}
    assert decided([req(1, "web", "g"), req(2, "db", "g")], pools)[2][:2] == (ALLOCATED, "g")
    assert decided([req(1, "db", "g", priority=1), req(2, "db", "g", priority=5)], pools)[2][0] == ALLOCATED
    assert decided([req(1, "db", "g", created=7), req(2, "db", "g", created=3)], pools)[2][0] == ALLOCATED
    assert decided([req(2, "db", "g", created=3), req(1, "db", "g", created=3)], pools)[1][0] == ALLOCATED


def test_service_quota_keeps_a_request_pending_with_the_numbers() -> None:
    state = [held(1, "batch", "silver1"), held(2, "batch", "silver1")]
    assert decided([*state, req(3, "batch")])[3] == (
        PEND, None, "service quota: 2/2 vCPUs in use, this request needs 1")
    assert decided([held(1, "batch", "silver1", 1, 2048), req(3, "batch", mem=1)])[3][2] == (
        "service quota: 2048/2048 MB memory in use, this request needs 1")
    # quota counts what this pass grants too
    assert [d[0] for d in decided([req(1, "batch"), req(2, "batch"), req(3, "batch")]).values()] == [
        ALLOCATED, ALLOCATED, PEND]


def test_unknown_pool_or_service_stays_pending_with_a_reason() -> None:
    assert decided([req(1, "web", "nowhere")])[1] == (
        PEND, None, "pool 'nowhere' is not in SHAREDPOOLS (the environment's endpoint must name a shared pool)")
    assert decided([req(1, "ghost")])[1] == (
        PEND, None, "service 'ghost' has no entry in SERVICES of the global configuration")


def test_zone_and_class_limit_the_pools() -> None:
    pools = {"bronze1": Pool("bronze1", ZONE, "bronze", 8, 8192), "far": Pool("far", "other", "gold", 8, 8192),
             "silver8": Pool("silver8", "mid", "silver", 8, 8192)}
    assert decided([req(1, "web", "bronze1")], pools)[1] == (
        PEND, None, "no pool of class silver or better in zone lab")
    assert decided([req(1, "web", "silver8", 9)], pools)[1] == (
        PEND, None, "no pool of class silver or better in zone mid is large enough for 9 vCPUs, 512 MB")
    assert decided([held(5, "web", "bronze1", 1, 8000), req(1, "batch", "bronze1")], pools)[1] == (
        PEND, None, "no pool with room in zone lab for class bronze (needs 1 vCPUs, 512 MB)")


def test_a_waiting_higher_class_holds_the_pools_it_could_use() -> None:
    pools = {"g": Pool("g", ZONE, "gold", 4, 4096), "s": Pool("s", ZONE, "silver", 1, 4096)}
    # g: 1 vCPU gold, 2 borrowed by silver, 1 free; s is full. A gold request for 3 waits (it would fit
    # once the silver borrowers gave theirs back), so a silver request may not take g's last vCPU.
    state = [held(1, "db", "g", 1), held(2, "web", "g", 2), held(3, "web", "s", 1)]
    out = decided([*state, req(4, "db", "g", 3), req(5, "web", "s", 1)], pools)
    assert out[4] == (PEND, None, "no pool with room in zone lab for class gold (needs 3 vCPUs, 512 MB)")
    assert out[5] == (PEND, None, "no pool with room in zone lab for class silver (needs 1 vCPUs, 512 MB); "
                                  "g held for waiting higher-class requests")
    # a gold request that could not fit even with every lower class gone holds nothing
    out = decided([*state, req(4, "db", "g", 4), req(5, "web", "s", 1)], pools)
    assert out[4][0] == PEND and out[5][:2] == (ALLOCATED, "g")
    # and a silver request never holds anything against gold ones
    out = decided([held(1, "web", "g", 3), req(4, "web", "g", 2), req(5, "db", "g", 1)], pools)
    assert out[5][:2] == (ALLOCATED, "g")


def test_allocate_ignores_finished_requests_and_reports_only_pending_ones() -> None:
    state = [held(1, "db", "gold1", 8), replace(held(2, "db", "gold2", 6), status=RELEASED),
             replace(req(3, "db", "gold2"), status=CANCELLED), req(4, "db", "gold1", 6)]
    assert decided(state) == {4: (ALLOCATED, "gold2", "")}


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="request id 1 is given twice"):
        allocate(POOLS, SERVICES, [req(1), req(1)])
    with pytest.raises(ValueError, match="pools\\['x'\\] is named 'gold1'"):
        allocate({"x": POOLS["gold1"]}, SERVICES, [])
    with pytest.raises(ValueError, match="unknown class 'iron'"):
        allocate({"x": Pool("x", ZONE, "iron", 1, 1)}, SERVICES, [])
    with pytest.raises(ValueError, match="must not be negative"):
        req(1, vcpus=-1)
    with pytest.raises(ValueError, match="ALLOCATED without a pool"):
        req(1, status=ALLOCATED)


# ---------------------------------------------------------------- usage


def test_usage_counts_only_allocated_requests() -> None:
    state = [held(1, "db", "gold1", 2, 1024), held(2, "web", "gold1", 1, 512), req(3, "db", "gold1", 5),
             replace(held(4, "db", "gold2", 3), status=RELEASED)]
    assert usage(state) == ({"gold1": Size(3, 1536)}, {"db": Size(2, 1024), "web": Size(1, 512)})
    assert usage([]) == ({}, {})


def test_change_moves_counters_like_usage() -> None:
    pend = req(1, "db", "gold1", 2, 1024)
    granted = replace(pend, status=ALLOCATED, pool="gold2")
    assert change(None, pend) == []
    assert change(pend, granted) == [("pool", "gold2", Size(2, 1024)), ("service", "db", Size(2, 1024))]
    assert change(granted, release(granted)) == [("pool", "gold2", Size(-2, -1024)),
                                                 ("service", "db", Size(-2, -1024))]


def test_release_and_cancel_transitions_are_safe_twice() -> None:
    granted = held(1, "db", "gold1")
    assert release(granted).status == RELEASED and release(release(granted)) == release(granted)
    assert release(req(2)).status == CANCELLED
    assert cancel(granted, "env removed") == replace(granted, status=CANCELLED, reason="env removed")
    assert cancel(release(granted)) == release(granted)


def test_hash_round_trip_and_bad_hashes() -> None:
    one = replace(held(7, "db", "gold1", 2, 1024, priority=3, reclaimed_at=12.5), env="tomcat")
    assert Request.from_hash(one.to_hash()) == one
    assert Request.from_hash({k.encode(): v.encode() for k, v in one.to_hash().items()}) == one
    two = req(8)
    assert two.to_hash()["pool"] == "" and Request.from_hash(two.to_hash()) == two
    with pytest.raises(ValueError, match="vcpus: 'x' is not an integer"):
        Request.from_hash({**two.to_hash(), "vcpus": "x"})
    with pytest.raises(ValueError, match="status: 'DONE' is not one of"):
        Request.from_hash({**two.to_hash(), "status": "DONE"})
    with pytest.raises(ValueError, match="created: 'nan' is not a finite number"):
        Request.from_hash({**two.to_hash(), "created": "nan"})
    with pytest.raises(ValueError, match="envid: missing"):
        Request.from_hash({**two.to_hash(), "envid": ""})


# ---------------------------------------------------------------- reclaim

RECLAIM_POOLS = {"g": Pool("g", ZONE, "gold", 4, 4096), "s": Pool("s", ZONE, "silver", 0, 0)}


def borrowed() -> list[Request]:
    """gold pool g full: two silver environments and a bronze one borrowed it; a gold request waits."""
    return [held(1, "web", "g", 1, env="A", created=1), held(2, "web", "g", 1, env="A", created=5),
            held(3, "web", "g", 1, env="B", created=3), held(4, "batch", "g", 1, env="C", created=2),
            req(10, "db", "g", 1, env="G", created=9)]


def victims(requests: list[Request], now: float = 1000.0, **kw: object) -> list[int]:
    return [r.victim.id for r in reclaim(RECLAIM_POOLS, SERVICES, requests, now, **kw)]  # type: ignore[arg-type]


def test_reclaim_takes_the_lowest_class_newest_first() -> None:
    out = reclaim(RECLAIM_POOLS, SERVICES, borrowed(), 1000.0)
    assert [(r.victim.id, r.waiting, r.pool) for r in out] == [(4, 10, "g")]
    assert out[0].reason == ("reclaim request 4 (1 vCPUs, 512 MB) of env C (service batch, bronze) borrowed "
                             "from pool g (gold) for request 10 of env G (service db, gold)")
    # without the bronze one: the newest silver request, of the lower-priority environment first
    state = [held(4, "db", "g", 1, env="D", created=2) if r.id == 4 else r for r in borrowed()]
    assert victims(state) == [2]
    state = [replace(r, priority=5) if r.envid == "A" else r for r in state]
    assert victims(state) == [3]


def test_reclaim_takes_one_per_environment_and_enough_to_fit() -> None:
    state = [*borrowed()[:4], req(10, "db", "g", 3, env="G")]
    # three needed: C (bronze), then A's newest (2) and B's (3); A's older one is left alone
    assert victims(state) == [4, 2, 3]
    assert victims([*borrowed()[:4], req(10, "db", "g", 5, env="G")]) == []   # 5 never fits in g


def test_reclaim_makes_progress_one_vm_per_environment_per_interval() -> None:
    # g is full: env A borrowed all four vCPUs (four VMs); a gold request needs three
    state = [held(i, "web", "g", 1, env="A", created=i) for i in range(1, 5)] + [req(10, "db", "g", 3, env="G")]
    now, taken = 1000.0, []
    while True:
        out = reclaim(RECLAIM_POOLS, SERVICES, state, now)
        if not out:
            break
        assert len(out) == 1 and out[0].reason.endswith(
            "; more to follow, one VM per environment per interval") == (len(taken) < 2)
        taken.append(out[0].victim.id)
        state = apply(state, [release(out[0].victim)])
        state = apply(state, allocate(RECLAIM_POOLS, SERVICES, state))
        now += 60
    assert taken == [4, 3, 2]                                         # newest first, one a minute
    assert {r.id: r.status for r in state}[10] == ALLOCATED and {r.id: r.status for r in state}[1] == ALLOCATED
    # two waiters, one borrowing environment: it gives back one VM now, not one per waiter
    state = [held(1, "web", "g", 1, env="A", created=1), held(2, "web", "g", 1, env="A", created=5),
             held(3, "db", "g", 2, env="D"), req(10, "db", "g", 1, env="G"), req(11, "db", "g", 1, env="H")]
    assert victims(state) == [2]


def test_reclaim_waits_a_minute_per_environment_and_counts_reclaims_under_way() -> None:
    assert victims(borrowed(), last_reclaim={"C": 990.0}) == [2]
    assert victims(borrowed(), last_reclaim={"C": 900.0}) == [4]
    # request 4 was reclaimed 10 s ago and is still held: that room is on its way, nothing more is taken
    state = [replace(r, reclaimed_at=990.0) if r.id == 4 else r for r in borrowed()]
    assert victims(state) == []
    # ... but after the interval it is asked again (the scale-down did not happen)
    assert victims(state, now=1050.0) == [4]
    # a second waiter does not count on the same room
    assert victims([*state, req(11, "db", "g", 1, env="H", created=10)]) == [2]


def test_reclaim_never_takes_from_an_equal_or_higher_class_or_another_zone() -> None:
    pools = {"p": Pool("p", ZONE, "platinum", 2, 4096), "g": Pool("g", "elsewhere", "gold", 0, 0)}
    state = [held(1, "db", "p", 2, env="D"), req(2, "db", "p", 1, env="E")]
    assert reclaim(pools, SERVICES, state, 0.0) == []           # gold borrows platinum, but the waiter is gold
    state = [held(1, "web", "p", 2, env="W"), req(2, "db", "g", 1, env="E")]
    assert reclaim(pools, SERVICES, state, 0.0) == []           # the waiter's zone has no room to take back


def test_reclaim_then_release_lets_the_waiter_in() -> None:
    state = [*borrowed()[:4], req(10, "db", "g", 2, env="G")]
    state = apply(state, allocate(RECLAIM_POOLS, SERVICES, state))
    out = reclaim(RECLAIM_POOLS, SERVICES, state, 1000.0)
    assert [r.victim.id for r in out] == [4, 2]
    state = apply(state, [release(r.victim) for r in out])
    assert decided(state, RECLAIM_POOLS)[10][:2] == (ALLOCATED, "g")


def test_plan_is_allocate_then_reclaim() -> None:
    state = [*borrowed()[:4], req(10, "db", "g", 2, env="G"), req(11, "batch", "s", 0, 0, env="C")]
    decisions, reclaims = plan(RECLAIM_POOLS, SERVICES, state, 1000.0)
    assert decisions == allocate(RECLAIM_POOLS, SERVICES, state)
    assert reclaims == reclaim(RECLAIM_POOLS, SERVICES, apply(state, decisions), 1000.0)
    assert [d.id for d in decisions if d.status == ALLOCATED] == [11] and [r.victim.id for r in reclaims] == [4, 2]


def test_nothing_to_reclaim_when_nobody_waits_for_room() -> None:
    quota_bound = [held(1, "web", "g", 4, env="A"), held(2, "db", "g", 0, 32768, env="D"), req(3, "db", "g", 1)]
    assert reclaim(RECLAIM_POOLS, SERVICES, quota_bound, 0.0) == []
    assert reclaim(RECLAIM_POOLS, SERVICES, borrowed()[:4], 0.0) == []
