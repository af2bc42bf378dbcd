"""Environment groups in Redis: create the first member now, the others one by one as their predecessor's
CREATE ends DONE, abort the rest when one fails or the group is removed.

The group record (keys.group(gid), gid = the first member's envid) holds the members, the dependencies,
the CREATE jobids (in members order; later ones PENDING with envid "-1" until started), each member's spec
snapshot (taken and validated at the request) and the envid given to each started member. `advance` is the one
place that moves a group on; it is level-triggered and safe to run any number of times, concurrently: the
envid of member i is assigned once (Lua get-or-set), and its environment is written only while its job is
still PENDING (WATCH on the job), in the same transaction that makes the job RUNNING.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import redis
from rq import Queue

from config.settings import Settings
from functions.engine import kick as lifecycle
from functions.errors import Invalid
from functions.model import groupplan
from functions.model.clock import Clock
from functions.model.spec import build_spec
from functions.store import envstore, keys, scripts, tenants

if TYPE_CHECKING:
    from functions.engine.context import Ctx, Env

log = logging.getLogger("carina.groups")

ENDED_TTL = 7 * 86400      # a group record stays this long after its chain ended (for remove -N)



def request_group(r: redis.Redis, queue: Queue, service: str, name: str, cfg: dict[str, Any], clock: Clock,
                  settings: Settings) -> tuple[str, str]:
    """Create group `name`: its first member now (groupid "-1"), a PENDING CREATE job for each other member.

    Returns (first envid, its CREATE jobid). Every member's spec is built now, so a member that cannot be
    created is refused up front (Invalid naming it). Not idempotent: each call creates a new group.
    """
    envs = cfg.get("ENVIRONMENT") or {}
    try:
        members = groupplan.check_members(envs, name)
    except groupplan.GroupError as exc:
        raise Invalid(exc.message, exc.field) from None
    specs = [build_spec(cfg, m, service, lambda f: tenants.get_vm_file(r, service, f), settings.drain_time_default)
             for m in members]
    deps = envs[name].get("dependencies") or {}
    first = envstore.next_jobid(r)                      # members' jobs in members order
    pending = [envstore.next_jobid(r) for _ in members[1:]]

    def group_writes(p: Any, gid: str, first_job: str) -> None:
        """The group record and its PENDING jobs, in the first member's create transaction."""
        jobs = [first_job, *pending]
        now = clock()
        for i, jobid in enumerate(pending, start=1):
            envstore.job_writes(p, service, jobid, "-1", members[i], "CREATE", now, "PENDING")
        for i, jobid in enumerate(jobs):
            p.hset(keys.job(jobid), mapping={"groupid": first_job, "predjob": jobs[i - 1] if i else ""})
        p.hset(keys.group(gid), mapping={
            "service": service, "name": name, "members": json.dumps(members), "dependencies": json.dumps(deps),
            "jobs": json.dumps(jobs), "env:0": gid, **{f"spec:{i}": json.dumps(s) for i, s in enumerate(specs)}})
        p.sadd(keys.groups_active(), gid)
        p.hset(keys.env(gid), "group", gid)

    msg = f"create of group {name!r} requested: {', '.join(members)}" + (
        f" (then PENDING jobs {', '.join(pending)})" if pending else "")
    gid, first_job = envstore.create_env(r, service, members[0], specs[0], "CREATE", clock, msg=msg,
                                         extra=group_writes, jobid=first)
    lifecycle.kick(queue, gid)
    return gid, first_job


def load(r: redis.Redis, gid: str) -> dict[str, Any] | None:
    """The group record with its JSON fields decoded, or None."""
    raw = r.hgetall(keys.group(gid))
    if not raw:
        return None
    rec: dict[str, Any] = dict(raw)
    for key in ("members", "dependencies", "jobs"):
        rec[key] = json.loads(raw.get(key) or "null") or ([] if key != "dependencies" else {})
    return rec


def _statuses(r: redis.Redis, rec: dict[str, Any]) -> list[str]:
    """Each member's CREATE job status. A job no longer stored counts DONE if the member was started (retention
    trims only ended jobs), else ABORT (deleted with its service: the chain cannot go on)."""
    with r.pipeline() as p:
        for jobid in rec["jobs"]:
            p.hget(keys.job(jobid), "status")
        found = p.execute()
    return [s or ("DONE" if rec.get(f"env:{i}") else "ABORT") for i, s in enumerate(found)]


def advance(r: redis.Redis, queue: Queue, gid: str, clock: Clock) -> str:
    """Move group `gid` on: start the next member, abort the PENDING ones after a failure, or note the end.

    Returns what it did ("start <i>", "abort <i>", "wait", "end", "none"). Safe to run twice, concurrently.
    """
    rec = load(r, gid)
    if rec is None:
        r.srem(keys.groups_active(), gid)
        return "none"
    action, i = groupplan.decide(_statuses(r, rec))
    if action == "start":
        return f"start {i}" if _start_member(r, queue, gid, rec, i, clock) else "wait"
    if action == "abort":
        abort_pending(r, gid, clock, f"group member {rec['members'][i]!r} (job {rec['jobs'][i]}) did not complete")
        return f"abort {i}"
    if action == "end":
        _ended(r, gid)
    return action


def _ended(r: redis.Redis, gid: str) -> None:
    with r.pipeline() as p:
        p.srem(keys.groups_active(), gid)
        p.expire(keys.group(gid), ENDED_TTL)
        p.execute()


def abort_pending(r: redis.Redis, gid: str, clock: Clock, why: str) -> list[str]:
    """End every PENDING job of the group ABORT with `why`; returns those jobids. Safe to run twice."""
    rec = load(r, gid)
    if rec is None:
        return []
    aborted = [j for j in rec["jobs"] if r.hget(keys.job(j), "status") == "PENDING"
               and envstore.finish_job(r, j, "ABORT", clock, info=why)]
    if aborted:
        envstore.add_event(r, gid, rec["service"], "error", f"group {rec['name']!r}: jobs {', '.join(aborted)} "
                           f"aborted: {why}", clock)
        log.info("group %s: aborted %s: %s", gid, aborted, why)
    _ended(r, gid)
    return aborted


def _app_urls(r: redis.Redis, rec: dict[str, Any], upto: int) -> dict[str, str | None]:
    """member -> app_url of the members before `upto` whose environment exists (their CREATE ended DONE)."""
    urls: dict[str, str | None] = {}
    for j, member in enumerate(rec["members"][:upto]):
        envid = rec.get(f"env:{j}")
        url = r.hget(keys.env(envid), "app_url") if envid else None
        if url is not None:
            urls[member] = url
    return urls


def _start_member(r: redis.Redis, queue: Queue, gid: str, rec: dict[str, Any], i: int, clock: Clock) -> bool:
    """Write member i's environment and make its PENDING job RUNNING, once. False if someone else did."""
    member, jobid, service = rec["members"][i], rec["jobs"][i], rec["service"]
    envid = scripts.run(r, "member_envid", [keys.group(gid), keys.env_seq()], [str(i)])
    if not envid:
        return False
    urls, missing, empty = groupplan.dep_urls(member, rec["dependencies"], _app_urls(r, rec, i))
    spec = {**json.loads(rec[f"spec:{i}"]), "deps": urls}
    now = clock()
    fields = envstore.env_fields(envid, service, member, spec, jobid, now, groupid=gid)
    fields.update(group=gid, op="CREATE")
    with r.pipeline() as p:
        try:
            p.watch(keys.job(jobid))
            if p.hget(keys.job(jobid), "status") != "PENDING" or p.exists(keys.env(envid)):
                return False
            p.multi()
            p.hset(keys.env(envid), mapping=fields)
            p.zadd(keys.service_envs(service), {envid: int(envid)})
            p.hset(keys.job(jobid), mapping={"status": "RUNNING", "envid": envid, "start": now,
                                             "dependstr": groupplan.dependstr(urls)})
            p.set(keys.env_op(envid), jobid)
            p.sadd(keys.inflight(), envid)
            p.execute()
        except redis.WatchError:
            return False
    _announce(r, envid, service, rec, i, urls, missing, empty, clock)
    lifecycle.kick(queue, envid)
    return True


def _announce(r: redis.Redis, envid: str, service: str, rec: dict[str, Any], i: int, urls: dict[str, str],
              missing: list[str], empty: list[str], clock: Clock) -> None:
    """Events of a started member: the request, and each dependency skipped or passed empty."""
    jobid, name = rec["jobs"][i], rec["name"]
    passed = ", ".join(f"{k}_URL" for k in urls) or "none"
    envstore.add_event(r, envid, service, "request", f"create of {rec['members'][i]!r} (member {i + 1} of group "
                       f"{name!r}) started (job {jobid}); dependency URLs: {passed}", clock, jobid=jobid, op="CREATE")
    for dep in missing:
        envstore.add_event(r, envid, service, "error", f"dependency {dep!r} is not a created member of group "
                           f"{name!r}: no {dep.upper()}_URL passed", clock, jobid=jobid)
    for dep in empty:
        envstore.add_event(r, envid, service, "error", f"dependency {dep!r} has no app_url: "
                           f"{dep.upper()}_URL passed empty", clock, jobid=jobid)


def recheck_all(r: redis.Redis, queue: Queue, clock: Clock) -> dict[str, str]:
    """advance() every group whose chain has not ended (recovery, the minute tick). Safe to run twice."""
    done: dict[str, str] = {}
    for gid in sorted(r.smembers(keys.groups_active()), key=int):
        try:
            done[gid] = advance(r, queue, gid, clock)
        except redis.RedisError:
            raise
        except Exception:  # noqa: BLE001 - one broken group must not stop the others
            log.exception("group %s: re-check failed", gid)
    return done


def after_job(ctx: Ctx, env: Env, job_status: str) -> None:
    """Engine end hook (wired in functions.tasks): when a group member's CREATE ended, start the next member
    or abort the rest. Safe to run twice (advance is level-triggered)."""
    if env.op == "CREATE" and env.data.get("group"):
        advance(ctx.r, ctx.queue, str(env.data["group"]), ctx.clock)
