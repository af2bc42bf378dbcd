"""Properties of the global scheduler's decisions, over generated reachable states (hypothesis).

States are built the way the scheduler builds them: requests are made PEND, allocated, some released, more
made. What is checked (see functions/gs/allocate.py for the guarantees in words):
capacity and quota are never exceeded; the result does not depend on input order; allocating again
allocates nothing more; counters moved by `change` equal `usage` recomputed; no request placed after an
earlier-served one could have had its room; a lower class never borrows a pool a waiting higher class could
use; every reclaim is valid and enough; the first request waiting for room is helped whenever taking back
lower-class borrowings could make it fit, and gets in once they are released.
"""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from functions.gs.allocate import allocate, apply, change, class_rank, reclaim, serve_key, usage
from functions.gs.model import ALLOCATED, CLASSES, PEND, Pool, Request, ServiceQuota, Size, cancel, release

NOW = 1_000.0
classes = st.sampled_from(CLASSES)


@st.composite
def worlds(draw: st.DrawFn, contended: bool = False) -> tuple[dict[str, Pool], dict[str, ServiceQuota], list[Request]]:
    """Pools, services and a reachable list of requests (some allocated, released, cancelled, reclaimed not long
    ago, pending). `contended`: one zone, no unknown names, generous quotas, the low classes arrive first
    (they borrow the better pools) and the high ones after: the case reclaim exists for."""
    zones = ["z0"] if contended else ["z0", "z0", "z0", "z1"]
    pools = {f"p{i}": Pool(f"p{i}", draw(st.sampled_from(zones)), draw(classes), draw(st.integers(0, 6)),
                           512 * draw(st.integers(0, 8))) for i in range(draw(st.integers(1, 4)))}
    low = 8 if contended else 0
    services = {f"s{j}": ServiceQuota(f"s{j}", draw(classes), draw(st.integers(low, 16)),
                                      512 * draw(st.integers(low, 24))) for j in range(draw(st.integers(1, 3)))}
    envs = draw(st.integers(1, 8))                # few environments: several VMs each
    made = [_request(draw, i, pools, services, contended, envs) for i in range(1, draw(st.integers(0, 20)) + 1)]
    split = draw(st.integers(0, len(made)))
    first = sorted(made[:split], key=lambda r: (class_rank(r, services), r.id)) if contended else made[:split]
    state: list[Request] = []
    for one in first:                             # they arrive one at a time: early low classes borrow
        state = apply([*state, one], allocate(pools, services, [*state, one]))
    for i, one in enumerate(state):
        move = draw(st.sampled_from(["keep", "keep", "release", "cancel", "reclaimed"]))
        if move == "release":
            state[i] = release(one)
        elif move == "cancel":
            state[i] = cancel(one)
        elif move == "reclaimed" and one.status == ALLOCATED:
            state[i] = replace(one, reclaimed_at=NOW - draw(st.sampled_from([5.0, 30.0, 90.0])))
    return pools, services, state + made[split:]


def _request(draw: st.DrawFn, i: int, pools: dict[str, Pool], services: dict[str, ServiceQuota],
             contended: bool, envs: int) -> Request:
    service = draw(st.sampled_from(list(services) if contended else [*services, *services, *services, "ghost"]))
    wanted = draw(st.sampled_from(list(pools) if contended else [*pools, *pools, *pools, "nowhere"]))
    return Request(id=i, envid=f"{service}-{draw(st.integers(0, envs - 1))}", service=service,
                   vcpus=draw(st.integers(1 if contended else 0, 3)), memory=512 * draw(st.integers(0, 2)),
                   pool_wanted=wanted,
                   cls=draw(classes), priority=draw(st.integers(0, 3)), created=float(draw(st.integers(0, 20))))


@st.composite
def borrowed_worlds(draw: st.DrawFn) -> tuple[dict[str, Pool], dict[str, ServiceQuota], list[Request]]:
    """A lower-class service with few environments has filled a higher-class pool with small VMs; a
    higher-class service then asks for VMs of several vCPUs (reclaim over several minutes)."""
    low, high = sorted(draw(st.lists(st.integers(0, 3), min_size=2, max_size=2, unique=True)))
    pool = Pool("top", "z0", CLASSES[high], draw(st.integers(2, 8)), 512 * draw(st.integers(2, 16)))
    pools = {"top": pool, "own": Pool("own", "z0", CLASSES[low], draw(st.integers(0, 2)), 1024)}
    services = {"lo": ServiceQuota("lo", CLASSES[low], 64, 65536), "hi": ServiceQuota("hi", CLASSES[high], 64, 65536)}
    envs, state = draw(st.integers(1, 3)), []
    for i in range(1, draw(st.integers(1, 12)) + 1):
        one = Request(i, f"lo-{draw(st.integers(0, envs - 1))}", "lo", draw(st.integers(1, 2)),
                      512 * draw(st.integers(0, 1)), draw(st.sampled_from(["own", "top"])), CLASSES[low],
                      created=float(i))
        state = apply([*state, one], allocate(pools, services, [*state, one]))
    wants = [Request(100 + i, f"hi-{i}", "hi", draw(st.integers(1, pool.vcpus_total)), 512 * draw(st.integers(0, 2)),
                     "top", CLASSES[high], created=float(100 + i)) for i in range(draw(st.integers(1, 3)))]
    return pools, services, state + wants


def within_limits(pools: dict[str, Pool], services: dict[str, ServiceQuota], state: list[Request]) -> bool:
    per_pool, per_service = usage(state)
    return (all(used.fits_in(pools[name].total) for name, used in per_pool.items())
            and all(used.fits_in(services[name].limit) for name, used in per_service.items() if name in services))


def waits_for_room(req: Request) -> bool:
    return req.status == PEND and req.reason.startswith("no pool with room")


def held_in(reason: str) -> set[str]:
    """The pools a no-room reason names as held for waiting higher-class requests."""
    if not reason.endswith(" held for waiting higher-class requests"):
        return set()
    return set(reason.rsplit("; ", 1)[1].removesuffix(" held for waiting higher-class requests").split(", "))


def eligible(pool: Pool, req: Request, pools: dict[str, Pool], services: dict[str, ServiceQuota]) -> bool:
    return (req.pool_wanted in pools and pool.zone == pools[req.pool_wanted].zone
            and CLASSES.index(pool.cls) >= class_rank(req, services))


def free_of(pools: dict[str, Pool], state: list[Request]) -> dict[str, Size]:
    per_pool = usage(state)[0]
    return {name: pool.total - per_pool.get(name, Size()) for name, pool in pools.items()}


SETTINGS = settings(max_examples=200, deadline=None)


@SETTINGS
@given(st.one_of(worlds(), worlds(contended=True)))
def test_capacity_and_quota_are_never_exceeded(world: tuple) -> None:
    pools, services, state = world
    assert within_limits(pools, services, state)
    after = apply(state, allocate(pools, services, state))
    assert within_limits(pools, services, after)


@SETTINGS
@given(st.one_of(worlds(), worlds(contended=True)), st.randoms(use_true_random=False))
def test_input_order_does_not_matter(world: tuple, rnd: random.Random) -> None:
    pools, services, state = world
    shuffled = state[:]
    rnd.shuffle(shuffled)
    pool_items, service_items = list(pools.items()), list(services.items())
    rnd.shuffle(pool_items)
    rnd.shuffle(service_items)
    assert allocate(dict(pool_items), dict(service_items), shuffled) == allocate(pools, services, state)
    assert (reclaim(dict(pool_items), dict(service_items), shuffled, NOW)
            == reclaim(pools, services, state, NOW))


@SETTINGS
@given(st.one_of(worlds(), worlds(contended=True)))
def test_allocating_twice_allocates_nothing_more(world: tuple) -> None:
    pools, services, state = world
    once = apply(state, allocate(pools, services, state))
    again = allocate(pools, services, once)
    assert all(r.status == PEND and r.pool is None for r in again)
    assert {r.id for r in again} == {r.id for r in once if r.status == PEND}


@SETTINGS
@given(st.one_of(worlds(), worlds(contended=True)), st.data())
def test_counters_moved_by_change_equal_usage_recomputed(world: tuple, data: st.DataObject) -> None:
    pools, services, state = world
    counters = {("pool", k): v for k, v in usage(state)[0].items()}
    counters.update({("service", k): v for k, v in usage(state)[1].items()})
    by_id = {r.id: r for r in state}

    def move(new: Request) -> None:
        for kind, name, delta in change(by_id[new.id], new):
            counters[(kind, name)] = counters.get((kind, name), Size()) + delta
        by_id[new.id] = new

    for new in allocate(pools, services, state):
        move(new)
    for key in sorted(by_id):
        if data.draw(st.booleans(), label=f"end {key}"):
            move(data.draw(st.sampled_from([release, cancel]))(by_id[key]))
    per_pool, per_service = usage(by_id.values())
    expected = {("pool", k): v for k, v in per_pool.items()} | {("service", k): v for k, v in per_service.items()}
    assert {k: v for k, v in counters.items() if v != Size()} == {k: v for k, v in expected.items() if v != Size()}


@SETTINGS
@given(st.one_of(worlds(), worlds(contended=True)))
def test_no_request_takes_room_an_earlier_served_one_could_use(world: tuple) -> None:
    pools, services, state = world
    decisions = allocate(pools, services, state)
    assert [serve_key(r, services) for r in decisions] == sorted(serve_key(r, services) for r in decisions)
    free = free_of(pools, apply(state, decisions))
    for i, waiting in enumerate(decisions):
        if not waits_for_room(waiting):
            continue
        for pool in pools.values():
            if not eligible(pool, waiting, pools, services) or pool.name in held_in(waiting.reason):
                continue
            later = sum((r.size for r in decisions[i + 1:] if r.pool == pool.name), Size())
            assert not waiting.size.fits_in(free[pool.name] + later)


@SETTINGS
@given(st.one_of(worlds(), worlds(contended=True)))
def test_a_lower_class_never_borrows_what_a_waiting_higher_class_could_use(world: tuple) -> None:
    pools, services, state = world
    decisions = allocate(pools, services, state)
    after = apply(state, decisions)
    for placed in (r for r in decisions if r.status == ALLOCATED):
        pool = pools[placed.pool]
        for waiting in filter(waits_for_room, decisions):
            level = class_rank(waiting, services)
            if level <= class_rank(placed, services) or not eligible(pool, waiting, pools, services):
                continue
            kept = sum((r.size for r in after if r.status == ALLOCATED and r.pool == pool.name
                        and class_rank(r, services) >= level), Size())
            assert not waiting.size.fits_in(pool.total - kept)


@SETTINGS
@given(st.one_of(worlds(contended=True), borrowed_worlds()))
def test_every_reclaim_is_valid_and_enough(world: tuple) -> None:
    pools, services, state = world
    state = apply(state, allocate(pools, services, state))
    by_id = {r.id: r for r in state}
    out = reclaim(pools, services, state, NOW)
    assert len({r.victim.envid for r in out}) == len(out)                   # one per environment
    free = free_of(pools, state)
    for rec in out:
        victim, waiting, pool = rec.victim, by_id[rec.waiting], pools[rec.pool]
        assert by_id[victim.id] == victim and victim.status == ALLOCATED and victim.pool == pool.name
        assert victim.reclaimed_at is None or NOW - victim.reclaimed_at >= 60   # not already under way
        assert class_rank(victim, services) < class_rank(waiting, services) and waits_for_room(waiting)
        assert eligible(pool, waiting, pools, services)
        newest = max((r for r in state if r.envid == victim.envid and r.status == ALLOCATED
                      and r.pool == pool.name), key=lambda r: (r.created, r.id))
        assert newest == victim
        freed = sum((r.victim.size for r in out if r.pool == pool.name), Size())
        coming = sum((r.size for r in state if r.status == ALLOCATED and r.pool == pool.name
                      and r.reclaimed_at is not None and NOW - r.reclaimed_at < 60), Size())
        if rec.reason.endswith("more to follow, one VM per environment per interval"):
            lower = sum((r.size for r in state if r.status == ALLOCATED and r.pool == pool.name
                         and class_rank(r, services) < class_rank(waiting, services)), Size())
            assert waiting.size.fits_in(free[pool.name] + lower)
        else:
            assert waiting.size.fits_in(free[pool.name] + freed + coming)
    assert reclaim(pools, services, state, NOW, {r.envid: NOW for r in state}) == []


@SETTINGS
@given(st.one_of(worlds(contended=True), borrowed_worlds()))
def test_the_first_waiting_request_never_waits_for_a_lower_class(world: tuple) -> None:
    """Minute after minute (reclaims land, allocation runs), until reclaim has nothing more to do: then the
    first request waiting for room is placed, or no pool it may use would have room even if every lower
    class gave back all it holds there."""
    pools, services, state = world
    state = [replace(r, reclaimed_at=None) for r in state]
    state = apply(state, allocate(pools, services, state))
    waiting = [r for r in allocate(pools, services, state) if waits_for_room(r)]
    if not waiting:
        return
    first, now = waiting[0], NOW
    for _ in range(100):
        out = reclaim(pools, services, state, now)
        if not out or {r.id: r for r in state}[first.id].status == ALLOCATED:
            break
        state = apply(state, [release(replace(r.victim, reclaimed_at=now)) for r in out])
        state = apply(state, allocate(pools, services, state))
        now += 60
    else:
        raise AssertionError("reclaim did not settle")
    if {r.id: r for r in state}[first.id].status == ALLOCATED:
        return
    level, free = class_rank(first, services), free_of(pools, state)
    for pool in pools.values():
        if eligible(pool, first, pools, services):
            lower = sum((r.size for r in state if r.status == ALLOCATED and r.pool == pool.name
                         and class_rank(r, services) < level), Size())
            assert not first.size.fits_in(free[pool.name] + lower)
