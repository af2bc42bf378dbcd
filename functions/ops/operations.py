"""What the gateway asks for: create, scale and remove requests, recorded and handed to the lifecycle.

Each request_* function records the request (job, env fields op/job/phase, in-flight mark, an event)
and kicks `functions.tasks.drive` for the environment; the lifecycle owns `phase` and every step
after that. The operation guard (guards.claim_op / take_over_op) makes a second scale a 409 across
gateways, workers and restarts; a remove pre-empts whatever runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue

from config.settings import Settings
from functions.engine.kick import kick, kick_many
from functions.errors import Busy, Conflict, Invalid, NotFound
from functions.model.clock import Clock
from functions.model.spec import build_spec
from functions.ops import groups
from functions.store import envstore, gsstore, guards, opstart, policystore, tenants

SCALE_TYPES = {"up": "SCALEUP", "down": "SCALEDOWN"}
POLICY_TYPES = ("SCALEUP", "SCALEDOWN", "RECREATE")
FINAL = ("DONE", "FAIL", "ABORT")


# ---------------------------------------------------------------- requests


def request_create(r: redis.Redis, queue: Queue, service: str, name: str, clock: Clock,
                   settings: Settings) -> tuple[str, str]:
    """Record a new environment from configuration `name` and start its CREATE. Returns (envid, jobid).

    For a group, its first member (functions.ops.groups.request_group; the others wait as PENDING jobs).

    Raises Conflict (no configuration uploaded), NotFound, Invalid. Not idempotent: each call creates one.
    """
    cfg = tenants.get_config(r, service)
    if cfg is None:
        raise Conflict("name: upload a configuration first (this service has none)", "name")
    entry = (cfg.get("ENVIRONMENT") or {}).get(name)
    if isinstance(entry, dict) and entry.get("type") == "group":
        return groups.request_group(r, queue, service, name, cfg, clock, settings)
    spec = build_spec(cfg, name, service, lambda f: tenants.get_vm_file(r, service, f), settings.drain_time_default)
    envid, jobid = envstore.create_env(r, service, name, spec, "CREATE", clock, msg=f"create of {name!r} requested")
    kick(queue, envid)
    return envid, jobid


def request_scale(r: redis.Redis, queue: Queue, service: str, envid: str, direction: str, clock: Clock) -> str:
    """Start a SCALEUP (direction "up") or SCALEDOWN ("down") of one slave. Returns the jobid.

    One atomic step (store.opstart): a refused request leaves no job, an accepted one is recorded, guarded and
    in flight together. Does not change desired_slaves: the lifecycle picks the slot when it starts the op.
    Raises NotFound, Invalid, Busy, Conflict.
    """
    op = SCALE_TYPES.get(direction)
    if op is None:
        raise Invalid("direction: must be up or down", "direction")
    env = envstore.get_env(r, envid, service)
    if env is None:
        raise NotFound(f"envid: no environment {envid}", "envid")
    holder = guards.current_op(r, envid)
    holding = (envstore.get_job(r, holder) or {}).get("status") not in (None, *FINAL) if holder else False
    if not holding and env.get("policy_status") == "INIT":      # an ended holder (a killed worker's) is none
        raise Conflict(f"envid: environment {envid} is not ready (its create did not complete: "
                       f"{env.get('status', '')})", "envid")
    word = "up" if op == "SCALEUP" else "down"
    started = opstart.start_op(r, service, envid, op, clock, f"scale {word} requested")
    if started.result == "busy":
        raise Busy(f"operation in progress (job {started.previous})", "envid")
    if started.result == "gone":
        raise NotFound(f"envid: no environment {envid}", "envid")
    kick(queue, envid)
    return started.jobid


@dataclass(frozen=True)
class PolicyRequest:
    """An operation a policy decided: `env` has envid, service, name; `kind` SCALEUP, SCALEDOWN (of `slots[0]`)
    or RECREATE (of `slots`), each in place; `expect` the (policy_status, pol_minute) it was decided from; `state`
    the policy fields written with it; `why` ends its request event."""

    env: Mapping[str, str]
    kind: str
    slots: Sequence[str]
    source: str
    expect: tuple[str, str]
    state: Mapping[str, str]
    why: str = ""


def request_policies(r: redis.Redis, queue: Queue, requests: Sequence[PolicyRequest], clock: Clock) -> list[str | None]:
    """Start each operation a policy decided with its policy state, each atomically on its own
    (functions.store.policystore.start_jobs), in a few pipelined round trips for all: the job ids, the starts,
    the request events, the drive kicks. Each claims the op guard in its atomic step (a stale
    holder whose job ended is replaced): when another operation holds it, or the state changed meanwhile, nothing
    is written for it. The job records origin=policy, its slots and the deciding policy (`source`); the engine
    takes the slots from it. Returns the jobids in order (None: not started). Safe to run twice: the second call
    finds pol_minute changed (or the guard held) and starts nothing."""
    if not requests:
        return []
    bad = next((q.kind for q in requests if q.kind not in POLICY_TYPES), None)
    if bad is not None:
        raise Invalid(f"kind: must be one of {', '.join(POLICY_TYPES)}", "kind")
    jobids = envstore.next_jobids(r, len(requests))
    now = repr(clock())
    starts = [policystore.JobStart(q.env, jobid, q.kind, q.expect,
                                   {**q.state, "op": q.kind, "job": jobid, "phase": "new", "phase_since": now},
                                   {"slots": ",".join(q.slots), "source": q.source})
              for q, jobid in zip(requests, jobids, strict=True)]
    started = policystore.start_jobs(r, starts, clock)
    done = [(q, jobid) for q, jobid, ok in zip(requests, jobids, started, strict=True) if ok]
    policystore.add_events(r, [(str(q.env["envid"]), str(q.env["service"]), "request", _request_text(q, jobid))
                               for q, jobid in done], clock,
                           [{"jobid": jobid, "op": q.kind, "origin": "policy"} for q, jobid in done])
    kick_many(queue, [str(q.env["envid"]) for q, _ in done])
    return [jobid if ok else None for jobid, ok in zip(jobids, started, strict=True)]


def request_policy(r: redis.Redis, queue: Queue, env: Mapping[str, str], kind: str, slots: Sequence[str],
                   source: str, expect: tuple[str, str], state: Mapping[str, str], clock: Clock,
                   why: str = "") -> str | None:
    """request_policies for one operation: its jobid, or None when it was not started."""
    return request_policies(r, queue, [PolicyRequest(env, kind, slots, source, expect, state, why)], clock)[0]


def _request_text(q: PolicyRequest, jobid: str) -> str:
    what = f"{q.kind} of {', '.join(q.slots)}" if q.slots else q.kind
    return f"{what} requested by the {q.source} policy (job {jobid})" + (f": {q.why}" if q.why else "")


def _remove_one(r: redis.Redis, queue: Queue, service: str, env: dict[str, Any], clock: Clock) -> str:
    envid = env["envid"]
    holder = guards.current_op(r, envid)
    running = envstore.get_job(r, holder) if holder else None
    if running and running.get("type") == "REMOVE" and running.get("status") not in FINAL:
        return str(holder)                               # already being removed: same job
    started = opstart.start_op(r, service, envid, "REMOVE", clock, "remove requested", take_over=True)
    if started.result == "gone":                         # finished removing meanwhile
        return envstore.new_job(r, service, envid, env["name"], "REMOVE", clock, status="DONE")
    previous, jobid = started.previous, started.jobid
    gsstore.cancel_pending(r, envid, clock(), f"environment removed (job {jobid})")
    if previous and envstore.finish_job(r, previous, "FAIL", clock, info=f"pre-empted by remove {jobid}"):
        envstore.add_event(r, envid, service, "preempted", f"job {previous} pre-empted by remove {jobid}", clock,
                           jobid=previous)
        if env.get("group"):                             # a member's create ended: the rest of its group aborts
            groups.advance(r, queue, str(env["group"]), clock)
    kick(queue, envid)
    return jobid


def request_remove(r: redis.Redis, queue: Queue, service: str, target: str, clock: Clock) -> list[str]:
    """Remove environment `target`, or with `-N` the group N (every env whose groupid is N, and N itself).

    Returns the jobids, the group's parent first. Pre-empts a running create/scale (its job ends FAIL
    "pre-empted by remove <jobid>"). Asking again while a remove runs returns that remove's jobid.
    Raises NotFound when nothing of this service matches.
    """
    if target.startswith("-"):
        gid = target[1:]
        group = groups.load(r, gid)
        if group is not None and group.get("service") == service:   # nothing of the group starts any more
            groups.abort_pending(r, gid, clock, f"group {gid} removed")
        envs = [e for e in envstore.list_envs(r, service) if e.get("groupid") == gid or e.get("envid") == gid]
        envs.sort(key=lambda e: (e["envid"] != gid, int(e["envid"])))
        if not envs and (group is None or group.get("service") != service):
            raise NotFound(f"envid: no environment group {gid}", "envid")
    else:
        env = envstore.get_env(r, target, service)
        if env is None:
            raise NotFound(f"envid: no environment {target}", "envid")
        envs = [env]
    return [_remove_one(r, queue, service, env, clock) for env in envs]
