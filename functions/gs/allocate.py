"""The global scheduler's decisions: allocate pending requests, reclaim borrowed capacity. Pure.

Every function here reads plain values and returns new ones; nothing is stored, so each is safe to run
twice, and the result never depends on the order of the inputs (everything is sorted by a total key).

Allocation (`allocate`): pending requests are served by class (higher first; a request's class is its
service's class in SERVICES), then the environment's priority (higher first), then age (older first,
then lower id). A pool is eligible when it is in the same zone as the wanted pool, its class is at least
the service's, and it has room; the wanted pool is taken when it has room, otherwise the tightest fit
(least free vCPUs, then name). What each guarantees:

- capacity: no pool ever holds more than its total, no service more than its maximum (a request over
  its service's remaining quota stays PEND: "service quota: 2/2 vCPUs in use, this request needs 1").
- order: a request is placed only if no earlier-served pending request fitted in that pool at its turn
  (smaller later requests may fill the gaps a large earlier one cannot use: backfill).
- no borrowing against a waiting higher class: once a request W waits for room, pools W could use are
  *held* for W's class: a lower-class request is not placed there if W would fit in it after every
  lower-class allocation there were given back (its total minus what classes >= W's hold). Such lower
  allocations are exactly what `reclaim` takes back, so W only waits for equal or higher classes.
- allocating again allocates nothing more: run on its own output, no request changes status.

Reclaim (`reclaim`): for every request still waiting for room, in serving order, take back capacity a
lower class borrowed in a pool the waiting request may use: one request per environment (that
environment's newest in the pool, i.e. the VM to scale down), lowest class, lowest priority and newest
first, skipping environments reclaimed less than `interval` seconds ago. Which pool: if reclaims already
under way (ALLOCATED requests with `reclaimed_at` less than `interval` ago) will make room, nothing more is
taken; else the first pool (wanted, then tightest) where this decision's reclaims make it fit; else the
first pool where it would fit once every lower-class allocation there came back, taking what the
one-per-environment limit allows now (the rest follows in later minutes; without this, an environment
holding several small borrowed VMs would block a larger request forever). Nothing is reclaimed for a
request that would not fit even then. Room a reclaim frees is counted for its request only, so a second
waiting request does not count on it. What this guarantees, stated as tested: run minute after minute
(reclaims land, allocation runs) until reclaim orders nothing, the first request waiting for room is then
placed, or no pool it may use would have room for it even if every lower class gave back all it holds
there: it never waits for a lower class it could displace.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from functions.gs.model import ALLOCATED, CLASSES, PEND, Pool, Request, ServiceQuota, Size, rank

PoolUse = dict[str, Size]
ServiceUse = dict[str, Size]


def usage(requests: Iterable[Request]) -> tuple[PoolUse, ServiceUse]:
    """(per pool, per service) capacity held by the ALLOCATED requests; names with nothing held are absent."""
    per_pool: PoolUse = {}
    per_service: ServiceUse = {}
    for req in requests:
        if req.status != ALLOCATED:
            continue
        if req.pool:
            per_pool[req.pool] = per_pool.get(req.pool, Size()) + req.size
        per_service[req.service] = per_service.get(req.service, Size()) + req.size
    return per_pool, per_service


def change(old: Request | None, new: Request) -> list[tuple[str, str, Size]]:
    """How counters move when `old` (None: new request) becomes `new`: [("pool"|"service", name, delta)].

    Applying these to counters that equal usage(before) gives usage(after); a Redis-side check can
    recompute with usage() and compare.
    """
    out: list[tuple[str, str, Size]] = []
    for req, sign in ((old, -1), (new, 1)):
        if req is None or req.status != ALLOCATED:
            continue
        delta = Size(sign * req.vcpus, sign * req.memory)
        if req.pool:
            out.append(("pool", req.pool, delta))
        out.append(("service", req.service, delta))
    return out


def class_rank(req: Request, services: Mapping[str, ServiceQuota]) -> int:
    """The request's class order: its service's current class, else its own recorded class, else -1."""
    svc = services.get(req.service)
    cls = svc.cls if svc is not None else req.cls
    return CLASSES.index(cls) if cls in CLASSES else -1


def serve_key(req: Request, services: Mapping[str, ServiceQuota]) -> tuple[int, int, float, int]:
    """Sort key of the serving order: class (higher first), priority (higher first), created, id."""
    return (-class_rank(req, services), -req.priority, req.created, req.id)


def apply(requests: Iterable[Request], updates: Iterable[Request]) -> list[Request]:
    """`requests` with each one replaced by the update of the same id (others kept), sorted by id."""
    merged = {req.id: req for req in requests}
    merged.update({req.id: req for req in updates})
    return [merged[key] for key in sorted(merged)]


@dataclass
class _State:
    """One serving pass: free room per pool, usage per service, holds, and who waits for room."""

    pools: Mapping[str, Pool]
    services: Mapping[str, ServiceQuota]
    free: dict[str, Size]
    used: ServiceUse
    kept: dict[str, list[Size]]                 # per pool, capacity held per class rank (old and new)
    held: dict[str, int] = field(default_factory=dict)
    blocked: list[Request] = field(default_factory=list)
    zone_pools: dict[tuple[str, int], list[Pool]] = field(default_factory=dict)

    def take(self, req: Request, pool: Pool) -> None:
        self.free[pool.name] = self.free[pool.name] - req.size
        self.used[req.service] = self.used.get(req.service, Size()) + req.size
        self.keep(pool.name, class_rank(req, self.services), req.size)

    def keep(self, pool: str, level: int, size: Size) -> None:
        if pool in self.kept and level >= 0:
            self.kept[pool][level] = self.kept[pool][level] + size


def _check_inputs(pools: Mapping[str, Pool], services: Mapping[str, ServiceQuota],
                  requests: Iterable[Request]) -> list[Request]:
    """The requests as a list; ValueError for a duplicate id, a misnamed entry or an unknown class."""
    for name, pool in pools.items():
        if name != pool.name:
            raise ValueError(f"pools[{name!r}] is named {pool.name!r}")
        rank(pool.cls)
        if pool.vcpus_total < 0 or pool.mem_total < 0:
            raise ValueError(f"pool {name!r}: totals must not be negative")
    for name, svc in services.items():
        if name != svc.name:
            raise ValueError(f"services[{name!r}] is named {svc.name!r}")
        rank(svc.cls)
    out: list[Request] = []
    seen: set[int] = set()
    for req in requests:
        if req.id in seen:
            raise ValueError(f"request id {req.id} is given twice")
        seen.add(req.id)
        out.append(req)
    return out


def _start(pools: Mapping[str, Pool], services: Mapping[str, ServiceQuota], reqs: list[Request]) -> _State:
    pool_use, service_use = usage(reqs)
    free = {name: pool.total - pool_use.get(name, Size()) for name, pool in pools.items()}
    st = _State(pools, services, free, dict(service_use), {name: [Size()] * len(CLASSES) for name in pools})
    for req in reqs:
        if req.status == ALLOCATED and req.pool:
            st.keep(req.pool, class_rank(req, services), req.size)
    return st


def _refusal(req: Request, st: _State) -> str:
    """Why the request cannot be placed whatever the room (unknown service or pool, quota), or ""."""
    svc = st.services.get(req.service)
    if svc is None:
        return f"service {req.service!r} has no entry in SERVICES of the global configuration"
    if req.pool_wanted not in st.pools:
        return (f"pool {req.pool_wanted!r} is not in SHAREDPOOLS "
                "(the environment's endpoint must name a shared pool)")
    used = st.used.get(req.service, Size())
    if used.vcpus + req.vcpus > svc.max_vcpus:
        return f"service quota: {used.vcpus}/{svc.max_vcpus} vCPUs in use, this request needs {req.vcpus}"
    if used.mem + req.memory > svc.max_mem:
        return f"service quota: {used.mem}/{svc.max_mem} MB memory in use, this request needs {req.memory}"
    return ""


def _by_class(req: Request, st: _State) -> list[Pool]:
    """Pools of the wanted pool's zone whose class is at least the service's, by name."""
    key = (st.pools[req.pool_wanted].zone, class_rank(req, st.services))
    if key not in st.zone_pools:
        st.zone_pools[key] = [p for _, p in sorted(st.pools.items()) if p.zone == key[0] and rank(p.cls) >= key[1]]
    return st.zone_pools[key]


def _candidates(req: Request, st: _State) -> list[Pool]:
    """The pools the request may use now: by zone and class, not held for a waiting higher class."""
    level = class_rank(req, st.services)
    return [p for p in _by_class(req, st) if st.held.get(p.name, -1) <= level]


def _ordered(req: Request, pools: list[Pool], room: Mapping[str, Size]) -> list[Pool]:
    """Preference order: the wanted pool, then the tightest fit (least room in vCPUs), then by name."""
    return sorted(pools, key=lambda p: (p.name != req.pool_wanted, room[p.name].vcpus, p.name))


def _could_fit(req: Request, pool: Pool, st: _State) -> bool:
    """True when the request would fit in the pool if every allocation of a lower class were given back."""
    kept = sum(st.kept[pool.name][class_rank(req, st.services):], Size())
    return req.size.fits_in(pool.total - kept)


def _no_room(req: Request, st: _State) -> str:
    """Why a request that passed `_refusal` found no pool; registers it as waiting (holds) when it could
    fit somewhere after lower classes gave capacity back."""
    level = class_rank(req, st.services)
    svc_cls, zone = CLASSES[level], st.pools[req.pool_wanted].zone
    pools = _by_class(req, st)
    need = f"{req.vcpus} vCPUs, {req.memory} MB"
    if not pools:
        return f"no pool of class {svc_cls} or better in zone {zone}"
    if not any(req.size.fits_in(p.total) for p in pools):
        return f"no pool of class {svc_cls} or better in zone {zone} is large enough for {need}"
    reason = f"no pool with room in zone {zone} for class {svc_cls} (needs {need})"
    held = [p.name for p in pools if st.held.get(p.name, -1) > level and req.size.fits_in(st.free[p.name])]
    if held:
        reason += f"; {', '.join(held)} held for waiting higher-class requests"
    holding = [p for p in pools if _could_fit(req, p, st)]
    for pool in holding:
        st.held[pool.name] = max(st.held.get(pool.name, -1), level)
    if holding:
        st.blocked.append(req)
    return reason


def _serve(pools: Mapping[str, Pool], services: Mapping[str, ServiceQuota],
           reqs: list[Request]) -> tuple[list[Request], _State]:
    """One serving pass over the PEND requests: their updated versions (serving order) and the end state."""
    st = _start(pools, services, reqs)
    out: list[Request] = []
    for req in sorted((r for r in reqs if r.status == PEND), key=lambda r: serve_key(r, services)):
        reason = _refusal(req, st)
        if not reason:
            fitting = [p for p in _candidates(req, st) if req.size.fits_in(st.free[p.name])]
            if fitting:
                pool = _ordered(req, fitting, st.free)[0]
                st.take(req, pool)
                out.append(replace(req, status=ALLOCATED, pool=pool.name, reason=""))
                continue
            reason = _no_room(req, st)
        out.append(replace(req, reason=reason, pool=None))
    return out, st


def allocate(pools: Mapping[str, Pool], services: Mapping[str, ServiceQuota],
             requests: Iterable[Request]) -> list[Request]:
    """The decision for every PEND request, in serving order: ALLOCATED with `pool` set, or still PEND with
    `reason` saying why. Other requests only count for usage. Pure; ValueError on inconsistent input."""
    reqs = _check_inputs(pools, services, requests)
    return _serve(pools, services, reqs)[0]


@dataclass(frozen=True)
class Reclaim:
    """Give back `victim` (an ALLOCATED request: scale its environment down by one VM) so that request
    `waiting` fits in `pool`. `reason` is the event text."""

    victim: Request
    waiting: int
    pool: str
    reason: str


def _last_reclaims(requests: list[Request], last: Mapping[str, float] | None) -> dict[str, float]:
    """Latest reclaim time per envid, from the given map and the requests' `reclaimed_at`."""
    out = dict(last or {})
    for req in requests:
        if req.reclaimed_at is not None:
            out[req.envid] = max(out.get(req.envid, req.reclaimed_at), req.reclaimed_at)
    return out


def _victims(in_pool: list[Request], level: int, st: _State, skip_envs: set[str],
             skip_ids: set[int]) -> list[Request]:
    """Reclaimable requests among the pool's ALLOCATED ones, of classes below `level`: each environment's
    newest, in taking order (lowest class, lowest priority, newest first)."""
    newest: dict[str, Request] = {}
    for req in in_pool:
        if req.id not in skip_ids and req.envid not in skip_envs and class_rank(req, st.services) < level:
            best = newest.get(req.envid)
            if best is None or (req.created, req.id) > (best.created, best.id):
                newest[req.envid] = req
    return sorted(newest.values(),
                  key=lambda r: (class_rank(r, st.services), r.priority, -r.created, -r.id))


def _class_name(req: Request, st: _State) -> str:
    level = class_rank(req, st.services)
    return CLASSES[level] if level >= 0 else "unknown class"


@dataclass
class _Taking:
    """One reclaim decision: the pass's end state, allocations by pool, room once reclaims land
    (`future`, minus what earlier waiters count on), environments and requests already reclaimed."""

    st: _State
    by_pool: dict[str, list[Request]]
    future: dict[str, Size]
    cool: set[str]
    taken: set[int]

    def reason(self, victim: Request, waiting: Request, pool: Pool, partial: bool) -> str:
        text = (f"reclaim request {victim.id} ({victim.vcpus} vCPUs, {victim.memory} MB) of env {victim.envid} "
                f"(service {victim.service}, {_class_name(victim, self.st)}) borrowed from pool {pool.name} "
                f"({pool.cls}) for request {waiting.id} of env {waiting.envid} "
                f"(service {waiting.service}, {_class_name(waiting, self.st)})")
        return text + ("; more to follow, one VM per environment per interval" if partial else "")

    def pick(self, waiting: Request, pool: Pool) -> tuple[list[Request], Size]:
        """Victims allowed now in `pool`, taken until `waiting` fits (or none are left), and the room then."""
        room, picks = self.future[pool.name], []
        for victim in _victims(self.by_pool.get(pool.name, []), class_rank(waiting, self.st.services),
                               self.st, self.cool, self.taken):
            if waiting.size.fits_in(room):
                break
            picks.append(victim)
            room = room + victim.size
        return picks, room

    def later(self, waiting: Request, pool: Pool, picks: list[Request]) -> Size:
        """What lower classes still hold in `pool` beyond `picks` and reclaims under way (later minutes)."""
        level, skip = class_rank(waiting, self.st.services), self.taken | {v.id for v in picks}
        return sum((r.size for r in self.by_pool.get(pool.name, [])
                    if r.id not in skip and class_rank(r, self.st.services) < level), Size())

    def commit(self, waiting: Request, pool: Pool, picks: list[Request], room: Size,
               partial: bool) -> list[Reclaim]:
        self.future[pool.name] = room - waiting.size
        self.cool.update(v.envid for v in picks)
        self.taken.update(v.id for v in picks)
        return [Reclaim(v, waiting.id, pool.name, self.reason(v, waiting, pool, partial)) for v in picks]


def _cover(waiting: Request, take: _Taking) -> list[Reclaim]:
    """The reclaims for one waiting request: none if room already on its way covers it; else those that
    make it fit in its first pool where that is possible now; else, in its first pool where it would fit
    once every lower-class allocation there came back, those the per-environment limit allows now."""
    pools = _ordered(waiting, _candidates(waiting, take.st), take.future)
    for pool in pools:
        if waiting.size.fits_in(take.future[pool.name]):
            return take.commit(waiting, pool, [], take.future[pool.name], False)
    plans = [(pool, *take.pick(waiting, pool)) for pool in pools]
    for pool, picks, room in plans:
        if waiting.size.fits_in(room):
            return take.commit(waiting, pool, picks, room, False)
    for pool, picks, room in plans:
        if picks and waiting.size.fits_in(room + take.later(waiting, pool, picks)):
            return take.commit(waiting, pool, picks, room, True)
    return []


def reclaim(pools: Mapping[str, Pool], services: Mapping[str, ServiceQuota], requests: Iterable[Request],
            now: float, last_reclaim: Mapping[str, float] | None = None, interval: float = 60.0) -> list[Reclaim]:
    """The reclaims to order now (see the module text), in serving order of the requests they serve.

    `last_reclaim` maps envid to the time it was last reclaimed (merged with the requests' `reclaimed_at`).
    The caller sends each victim's environment a scale-down and stores `reclaimed_at=now` on the victim.
    Pure; the same inputs give the same list.
    """
    reqs = _check_inputs(pools, services, requests)
    _, st = _serve(pools, services, reqs)
    take = _Taking(st, {}, dict(st.free), set(), set())
    for req in reqs:
        if req.status != ALLOCATED or req.pool not in take.future:
            continue
        take.by_pool.setdefault(req.pool, []).append(req)
        if req.reclaimed_at is not None and now - req.reclaimed_at < interval:
            take.future[req.pool] = take.future[req.pool] + req.size
            take.taken.add(req.id)
    take.cool = {env for env, when in _last_reclaims(reqs, last_reclaim).items() if now - when < interval}
    out: list[Reclaim] = []
    for waiting in st.blocked:
        out += _cover(waiting, take)
    return out


def plan(pools: Mapping[str, Pool], services: Mapping[str, ServiceQuota], requests: Iterable[Request], now: float,
         last_reclaim: Mapping[str, float] | None = None,
         interval: float = 60.0) -> tuple[list[Request], list[Reclaim]]:
    """One scheduler run: the allocation decisions (as `allocate`) and the reclaims to order on the state
    after them (as `reclaim`). Pure; the caller stores the decisions whose status or reason changed."""
    reqs = _check_inputs(pools, services, requests)
    decisions = _serve(pools, services, reqs)[0]
    return decisions, reclaim(pools, services, apply(reqs, decisions), now, last_reclaim, interval)
