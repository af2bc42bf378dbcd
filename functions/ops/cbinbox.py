"""Accepted VM callbacks are applied in batches: an inbox per environment, drained under the environment lock.

The gateway appends each accepted callback to keys.callback_inbox(env) in the same atomic call that throttles
and dedupes it (callbacks.ingest, script `callback_ingest`), and queues a drain job (functions.tasks.
drain_callbacks) only when none is pending for that environment: the pending drain is an entry of
keys.callback_drains, a lease that runs out after DRAIN_LEASE seconds. `drain` takes the env lock, applies what
waits (oldest first, BATCH at a time; one fenced script per batch, `callback_step`, writes the batch before, its
records, env status, events and its removal from the inbox, and takes the next), and forgets the pending drain
only once the inbox is seen empty in that same atomic step: a callback arriving meanwhile is applied by this drain
or queues the next one. Under a stream of callbacks (this worker's last drain, moments ago, applied several) a
drain first lets its oldest callback wait up to GATHER s, asleep: fewer, bigger drains leave the CPU to the
gateway (a worker always runnable takes its share of a saturated machine); a callback on its own is applied at once.

Nothing is lost: entries leave the inbox only with their effect written; a drain killed midway (or a gateway
killed between ingest and enqueue) leaves its lease in keys.callback_drains, and every worker's pump queues the
drain again once the lease has run out (pump_drains). A batch applied twice gives the same records.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis
from rq import Queue

from functions.engine.kick import kick
from functions.model.cbfold import Entry, Folded, fold_batch, gather_wait
from functions.model.clock import Clock
from functions.store import envstore, guards, keys, runtime, scripts

log = logging.getLogger("carina.callbacks")

DRAIN = "functions.tasks.drain_callbacks"
DRAIN_LEASE = 30.0      # seconds a queued or running drain is trusted before the pump queues it again
BATCH = 200             # entries applied per commit
MAX_PER_JOB = 2000      # entries one drain job applies before it hands over to a fresh job (others get a turn)
RETRY_MIN, RETRY_MAX = 0.05, 2.0    # seconds before a drain that found the env lock busy tries again


def _callbacks_queue(queue: Queue) -> Queue:
    """The callbacks queue next to the base queue `queue`, made once per base queue object (making an RQ queue costs
    ~25 us of CPU: its serializer check). No I/O."""
    made = getattr(queue, "_carina_callbacks", None)
    if made is None or made.connection is not queue.connection:
        made = runtime.sibling(queue, runtime.CALLBACKS)
        queue._carina_callbacks = made          # type: ignore[attr-defined]
    return made


def enqueue_drain(queue: Queue, envid: str) -> None:
    """Queue a drain of the environment's inbox on the callbacks queue next to the base queue `queue` (served
    before drives). Its result is kept a second (nobody reads it: result_ttl=0 would make RQ delete the job at once,
    ~10 % more Redis commands and CPU per job than letting it expire); a failure is kept a day. Safe to run twice
    (a second drain finds the inbox empty)."""
    with queue.connection.pipeline() as pipe:       # one round trip (RQ alone makes two)
        _callbacks_queue(queue).enqueue(
            DRAIN, envid, job_timeout=60, result_ttl=1, failure_ttl=86400, description=f"callbacks of env {envid}",
            pipeline=pipe)
        pipe.execute()


def pump_drains(queue: Queue, now: float | None = None, batch: int = 200) -> int:
    """Queue a drain for every environment whose pending drain's lease ran out (a killed drain or gateway) or whose
    retry is due (real time unless `now`); each is leased again for DRAIN_LEASE s. Returns how many. Safe to run
    twice and from several workers at once (a leased entry is taken by one pump)."""
    conn = queue.connection
    now = time.time() if now is None else now
    taken = scripts.run(conn, "lease_due", [keys.callback_drains()], [repr(now), str(batch), repr(DRAIN_LEASE)])
    for member in taken:
        enqueue_drain(queue, member.decode() if isinstance(member, bytes) else str(member))
    return len(taken)


def _complete(r: redis.Redis, envid: str, vms: dict[str, envstore.VmRecord],
              entries: list[Entry]) -> dict[str, envstore.VmRecord]:
    """`vms` as read for `entries`, or every record of the env when one entry's slot holds another VM now or is gone
    (the callback is then matched by its vmid, as callbacks.apply does). An entry without a slot (legacy mode) made
    callback_step return every record already."""
    for e in entries:
        if not e.slot:
            continue
        rec = vms.get(e.slot)
        if rec is None or rec.vmid not in (None, e.vmid):
            return envstore.get_vms(r, envid)
    return vms


def _entries(texts: list[str]) -> list[Entry]:
    out = []
    for text in texts:
        try:
            out.append(Entry.from_wire(json.loads(text)))
        except ValueError:
            log.error("dropping a malformed callback entry: %.200s", text)
    return out


_FIELDS = tuple(envstore.VmRecord.__dataclass_fields__)


def record_json(rec: envstore.VmRecord) -> str:
    """rec.to_json() without dataclasses.asdict's deep copy (~20x faster; every field of a VmRecord is a plain
    value, so the text is the same, which tests/api/test_callback_inbox.py checks)."""
    return json.dumps({name: getattr(rec, name) for name in _FIELDS}, sort_keys=True)


def _step(r: redis.Redis, envid: str, fence: str, service: str, taken: int, folded: Folded | None,
          clock: Clock) -> list[Any]:
    """Write a folded batch and take its `taken` entries off the inbox, then take the next batch (script
    callback_step, one round trip); the script's answer."""
    args: list[str] = []
    changed = folded.changed if folded is not None else {}
    for slot, rec in changed.items():
        args += [slot, record_json(rec)]
    if folded is not None:
        ts = str(clock())
        for kind, msg, extra in folded.events:
            event = {"ts": ts, "envid": envid, "type": kind, "msg": msg, **extra}
            args.append(json.dumps([x for kv in event.items() for x in kv]))
    keys_ = [keys.env_lock(envid), keys.env_vms(envid), keys.env(envid), keys.callback_inbox(envid),
             keys.env_events(envid), keys.service_events(service), keys.callback_drains(), keys.vms_gen(),
             keys.vms_dirty()]
    head = [fence, str(taken), (folded.status if folded is not None else None) or "", str(envstore.EVENT_MAXLEN),
            envid, str(BATCH), repr(time.time() + DRAIN_LEASE), str(len(changed))]
    return list(scripts.run(r, "callback_step", keys_, head + args))


def _oldest_at(r: redis.Redis, envid: str) -> float:
    """When the inbox's oldest callback was queued (its entry's `t`); 0.0 when the inbox is empty or that is
    unreadable. Read-only."""
    try:
        return float(json.loads(r.lindex(keys.callback_inbox(envid), 0) or "{}").get("t") or 0.0)
    except (ValueError, AttributeError):
        return 0.0


def _retry_later(r: redis.Redis, envid: str, now: float) -> None:
    """The env lock is busy: have the pump queue this drain again soon (sooner the younger the oldest entry)."""
    oldest = _oldest_at(r, envid)
    age = max(0.0, now - oldest) if oldest else 0.0
    delay = min(RETRY_MAX, max(RETRY_MIN, age / 4))
    r.zadd(keys.callback_drains(), {envid: now + delay})


_last_drain = [0.0, 0]  # this process's last drain (an in-process worker runs many): monotonic end, callbacks applied
GATHER = 0.04           # seconds a drain lets its oldest callback wait under a stream of callbacks
RECENT = 0.05           # a stream: this process's last drain ended less than RECENT s ago ...
STREAM = 8              # ... and applied at least STREAM callbacks
_sleep = time.sleep


def _gather(r: redis.Redis, envid: str, clock: Clock) -> None:
    """Under a stream of callbacks wait (asleep: the CPU goes to the gateway meanwhile) until the inbox's oldest
    callback is GATHER s old, so this drain applies a bigger batch; callbacks one at a time are applied at once
    (cbfold.gather_wait decides). Read-only."""
    since_last, applied, now = time.monotonic() - _last_drain[0], _last_drain[1], clock()
    if not gather_wait(since_last, applied, now, now, GATHER, RECENT, STREAM):
        return                                       # not a stream (the usual case): no round trip
    wait = gather_wait(since_last, applied, _oldest_at(r, envid), clock(), GATHER, RECENT, STREAM)
    if wait > 0:
        _sleep(wait)


def drain(r: redis.Redis, queue: Queue, envid: str, clock: Clock) -> str:
    """Apply every callback waiting in the environment's inbox, oldest first; returns "drained N", "retry" (env
    lock busy: the pump queues it again), "gone" (environment deleted: its inbox dropped) or "more" (MAX_PER_JOB
    reached: a fresh drain is queued). A MASTER_INIT_* status wakes the lifecycle once the lock is released.
    Raises envstore.LockLost when the lock was lost midway (nothing of that batch written; the lease brings the
    drain back). Safe to run twice and concurrently (one holds the lock; the other retries)."""
    _gather(r, envid, clock)
    with guards.env_lock(r, envid) as fence:
        if not fence:
            _retry_later(r, envid, time.time())
            return "retry"
        answer, wake = _drain_locked(r, queue, envid, fence, clock)
    applied = int(answer.split()[1]) if answer.startswith("drained") else MAX_PER_JOB if answer == "more" else 0
    _last_drain[:] = [time.monotonic(), applied]
    if wake:
        kick(queue, envid)
    return answer


def _drain_locked(r: redis.Redis, queue: Queue, envid: str, fence: str, clock: Clock) -> tuple[str, bool]:
    """drain's loop, under the env lock `fence`: (its answer, whether a batch asked to wake the lifecycle). One
    script call per batch: it writes the batch before and takes the next one."""
    done, wake, service, taken, folded = 0, False, "", 0, None
    while True:
        answer = _step(r, envid, fence, service, taken, folded, clock)
        if answer[0] == 0:
            raise envstore.LockLost(f"env {envid}: lock lost, {taken} callback(s) left in the inbox")
        if answer[0] == 2:
            return "gone", wake
        done, wake = done + taken, wake or (folded is not None and folded.kick)
        if answer[0] == 3:
            return f"drained {done}", wake
        if done >= MAX_PER_JOB:
            enqueue_drain(queue, envid)
            return "more", wake
        service, texts, raw = answer[1], answer[2], answer[3]
        recs = [envstore.VmRecord.from_json(v) for v in raw]
        recs.sort(key=lambda v: (v.role != "master", v.index))
        entries = _entries(texts)
        folded = fold_batch(_complete(r, envid, {v.slot: v for v in recs}, entries), entries)
        taken = len(texts)


def waiting(r: redis.Redis, envid: str) -> list[dict[str, Any]]:
    """The environment's callbacks not applied yet, oldest first (their stored form). Read-only."""
    return [json.loads(t) for t in r.lrange(keys.callback_inbox(envid), 0, -1)]
