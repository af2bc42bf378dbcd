"""The minute's VM refresh: what OpenNebula says about every VM Carina created, written into its record.

Per (proxy, credentials) — however many services and environments share them — a fixed few calls
(functions.cloud.one.OneClient.observe_rows): `one.vmpool.infoset` of exactly Carina's VM ids there (short bodies:
STATE, LCM_STATE, STIME and the CPU of the VM's last monitoring record; one call per 10,000 ids, to bound the
memory an answer takes). Each record gets `one_state`
(runn, unkn, fail, ..., or "missing" for a VM OpenNebula no longer has or has DONE), `vm_state` /
`lcm_state`, and its CPU figure goes to the env's env_cpu string (it changes every minute: records are
rewritten only when a state changes). Records are edited in Redis, only the fields that changed, in place, by
compare-and-set on them (functions.store.observed: a field another writer changed since the read, or an
environment a step holds, is left for the next minute).

Ownership: a VM id may be reused (a reset cloud, another installation). A record's VM is checked against its
USER_TEMPLATE tags (functions.model.ownership) the first time it is seen and whenever the VM at that id is
another one (its STIME changed): one `infoset` with full bodies of just those ids (`OneClient.owners`, in
slices of OWNER_SLICE). A VM whose tags name another owner counts as missing; a match is remembered in the
record's `checked` ("<vmid>@<STIME>"), so a steady minute asks for no full body at all. The same full body gives
the record's `one_ip` (the first NIC's IP as OpenNebula reports it: the only address a legacy callback is accepted
from); a record still without one is checked again (within the same budget) until it has one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import redis

from functions.cloud import offload
from functions.cloud.fastxml import VmRow
from functions.cloud.one import INFOSET_SLICE, OneClient, OneError, OneUnavailable, VmView, row_view
from functions.model import ownership
from functions.model.clock import Clock, system_clock
from functions.model.observation import cpu_figure, judgeable, observation
from functions.policy import VmObs
from functions.store import install, observed, policystore, tenants
from functions.upkeep import recall
from functions.upkeep.policyread import Handed, vm_obs

log = logging.getLogger("carina.refresh")

CHUNK = 500                      # environments read, judged and written per round trip
OBSERVERS = 2                    # endpoints observed at once (threads: while this process reads Redis)
OWNER_SLICE = 2000               # VM ids per full-body infoset (bounds the answer: ~6 KB a VM)
OWNER_SLICES = 10                # full-body calls per endpoint and minute at most (the rest: next minute)
Changes = dict[str, list[observed.Write]]            # envid -> [(slot, FIELDS as read, FIELDS as they become)]


@dataclass
class _Group:
    """The environments observed through one (proxy, credentials), and the VM ids their records hold."""

    envs: list[observed.EnvWhere] = field(default_factory=list)
    vmids: list[int] = field(default_factory=list)


@dataclass
class _Pending:
    """A record whose VM's tags must be checked before it is written."""

    envid: str
    service: str
    seen: observed.Seen
    view: VmView


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _groups(r: redis.Redis, mem: recall.Memory) -> dict[tuple[str, str], _Group]:
    """(proxy, credentials) -> the environments observed through them (credentials from each service's current
    configuration of the env's endpoint; the proxy from the env's create-time spec, remembered). Reads env
    fields of the envs the memory does not know only."""
    groups: dict[tuple[str, str], _Group] = {}
    for service in tenants.service_names(r):
        envids = policystore.service_envids(r, service)
        if not envids:
            continue
        conf = tenants.get_config(r, service) or {}
        unknown = [e for e in envids if e not in mem.where]
        for start in range(0, len(unknown), CHUNK * 4):
            mem.where.update((env.envid, env) for env in observed.where(r, unknown[start:start + CHUNK * 4])
                             if env.service)
        for envid in envids:
            env = mem.where.get(envid)
            if env is None or env.service != service or not env.proxy:
                continue
            auth = ((conf.get("ENDPOINT") or {}).get(env.endpoint) or {}).get("oneauth")
            if auth:
                groups.setdefault((env.proxy, str(auth)), _Group()).envs.append(env)
    return groups


def _read(r: redis.Redis, group: _Group, mem: recall.Memory, changed: set[str] | None, fresh: set[str]) -> int:
    """Read the records of the group's envs the memory lacks or that changed into the memory (an env a step
    holds is dropped from it: not judged this minute), note them in `fresh` and the group's VM ids. Returns the
    number of envs held."""
    wanted = [env.envid for env in group.envs if changed is None or env.envid in changed or env.envid not in mem.stored]
    held = 0
    for chunk in _chunks(wanted, CHUNK * 4):
        for envid, rows in observed.records(r, chunk).items():
            fresh.add(envid)
            if isinstance(rows, list):
                mem.stored[envid] = rows
                mem.vmids[envid] = tuple(int(seen.vmid) for seen in rows if seen.vmid.isdigit())
            else:
                mem.stored.pop(envid, None)
                held += 1
    group.vmids = sorted(set(chain.from_iterable(mem.vmids.get(env.envid, ()) for env in group.envs
                                                 if env.envid in mem.stored)))
    return held


def _judge(seen: observed.Seen, row: VmRow | None, env: observed.EnvWhere, changes: Changes,
           pending: list[_Pending]) -> tuple[recall.Mark | None, int]:
    """Judge one record against its VM's row (None: not in the pool): its write in `changes`, or in `pending`
    when its VM must first prove its tags. Returns (its mark, None when pending; 1 if its CPU figure is new)."""
    view = row_view(row) if row is not None else None
    vmid = int(seen.vmid)
    unchecked = seen.checked != f"{vmid}@{view.stime}" if view is not None else False
    if view is not None and view.state != 6 and (unchecked or not seen.one_ip):
        pending.append(_Pending(env.envid, env.service, seen, view))
        return None, 0
    cpu = cpu_figure(seen, view, row.cpu if row is not None else None)
    return (row[:4] if row is not None else (vmid, None)), _note(changes, env.envid, seen, observation(seen, view), cpu)


def _figure(figs: observed.Figures, seen: observed.Seen) -> None:
    """Add the record's CPU figure, as its decoded record holds it now, to its env's figures."""
    doc = seen.doc
    if doc is not None:
        vmid, cpu = doc.get("vmid"), doc.get("cpu")
        if type(vmid) is int and type(cpu) in (int, float):
            figs[seen.slot] = [vmid, cpu]


def _note(changes: Changes, envid: str, seen: observed.Seen, new: tuple[str, ...] | None, cpu: float | None) -> int:
    """Note the record's write, and make its decoded record (`seen.doc`: the policy pass and the CPU figures
    read it) what it writes and its new CPU figure (None: none). Returns 1 if the figure is new, else 0."""
    if new is not None:
        changes.setdefault(envid, []).append((seen.slot, seen.written(), new))
        if seen.doc is not None:
            seen.doc.update(one_state=new[1], vm_state=_int(new[2]), lcm_state=_int(new[3]), checked=new[4],
                            one_ip=new[5])
    if cpu is None or seen.doc is None:
        return 0
    seen.doc["cpu"] = cpu
    return 1


def _figures(stored: Sequence[observed.Seen]) -> observed.Figures:
    """An env's CPU figures as its decoded records hold them now: {slot: [vmid, cpu]}."""
    figs: observed.Figures = {}
    for seen in stored:
        _figure(figs, seen)
    return figs


def _settle(r: redis.Redis, mem: recall.Memory, one: OneClient, pending: list[_Pending],
            rows: dict[int, VmRow]) -> tuple[Changes, dict[str, observed.Figures], int]:
    """Check the tags of the pending records' VMs (full bodies, OWNER_SLICE ids a call, at most OWNER_SLICES
    calls) and make their writes: a VM of another owner (or gone meanwhile) is missing; a match is remembered
    in `checked`. Records past the budget, or of a slice OpenNebula did not answer, are left unwritten for the
    next minute (after an upgrade every record is checked once: the budget spreads that over minutes)."""
    install_id = install.known_installation_id(r)
    changes: Changes = {}
    touched: set[str] = set()
    for part in _chunks(pending[:OWNER_SLICE * OWNER_SLICES], OWNER_SLICE):
        try:
            owners = one.owners([p.view.vmid for p in part])
        except (OneUnavailable, OneError) as exc:
            log.warning("refresh: tags of %d VMs at %s: %s", len(part), one.proxy, exc)
            continue
        recs = observed.full_records(r, [(p.envid, p.seen.slot) for p in part])
        for p in part:
            rec, found = recs.get((p.envid, p.seen.slot)), owners.get(p.view.vmid)
            if rec is None:
                continue
            tags = ownership.vm_tags(p.service, install_id, p.envid, p.seen.slot, str(rec.get("nonce") or ""),
                                     str(rec.get("role") or ""))
            if found is not None and found.stime == p.view.stime and not ownership.mismatch(found.user_template, tags):
                row = rows.get(p.view.vmid)
                if _note(changes, p.envid, p.seen, observation(p.seen, found, f"{p.view.vmid}@{p.view.stime}"),
                         cpu_figure(p.seen, found, row.cpu if row is not None else None)):
                    touched.add(p.envid)
            else:
                _note(changes, p.envid, p.seen, observation(p.seen, None), None)
    return changes, {envid: _figures(mem.stored.get(envid, ())) for envid in touched}, len(touched)


def _write(r: redis.Redis, changes: Changes, figures: dict[str, observed.Figures], new: int,
           stats: dict[str, int], unsure: set[str]) -> None:
    """Write the records that changed (compare-and-set; an env a step now holds is counted busy) and the CPU
    figures of the envs not held (`new`: how many figures are new); note in `unsure` the envs whose writes did
    not all land."""
    done = observed.write(r, changes)
    stats["changed"] += sum(n for n in done.values() if n > 0)
    stats["busy"] += sum(1 for n in done.values() if n < 0)
    observed.write_cpu(r, {envid: figs for envid, figs in figures.items() if done.get(envid, 0) >= 0})
    stats["cpu"] += new
    unsure.update(envid for envid, items in changes.items() if done.get(envid) != len(items))


def _int(text: str) -> int | None:
    return int(text) if text.lstrip("-").isdigit() else None


def _handover(mem: recall.Memory, obs: dict[str, tuple[VmObs | None, ...]], envids: Iterable[str],
              skip: set[str]) -> dict[str, Handed]:
    """envid -> its decoded records as this minute's writes left them, with what the policies see of them when
    the refresh made it (else the pass does), for each of `envids` observed, not held and not in `skip` (envs
    whose writes did not all land, or already handed over: the policy pass reads the first again)."""
    out = {}
    for envid in envids:
        rows = mem.stored.get(envid)
        if rows is not None and envid not in skip:
            seen_as = obs.get(envid)
            out[envid] = Handed([seen.doc for seen in rows if seen.doc is not None],
                                None if seen_as is None else tuple(filter(None, seen_as)))
    return out


def _observe(one_factory: Callable[[str, str], OneClient], key: tuple[str, str], vmids: list[int],
             clock: Clock) -> tuple[OneClient, float, Any]:
    """One group's observation (OneClient.observe_rows; with the real client, a big one by a helper process:
    functions.cloud.offload): (client, time taken, vmid -> row, or the exception it raised)."""
    one = one_factory(*key)
    taken = clock()
    try:
        return one, taken, offload.observe_rows(*key, vmids) if one_factory is OneClient else one.observe_rows(vmids)
    except (OneUnavailable, OneError) as exc:
        return one, taken, exc


def refresh_vms(r: redis.Redis, clock: Clock = system_clock,
                one_factory: Callable[[str, str], OneClient] = OneClient) -> dict[str, Any]:
    """Refresh every judgeable VM record (see the module). Returns counts: endpoints observed, records
    changed, CPU figures written, environments busy (a step held them), errors (endpoints that did not
    answer), XML-RPC calls, records left unchecked for the next minute (past the full-body budget).
    Safe to run twice."""
    return refresh(r, clock, one_factory)[0]


def refresh(r: redis.Redis, clock: Clock = system_clock, one_factory: Callable[[str, str], OneClient] = OneClient,
            meanwhile: Callable[[], None] | None = None,
            each: Callable[[dict[str, Handed]], None] | None = None) -> tuple[dict[str, Any], dict[str, Handed]]:
    """`refresh_vms`, and the records as they are after its writes (`_handover`: the policy pass that follows in
    the same tick need not read them again). What the last minutes read is remembered
    (functions.upkeep.recall): only the records written since are read again. Each group's records are read,
    then OpenNebula is asked about them in a thread (OBSERVERS at once) while the next group's records are read:
    it renders its answer while this process reads Redis; `meanwhile` (e.g. the policy pass's own reads) runs
    once every group is asked, before the first answer is used. Answers are used as they come; `each` is given
    each group's records once they are written (the policy pass decides those envs while the other groups are
    still asked), and the records it was given are not handed over again at the end. Safe to run twice."""
    stats = {"endpoints": 0, "changed": 0, "cpu": 0, "busy": 0, "errors": 0, "calls": 0, "unchecked": 0,
             "reread": 0}
    mem, changed, gen = recall.recall(r, int(clock() // 60))
    groups = _groups(r, mem)
    run = _Run(r, mem, set(), set(), {}, {}, stats)
    given: set[str] = set()
    with ThreadPoolExecutor(max_workers=OBSERVERS, thread_name_prefix="observe") as pool:
        asked = {}
        for key, group in groups.items():
            stats["busy"] += _read(r, group, mem, changed, run.fresh)
            if group.vmids:
                asked[pool.submit(_observe, one_factory, key, group.vmids, clock)] = key
        if meanwhile is not None:
            meanwhile()
        for future in as_completed(asked):
            group = groups[asked[future]]
            run.apply(asked[future], group, future.result())
            if each is not None:
                envids = [env.envid for env in group.envs]
                try:
                    each(_handover(mem, run.obs, envids, run.unsure))
                    given.update(envids)
                except Exception:  # noqa: BLE001 - the refresh goes on; these records are handed over at the end
                    log.exception("refresh: handing over the records of %s", asked[future][0])
    stats["reread"] = len(run.fresh)
    mem.judged, mem.obs = run.judged, run.obs
    recall.settle(mem, gen, {env.envid for group in groups.values() for env in group.envs}, run.unsure)
    return stats, _handover(mem, mem.obs, mem.stored, run.unsure | given)


@dataclass
class _Run:
    """One refresh's working state: the memory, the envs read this minute, the envs whose writes did not all
    land, the records judged as their VM is and as the policies see them (recall.Memory), the counts."""

    r: redis.Redis
    mem: recall.Memory
    fresh: set[str]
    unsure: set[str]
    judged: dict[str, recall.Marks]
    obs: dict[str, tuple[VmObs | None, ...]]
    stats: dict[str, int]

    def apply(self, key: tuple[str, str], group: _Group, observed_: tuple[OneClient, float, Any]) -> None:
        """Judge and write one group's records from its observation (an endpoint that did not answer: an error;
        its records stay as they are, judged in full next minute)."""
        one, taken, seen = observed_
        stats = self.stats
        if isinstance(seen, Exception):
            log.warning("refresh: endpoint %s: %s", key[0], seen)
            stats["errors"] += 1
            return
        rows = seen
        stats["endpoints"] += 1
        stats["calls"] += (len(group.vmids) + INFOSET_SLICE - 1) // INFOSET_SLICE
        pending: list[_Pending] = []
        for chunk in _chunks(group.envs, CHUNK):
            _write(self.r, *self.judge_chunk(chunk, rows, taken, pending), stats, self.unsure)
        if pending:
            stats["calls"] += min(OWNER_SLICES, (len(pending) + OWNER_SLICE - 1) // OWNER_SLICE)
            stats["unchecked"] += max(0, len(pending) - OWNER_SLICE * OWNER_SLICES)
            _write(self.r, *_settle(self.r, self.mem, one, pending, rows), stats, self.unsure)

    def judge_chunk(self, envs: Sequence[observed.EnvWhere], rows: dict[int, VmRow], taken: float,
                    pending: list[_Pending]) -> tuple[Changes, dict[str, observed.Figures], int]:
        """The writes of a chunk's records, the CPU figures of the envs observed (written whole) and how many are
        new; records whose VM must first prove its tags go to `pending`. A record not read again this minute whose
        VM is as when it was last judged only gets its CPU figure. Notes each env's marks (recall.Marks) and, but
        for an env with a pending record, its records as the policies see them (while each is at hand)."""
        changes: Changes = {}
        figures: dict[str, observed.Figures] = {}
        new = 0
        for env in envs:
            envid = env.envid
            stored = self.mem.stored.get(envid)
            if not stored:
                continue
            prev = None if envid in self.fresh else self.mem.judged.get(envid)
            if prev is not None and len(prev) != len(stored):
                prev = None
            before = self.mem.obs.get(envid) if prev is not None else None
            figures[envid] = figs = {}
            marks: list[recall.Mark | None] = []
            seen_as: list[VmObs | None] = []
            waiting = len(pending)
            for i, seen in enumerate(stored):
                mark = prev[i] if prev is not None else None
                doc = seen.doc
                if mark is not None and doc is not None:
                    row = rows.get(mark[0])
                    if (mark[1] is None) if row is None else (row[:4] == mark):     # as when judged: its CPU only
                        cpu = doc.get("cpu")
                        if row is not None and row.cpu is not None and row.state != 6 and cpu != row.cpu:
                            doc["cpu"] = cpu = row.cpu
                            new += 1
                        if type(cpu) in (int, float):
                            figs[seen.slot] = [mark[0], cpu]
                        marks.append(mark)
                        last = before[i] if before is not None else None
                        if last is None or type(cpu) not in (int, float):
                            last = vm_obs(doc)
                        elif last.cpu != cpu:
                            last = last.with_cpu(cpu)     # the record is as when `last` was made but for its CPU
                        seen_as.append(last)
                        continue
                mark = None
                if judgeable(seen, taken):
                    mark, fresh_figure = _judge(seen, rows.get(int(seen.vmid)), env, changes, pending)
                    new += fresh_figure
                marks.append(mark)
                _figure(figs, seen)
                seen_as.append(vm_obs(doc) if doc is not None else None)
            self.judged[envid] = tuple(marks)
            if len(pending) == waiting:
                self.obs[envid] = tuple(seen_as)
        return changes, figures, new
