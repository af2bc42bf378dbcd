"""VM callbacks: who may report (per-VM token, or legacy mode) and applying a report to Redis.

`find_caller` runs in the gateway (read-only); `apply` (queued as functions.tasks.apply_callback) records an
accepted callback under the environment lock and wakes the lifecycle on MASTER_INIT_*.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue

from functions.engine.kick import kick
from functions.model import tokens
from functions.model.clock import Clock
from functions.store import envstore, keys, runtime, scripts
from functions.store.envstore import VmRecord

log = logging.getLogger("carina.callbacks")

APPLY = "functions.tasks.apply_callback"
KINDS = ("net", "status")
MAX_RETRY_DELAY = 5.0
REFUSALS_PER_MINUTE = 30
# Parameters never copied into an event's extra fields (the token; names add_event itself uses).
_NOT_EXTRA = frozenset({"token", "envid", "service", "ts", "type", "msg", "id", "r", "kind", "clock"})


class CallbackRefused(Exception):
    """A callback that must not be applied; `http_status` is 403 or 404."""

    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.message = message


@dataclass
class Caller:
    """The VM record a callback was authorized for."""

    slot: str
    role: str


def _token_slot(r: redis.Redis, envid: str, vmid: int, token: str) -> VmRecord:
    secret = envstore.callback_secret(r)
    vms = envstore.get_vms(r, envid)
    rec = next((v for v in vms.values() if v.vmid == vmid), None)
    if rec is not None:
        if tokens.token_matches(secret, envid, rec.slot, rec.nonce, token):
            return rec
        raise CallbackRefused(403, f"token: does not match VM {vmid} of environment {envid}")
    # The VM may call back before its id was recorded (worker killed right after allocate): the token
    # still proves the slot incarnation, whose record has no vmid yet.
    for rec in vms.values():
        if rec.vmid is None and tokens.token_matches(secret, envid, rec.slot, rec.nonce, token):
            return rec
    raise CallbackRefused(403, f"token: does not match VM {vmid} of environment {envid}")


def find_caller(r: redis.Redis, env: dict[str, Any], vmid: int, token: str | None, status: str | None,
                legacy: bool) -> Caller:
    """Authorize a callback for VM `vmid` of `env`; raises CallbackRefused (403/404). Read-only.

    With a token it must match that VM's record. Without one it is refused unless `legacy`, and then
    accepted only for an existing VM of the environment. MASTER_INIT_* is accepted only from the master.
    """
    envid = env["envid"]
    if token:
        rec = _token_slot(r, envid, vmid, token)
    elif not legacy:
        raise CallbackRefused(403, "token: callback token required")
    else:
        rec = envstore.vm_by_id(r, envid, vmid)
        if rec is None:
            raise CallbackRefused(404, f"vmid: no VM {vmid} in environment {envid}")
    if status and status.startswith("MASTER_INIT") and rec.role != "master":
        raise CallbackRefused(403, f"status: only the master reports {status.split(':')[0]}")
    return Caller(slot=rec.slot, role=rec.role)


def enqueue_apply(queue: Queue, envid: str, vmid: int, kind: str, fields: dict[str, str], slot: str,
                  attempt: int = 0) -> None:
    """Queue apply_callback now, or (retries) after a short delay. Arguments are ids and strings only.
    `queue` is the base queue; the job goes to the callbacks queue next to it (store.runtime.CALLBACKS), which
    workers serve before drives, so a callback's effect never waits behind a backlog of drives.

    A retry goes to keys.callback_retries (a sorted set every worker pumps, see pump_retries), not to RQ's
    delayed jobs, which stall for minutes when the worker holding RQ's scheduler lock is killed.
    """
    if attempt:
        delay = min(0.2 * 2 ** min(attempt, 10), MAX_RETRY_DELAY)
        payload = json.dumps({"args": [envid, vmid, kind, fields, slot, attempt], "id": uuid.uuid4().hex},
                             sort_keys=True)
        queue.connection.zadd(keys.callback_retries(), {payload: time.time() + delay})
    else:
        _enqueue_now(queue, envid, vmid, kind, fields, slot, attempt)


def _enqueue_now(queue: Queue, envid: str, vmid: int, kind: str, fields: dict[str, str], slot: str,
                 attempt: int) -> None:
    """Queue apply_callback on the callbacks queue next to the base queue `queue` (served before drives)."""
    runtime.sibling(queue, runtime.CALLBACKS).enqueue(
        APPLY, envid, vmid, kind, fields, slot, attempt, job_timeout=60, result_ttl=60, failure_ttl=86400,
        description=f"callback {kind} env {envid} vm {vmid}")


RETRY_LEASE = 30.0


def pump_retries(queue: Queue, now: float | None = None, batch: int = 200) -> int:
    """Enqueue every callback retry that is due (real time unless `now`); returns how many.

    Safe to run twice and from several workers at once: a taken entry is leased, enqueued, then removed,
    so each retry runs at least once (a second run of apply is harmless) and none is lost.
    """
    conn = queue.connection
    now = time.time() if now is None else now
    taken = scripts.run(conn, "lease_due", [keys.callback_retries()], [repr(now), str(batch), repr(RETRY_LEASE)])
    for member in taken:
        text = member.decode() if isinstance(member, bytes) else str(member)
        try:
            envid, vmid, kind, fields, slot, attempt = json.loads(text)["args"]
        except (ValueError, KeyError, TypeError):
            log.error("dropping a malformed callback retry: %.200s", text)
        else:
            _enqueue_now(queue, envid, vmid, kind, fields, slot, attempt)
        conn.zrem(keys.callback_retries(), member)
    return len(taken)


def _record(r: redis.Redis, envid: str, vmid: int, kind: str, fields: dict[str, str],
            slot: str | None) -> VmRecord | None:
    """Write the reported values to the VM record (and the env status). Caller holds the env lock."""
    vms = envstore.get_vms(r, envid)
    rec = vms.get(slot) if slot else None
    if rec is None or rec.vmid not in (None, vmid):
        rec = next((v for v in vms.values() if v.vmid == vmid), None)
    if rec is None:
        return None
    if kind == "net":
        rec.ip = fields["newip"]
        rec.hostname = fields.get("name", rec.hostname)
        rec.status = "NET_CONFIG_DONE"
    else:
        rec.status = fields["status"]
        envstore.update_env(r, envid, status=fields["status"])
    envstore.put_vm(r, envid, rec)
    return rec


def apply(r: redis.Redis, queue: Queue, envid: str, vmid: int, kind: str, fields: dict[str, str], clock: Clock,
          slot: str | None = None, attempt: int = 0) -> str:
    """Record one accepted callback; returns "applied", "retry" (lock busy: re-queued), "gone" or "stale".

    newip/name → VM ip, hostname, status NET_CONFIG_DONE; status → env status and VM status. Adds a
    `callback` event; MASTER_INIT_* kicks the lifecycle. Safe to run twice (same values, one more event).
    """
    if kind not in KINDS:
        raise ValueError(f"kind: must be one of {', '.join(KINDS)}")
    with envstore.env_lock(r, envid) as got:
        if not got:
            enqueue_apply(queue, envid, vmid, kind, fields, slot or "", attempt + 1)
            return "retry"
        env = envstore.get_env(r, envid)
        if env is None:
            return "gone"
        rec = _record(r, envid, vmid, kind, fields, slot)
        extra = {"callback": kind, "vmid": str(vmid), **fields}
        if rec is None:
            envstore.add_event(r, envid, env["service"], "callback_stale",
                               f"callback from VM {vmid} ignored: no such VM any more", clock, **extra)
            return "stale"
        what = f"status={fields['status']}" if kind == "status" else f"newip={fields['newip']}"
        envstore.add_event(r, envid, env["service"], "callback", f"VM {vmid} ({rec.slot}) {what}", clock,
                           slot=rec.slot, **extra)
    if kind == "status" and fields["status"].startswith("MASTER_INIT_"):
        kick(queue, envid)
    return "applied"


def record_refused(r: redis.Redis, env: dict[str, Any], params: dict[str, str], reason: str, clock: Clock) -> bool:
    """Add a `callback_refused` event to the environment's stream (params without the token).

    At most REFUSALS_PER_MINUTE per environment and minute, so forged calls cannot flush the bounded
    stream of its real events. Returns True if recorded.
    """
    key = keys.callback_refusals(env["envid"], int(clock() // 60))
    with r.pipeline() as p:
        p.incr(key)
        p.expire(key, 120)
        count = p.execute()[0]
    if count > REFUSALS_PER_MINUTE:
        return False
    extra = {k: v for k, v in params.items() if k not in _NOT_EXTRA}
    if "service" in params:
        extra["service_param"] = params["service"]
    envstore.add_event(r, env["envid"], env["service"], "callback_refused", f"callback refused: {reason}", clock,
                       **extra)
    return True
