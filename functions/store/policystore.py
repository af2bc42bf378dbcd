"""What the minute's policy pass reads and writes in Redis, in batches: environment fields, VM records and op
guards (pipelined), the state of the jobs that matter, and the policy state written back by compare-and-set.

The policy state lives in the environment hash (`policy_status`, `info`, `metrics`, `policy_source`, `pol_*`):
it survives restarts with the rest of the environment. Every write checks that `policy_status` and
`pol_minute` still hold the values read (Lua, see functions/store/scripts.py), so a create ending meanwhile
(INIT -> ACTIVE) or a second pass for the same minute is never overwritten, and a deleted environment is never
resurrected.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
import redis

from functions.model.clock import Clock
from functions.store import envstore, keys, observed, scripts


@dataclass(frozen=True)
class EnvRead:
    """One environment as the policy pass reads it: `fields` (the requested env fields, None if absent),
    `vms` (every VM record, decoded JSON dicts), `holder` (the jobid holding the op guard, or None)."""

    envid: str
    fields: dict[str, str | None]
    vms: list[dict[str, Any]]
    holder: str | None


def service_envids(r: redis.Redis, service: str) -> list[str]:
    """Every envid of `service`, ascending. Read-only."""
    return [str(e) for e in r.zrange(keys.service_envs(service), 0, -1)]


def read_heads(r: redis.Redis, envids: Sequence[str], fields: Sequence[str]) -> list[EnvRead]:
    """The requested fields and op guard of each env, without its VM records (`vms` empty): one script call
    (`policy_heads`). An env deleted meanwhile comes back with every field None. Read-only."""
    if not envids:
        return []
    heads = scripts.run(r, "policy_heads", [k for envid in envids for k in (keys.env(envid), keys.env_op(envid))],
                        list(fields))
    width = len(fields) + 1
    out = []
    for i, envid in enumerate(envids):
        head = heads[i * width:(i + 1) * width]
        out.append(EnvRead(envid, {f: _text(v) for f, v in zip(fields, head, strict=False)}, [],
                           _text(head[-1]) or None))
    return out


def read_records(r: redis.Redis, envids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """envid -> its VM records, decoded by orjson, each with its VM's CPU figure from env_cpu (one pipelined
    round trip; an unreadable record is skipped, a deleted env has none). Read-only."""
    if not envids:
        return {}
    with r.pipeline(transaction=False) as p:
        for envid in envids:
            p.hvals(keys.env_vms(envid))
            p.get(keys.env_cpu(envid))
        replies = iter(p.execute())
    out = {}
    for envid in envids:
        out[envid] = records = _records(next(replies))
        _join_cpu(records, next(replies))
    return out


def read_envs(r: redis.Redis, envids: Sequence[str], fields: Sequence[str],
              known: Mapping[str, list[dict[str, Any]]] | None = None) -> list[EnvRead]:
    """read_heads with each env's VM records: those in `known` (the minute refresh just read and wrote them),
    the others read (read_records). Read-only."""
    known = known or {}
    heads = read_heads(r, envids, fields)
    found = read_records(r, [envid for envid in envids if envid not in known])
    return [replace(head, vms=known[head.envid] if head.envid in known else found[head.envid]) for head in heads]


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _records(texts: list[Any]) -> list[dict[str, Any]]:
    """The decoded records (JSON objects) of an env's stored texts; an unreadable one is skipped."""
    try:
        found = orjson.loads(f"[{','.join(texts)}]" if texts and isinstance(texts[0], str) else
                             b"[" + b",".join(texts) + b"]")
    except orjson.JSONDecodeError:               # one record is not JSON: decode them one by one
        found = []
        for text in texts:
            try:
                found.append(orjson.loads(text))
            except orjson.JSONDecodeError:
                continue
    return [rec for rec in found if isinstance(rec, dict)]


def _join_cpu(records: list[dict[str, Any]], text: Any) -> None:
    """Give each decoded record the CPU figure env_cpu (`text`) holds for its own VM (changes the dicts)."""
    figures = observed.cpu_figures(text)
    if not figures:
        return
    for rec in records:
        figure = observed.cpu_of(figures, rec.get("slot"), rec.get("vmid")) if rec.get("vmid") is not None else None
        if figure is not None:
            rec["cpu"] = figure


def job_states(r: redis.Redis, jobids: Iterable[str]) -> dict[str, tuple[str | None, str | None]]:
    """jobid -> (status, end) for each job (None, None when the job does not exist): one script call
    (`job_states`). Read-only."""
    wanted = sorted({j for j in jobids if j})
    if not wanted:
        return {}
    flat = [_text(v) for v in scripts.run(r, "job_states", [keys.job(jobid) for jobid in wanted])]
    return {jobid: (flat[2 * i], flat[2 * i + 1]) for i, jobid in enumerate(wanted)}


def specs(r: redis.Redis, envids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """envid -> its decoded spec snapshot (only the envs asked for; {} when absent or unreadable). Read-only."""
    wanted = list(dict.fromkeys(envids))
    with r.pipeline(transaction=False) as p:
        for envid in wanted:
            p.hget(keys.env(envid), "spec")
        out: dict[str, dict[str, Any]] = {}
        for envid, text in zip(wanted, p.execute(), strict=True):
            try:
                spec = json.loads(text) if text else {}
            except ValueError:
                spec = {}
            out[envid] = spec if isinstance(spec, dict) else {}
        return out


@dataclass(frozen=True)
class StateWrite:
    """The policy fields to write into one env, if its policy_status / pol_minute still read `expect`."""

    envid: str
    expect: tuple[str, str]
    fields: Mapping[str, str]


def write_states(r: redis.Redis, writes: Sequence[StateWrite]) -> list[bool]:
    """Compare-and-set each env's policy fields (one Lua call for the whole batch). Returns which were written.

    Safe to run twice: the second run finds pol_minute changed and writes nothing.
    """
    if not writes:
        return []
    items = [[w.expect[0], w.expect[1], {name: str(value) for name, value in w.fields.items()}] for w in writes]
    done = scripts.run(r, "policy_write", [keys.env(w.envid) for w in writes], [json.dumps(items)])
    return [bool(x) for x in done]


@dataclass(frozen=True)
class JobStart:
    """A policy job to start: `env` has envid, service, name; `fields` are the env's new policy and op fields,
    `expect` the (policy_status, pol_minute) they were decided from; `job_extra` goes into the job hash."""

    env: Mapping[str, str]
    jobid: str
    job_type: str
    expect: tuple[str, str]
    fields: Mapping[str, str]
    job_extra: Mapping[str, str]


def start_jobs(r: redis.Redis, starts: Sequence[JobStart], clock: Clock) -> list[bool]:
    """For each start, at once: write the policy state + the env's op fields + the job (origin policy) + the
    in-flight mark, claiming the op guard (free, or held by a job that ended); nothing is written for a start
    (False) when another operation holds the guard or the policy state no longer reads `expect`. Two pipelined
    round trips for all (the guard holders, then one script call each). Safe to run twice (the second finds
    pol_minute changed)."""
    if not starts:
        return []
    with r.pipeline(transaction=False) as p:
        for start in starts:
            p.get(keys.env_op(str(start.env["envid"])))
        holders = [h or "" for h in p.execute()]
    now = clock()
    with r.pipeline(transaction=False) as p:
        for start, holder in zip(starts, holders, strict=True):
            envid, service = str(start.env["envid"]), str(start.env["service"])
            job = envstore.job_fields(service, start.jobid, envid, str(start.env["name"]), start.job_type, now,
                                      origin="policy")
            job.update(start.job_extra)
            args: list[str] = [start.expect[0], start.expect[1], start.jobid, envid, holder, str(len(start.fields))]
            for name, value in (*start.fields.items(), *job.items()):
                args += [name, str(value)]
            scripts.run(p, "policy_start", [keys.env(envid), keys.env_op(envid), keys.job(start.jobid),
                                            keys.service_jobs(service), keys.inflight(),
                                            keys.job(holder or start.jobid)], args)
        return [bool(found) for found in p.execute()]


def add_events(r: redis.Redis, events: Sequence[tuple[str, str, str, str]], clock: Clock,
               extras: Sequence[Mapping[str, str]] = ()) -> None:
    """Append (envid, service, type, msg) events to the env and service streams, pipelined; `extras`, when given,
    holds each event's further fields, in the same order. Call it only for environments that exist (a deleted
    environment's stream would not expire)."""
    if not events:
        return
    now = str(clock())
    with r.pipeline(transaction=False) as p:
        for i, (envid, service, kind, msg) in enumerate(events):
            entry = {"ts": now, "envid": envid, "type": kind, "msg": msg, **(extras[i] if extras else {})}
            p.xadd(keys.env_events(envid), entry, maxlen=envstore.EVENT_MAXLEN, approximate=True)
            p.xadd(keys.service_events(service), entry, maxlen=envstore.EVENT_MAXLEN, approximate=True)
        p.execute()
