"""VM callbacks: who may report (per-VM token, or legacy mode), how often, and applying a report to Redis.

In the gateway: `lookup` (one round trip: the env's service and the VM records that may be the caller), then
`find_caller` (token or legacy address check, no I/O when given the records), then `ingest` (one atomic script:
a token bucket per VM, a repeat of the last report of a kind not queued again, append to the environment's
inbox, and whether a drain must be queued: functions.ops.cbinbox applies the inbox in batches). The gateway
process remembers each environment's VMs (functions.ops.cbroster): a callback whose token matches a remembered VM
(`known_caller`) skips `lookup`: one round trip, `ingest` checking that its VM record is still there.

`apply` (jobs queued as functions.tasks.apply_callback before the inbox existed, and their retries) records one
accepted callback under the environment lock and wakes the lifecycle on MASTER_INIT_*.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
import logging
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue

from functions.engine.kick import kick
from functions.model import tokens
from functions.model.cbfold import Entry, find_record, fold_one, report_text
from functions.model.clock import Clock
from functions.ops import cbinbox, cbroster
from functions.ops.cbroster import lookup
from functions.store import envstore, guards, install, keys, runtime, scripts
from functions.store.envstore import VmRecord

log = logging.getLogger("carina.callbacks")

APPLY = "functions.tasks.apply_callback"
KINDS = ("net", "status")
MAX_RETRY_DELAY = 5.0
REFUSALS_PER_MINUTE = 30
GATE_TTL = 86400            # a VM's bucket and last reports are forgotten after a quiet day
THROTTLE_NOTE_EVERY = 60.0  # seconds: at most one callback_throttled event per VM in that time
# Parameters never copied into an event's extra fields (the token; names add_event itself uses).
_NOT_EXTRA = frozenset({"token", "envid", "service", "ts", "type", "msg", "id", "r", "kind", "clock"})
_GATE_TTL, _NOTE_EVERY, _DRAINS = str(GATE_TTL), repr(THROTTLE_NOTE_EVERY), keys.callback_drains()


class CallbackRefused(Exception):
    """A callback that must not be applied; `http_status` is 403 or 404."""

    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.message = message


@dataclass
class Caller:
    """The VM record a callback was authorized for (`by_token`: proven by its token, not legacy mode)."""

    slot: str
    role: str
    nonce: str = ""
    by_token: bool = False


@dataclass(frozen=True)
class Admission:
    """What to do with an authorized callback: `queue` it, it is a `duplicate` of the last report of its kind
    (answer, queue nothing), or the VM is `throttled` (429; `retry_after` s; `note` it: the first refusal in
    THROTTLE_NOTE_EVERY seconds)."""

    verdict: str
    retry_after: float = 0.0
    note: bool = False
    drain: bool = False


_SECRETS: weakref.WeakKeyDictionary[redis.Redis, bytes] = weakref.WeakKeyDictionary()


def _secret(r: redis.Redis, fresh: bool = False) -> bytes:
    """The callback HMAC key, read once per client (it never changes once made); `fresh` reads it again."""
    if fresh or r not in _SECRETS:
        _SECRETS[r] = install.callback_secret(r)
    return _SECRETS[r]


def _token_slot(r: redis.Redis, envid: str, vmid: int, token: str, records: list[VmRecord]) -> VmRecord:
    for fresh in (False, True):          # a mismatch reads the secret again before refusing
        secret = _secret(r, fresh)
        rec = next((v for v in records if v.vmid == vmid), None)
        if rec is not None:
            if tokens.token_matches(secret, envid, rec.slot, rec.nonce, token):
                return rec
            continue
        # The VM may call back before its id was recorded (worker killed right after allocate): the token
        # still proves the slot incarnation, whose record has no vmid yet.
        for rec in records:
            if rec.vmid is None and tokens.token_matches(secret, envid, rec.slot, rec.nonce, token):
                return rec
    raise CallbackRefused(403, f"token: does not match VM {vmid} of environment {envid}")


def same_address(a: str | None, b: str) -> bool:
    """True when two IP addresses are the same (an IPv4-mapped IPv6 address equals its IPv4 one). Pure."""
    try:
        x, y = ipaddress.ip_address((a or "").strip()), ipaddress.ip_address(b.strip())
    except ValueError:
        return False
    x = getattr(x, "ipv4_mapped", None) or x
    y = getattr(y, "ipv4_mapped", None) or y
    return x == y


def _legacy_caller(envid: str, vmid: int, remote_addr: str | None, records: list[VmRecord]) -> VmRecord:
    """The VM record of a tokenless callback: an existing VM, called from the address OpenNebula reports for it
    (the record's one_ip, written when Carina asks OpenNebula about the VM, at the latest by the minute's
    refresh; never the address the VM itself reported). Raises CallbackRefused."""
    rec = next((v for v in records if v.vmid == vmid), None)
    if rec is None:
        raise CallbackRefused(404, f"vmid: no VM {vmid} in environment {envid}")
    expected = rec.one_ip
    if not expected:
        raise CallbackRefused(403, f"address: OpenNebula has not reported an address for VM {vmid} yet")
    if not same_address(remote_addr, expected):
        raise CallbackRefused(403, "address: a callback without a token is accepted only from the VM's own "
                                   "address (as OpenNebula reports it)")
    return rec


def find_caller(r: redis.Redis, env: dict[str, Any], vmid: int, token: str | None, status: str | None,
                legacy: bool, remote_addr: str | None = None, records: list[VmRecord] | None = None) -> Caller:
    """Authorize a callback for VM `vmid` of `env`; raises CallbackRefused (403/404). Read-only.

    With a token it must match that VM's record (from any address). Without one it is refused unless `legacy`,
    and then accepted only for an existing VM of the environment calling from its own address (`remote_addr`,
    as the gateway sees it, must be the one OpenNebula reports). MASTER_INIT_* is accepted only from the master.
    `records`: the candidates `lookup` read (default: read them now).
    """
    envid = env["envid"]
    if records is None:
        records = lookup(r, envid, vmid).records
    if token:
        rec = _token_slot(r, envid, vmid, token, records)
    elif not legacy:
        raise CallbackRefused(403, "token: callback token required")
    else:
        rec = _legacy_caller(envid, vmid, remote_addr, records)
    if status and status.startswith("MASTER_INIT") and rec.role != "master":
        raise CallbackRefused(403, f"status: only the master reports {status.split(':')[0]}")
    return Caller(slot=rec.slot, role=rec.role, nonce=rec.nonce, by_token=bool(token))


def ingest(r: redis.Redis, envid: str, caller: Caller, vmid: int, kind: str, fields: dict[str, str], now: float,
           per_minute: int, burst: int, recheck: bool = False) -> Admission:
    """Take one token from the VM's bucket (`per_minute` refill, `burst` deep) and compare the report with the
    last one of its kind queued for this VM; when it is to be queued, in the same atomic script, append it to the
    environment's inbox and remember it as the VM's last report of its kind. Admission.drain: no drain of the
    environment was pending, the caller must queue one (cbinbox.enqueue_drain; if it dies first, the pump does it
    once the lease runs out). Every call takes a token. `recheck` (a caller from `known_caller`): first
    check that the environment and the caller's VM record (slot, nonce, vmid) are still there, else do nothing and
    answer Admission("recheck")."""
    keys_ = (keys.callback_gate(envid, caller.slot, caller.nonce), keys.callback_inbox(envid), _DRAINS,
             keys.env_vms(envid), keys.env(envid))
    args = (repr(now), repr(per_minute / 60.0), str(burst), kind, report_text(kind, fields), _GATE_TTL, _NOTE_EVERY,
            Entry(vmid, kind, fields, caller.slot, now).to_text(), envid, repr(time.time() + cbinbox.DRAIN_LEASE),
            caller.slot if recheck else "", caller.nonce, str(vmid))
    code, wait_ms, note, drain = scripts.run(r, "callback_ingest", keys_, args)
    if code == 0:
        return Admission("throttled", retry_after=int(wait_ms) / 1000.0, note=bool(note))
    return Admission({1: "queue", 2: "duplicate", 3: "recheck"}[int(code)], drain=bool(drain))


@functools.lru_cache(maxsize=4096)
def _expected_token(secret: bytes, envid: str, slot: str, nonce: str) -> str:
    """tokens.vm_token, remembered for the last VMs seen (a VM's two boot callbacks come one after the other)."""
    return tokens.vm_token(secret, envid, slot, nonce)


def known_caller(r: redis.Redis, envid: str, vmid: int, token: str) -> tuple[str, Caller] | None:
    """(service, caller) when `token` matches the VM this process remembers as `vmid` of `envid` (cbroster; no I/O
    but the HMAC), else None. Ingest it with recheck=True: the record may have changed since."""
    got = cbroster.known(envid, vmid)
    if got is None:
        return None
    service, m = got
    if not hmac.compare_digest(_expected_token(_secret(r), envid, m.slot, m.nonce), token):
        return None
    return service, Caller(slot=m.slot, role=m.role, nonce=m.nonce, by_token=True)


def record_throttled(r: redis.Redis, env: dict[str, Any], vmid: int, caller: Caller, per_minute: int, burst: int,
                     clock: Clock) -> None:
    """The `callback_throttled` event (at most one a minute per VM: the caller checks Admission.note)."""
    envstore.add_event(r, env["envid"], env["service"], "callback_throttled",
                       f"VM {vmid} ({caller.slot}) sends callbacks faster than {per_minute} a minute (burst {burst}):"
                       " refused with 429 until it slows down", clock, vmid=str(vmid), slot=caller.slot)


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
    """Enqueue every callback retry that is due (real time unless `now`), and every inbox drain due again
    (cbinbox.pump_drains); returns how many.

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
    return len(taken) + cbinbox.pump_drains(queue, now)


def _record(r: redis.Redis, envid: str, vmid: int, kind: str, fields: dict[str, str],
            slot: str | None, fence: str | None = None) -> tuple[VmRecord | None, str]:
    """Write the reported values to the VM record (and the env status). Caller holds the env lock (`fence`).

    Returns the record and a remark for the event: a host key is kept only from the first network callback that
    carries one (a later, different one is ignored and said so: a changed key is never silently accepted)."""
    rec = find_record(envstore.get_vms(r, envid), vmid, slot)
    if rec is None:
        return None, ""
    remark, status = fold_one(rec, kind, fields)
    if status is not None:
        envstore.update_env(r, envid, status=status)
    envstore.put_vm(r, envid, rec, fence=fence)
    return rec, remark


def apply(r: redis.Redis, queue: Queue, envid: str, vmid: int, kind: str, fields: dict[str, str], clock: Clock,
          slot: str | None = None, attempt: int = 0) -> str:
    """Record one accepted callback; returns "applied", "retry" (lock busy: re-queued), "gone" or "stale".

    newip/name → VM ip, hostname, status NET_CONFIG_DONE (hostkey → the VM's reported host key, first one
    wins); status → env status and VM status. Adds a `callback` event; MASTER_INIT_* kicks the lifecycle. Safe to
    run twice (same values, one more event).
    """
    if kind not in KINDS:
        raise ValueError(f"kind: must be one of {', '.join(KINDS)}")
    with guards.env_lock(r, envid) as fence:
        if not fence:
            enqueue_apply(queue, envid, vmid, kind, fields, slot or "", attempt + 1)
            return "retry"
        env = envstore.get_env(r, envid)
        if env is None:
            return "gone"
        rec, remark = _record(r, envid, vmid, kind, fields, slot, fence)
        extra = {"callback": kind, "vmid": str(vmid), **fields}
        if rec is None:
            envstore.add_event(r, envid, env["service"], "callback_stale",
                               f"callback from VM {vmid} ignored: no such VM any more", clock, **extra)
            return "stale"
        what = f"status={fields['status']}" if kind == "status" else f"newip={fields['newip']}"
        envstore.add_event(r, envid, env["service"], "callback", f"VM {vmid} ({rec.slot}) {what}{remark}", clock,
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
