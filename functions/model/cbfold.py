"""What accepted VM callbacks do to an environment's VM records, one after another (pure).

`fold_one` applies one callback to its VM record; `fold_batch` applies a run of them in order (the drain of an
environment's callback inbox, functions.ops.cbinbox) and says which records changed, the environment's new
status, the events to add and whether the lifecycle must be woken. Applying a batch gives the same records as
applying its callbacks one at a time (functions.ops.callbacks.apply), and applying it twice gives the same
records again (the events are added again).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from functions.store.envstore import VmRecord

# A slave's index may be empty: the guide's tomcat-slave.sh reports SLAVE__INIT_DONE (its context has no SLAVE_ID);
# the callback is already proven to come from this slave, so the index adds nothing.
INIT_RE = {"master": re.compile(r"MASTER_INIT_(DONE|FAIL)"), "slave": re.compile(r"SLAVE_[0-9]*_INIT_(DONE|FAIL)")}
KINDS = ("net", "status")


def init_verdict(status: str, rec: VmRecord) -> str:
    """"done" / "fail:<status>" when `status` is this VM's own init report (MASTER_INIT_* from the master,
    SLAVE_<n>_INIT_* or SLAVE__INIT_* from a slave; a `:reason` may follow), else "". Pure."""
    match = INIT_RE[rec.role].fullmatch(status.split(":", 1)[0])
    if match is None:
        return ""
    return "done" if match.group(1) == "DONE" else f"fail:{status}"


def report_text(kind: str, fields: dict[str, str]) -> str:
    """A report's canonical text, as a VM's last report of its kind is remembered and compared: exactly
    json.dumps([kind, fields], sort_keys=True) for string fields, built without json's encoder (~4x faster). Pure."""
    q = encode_basestring_ascii
    return f"[{q(kind)}, {{{', '.join(f'{q(k)}: {q(fields[k])}' for k in sorted(fields))}}}]"


def find_record(vms: dict[str, VmRecord], vmid: int, slot: str | None) -> VmRecord | None:
    """The record a callback of VM `vmid` (token-proven for `slot`, if given) is about: the slot's record unless it
    now holds another VM, else the record with that vmid, else None. Pure."""
    rec = vms.get(slot) if slot else None
    if rec is None or rec.vmid not in (None, vmid):
        rec = next((v for v in vms.values() if v.vmid == vmid), None)
    return rec


def fold_one(rec: VmRecord, kind: str, fields: dict[str, str]) -> tuple[str, str | None]:
    """Write one callback's values into `rec` (changes it); returns (remark for the event, the environment's new
    status or None). newip/name → ip, hostname, status NET_CONFIG_DONE; a host key is kept only from the first
    network callback carrying one (a later, different one is ignored and said so); status → the VM's status, its
    init verdict (the first one stays) and the environment's status. Safe to run twice (same values)."""
    if kind == "net":
        rec.ip = fields["newip"]
        rec.hostname = fields.get("name", rec.hostname)
        rec.status = "NET_CONFIG_DONE"
        key = fields.get("hostkey", "")
        if key and not rec.hostkey:
            rec.hostkey = key
            return " (host key reported)", None
        if key and key != rec.hostkey:
            return " (host key differs from the one reported first: ignored)", None
        return "", None
    rec.status = fields["status"]
    rec.init = rec.init or init_verdict(fields["status"], rec)
    return "", fields["status"]


@dataclass(frozen=True)
class Entry:
    """One accepted callback waiting in an inbox: VM id, kind, its values, the slot its token proved ("" in legacy
    mode) and when the gateway accepted it."""

    vmid: int
    kind: str
    fields: dict[str, str]
    slot: str = ""
    at: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        return {"v": self.vmid, "k": self.kind, "f": self.fields, "s": self.slot, "t": self.at}

    def to_text(self) -> str:
        """The entry as the inbox stores it: JSON of to_wire (compact; readers parse it). Pure."""
        try:
            return orjson.dumps(self.to_wire(), option=orjson.OPT_SORT_KEYS).decode()
        except orjson.JSONEncodeError:      # text orjson refuses (a lone surrogate): json escapes it
            return json.dumps(self.to_wire(), sort_keys=True)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Entry:
        """An entry from its stored form; ValueError when malformed (such an entry is dropped)."""
        try:
            vmid, kind, fields = int(data["v"]), str(data["k"]), data["f"]
            if kind not in KINDS or not isinstance(fields, dict) or ("status" if kind == "status" else "newip") \
                    not in fields:
                raise ValueError(f"kind or fields: {kind!r}")
            return cls(vmid, kind, {str(k): str(v) for k, v in fields.items()}, str(data.get("s") or ""),
                       float(data.get("t") or 0.0))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"callback entry: {exc}") from None


@dataclass
class Folded:
    """The outcome of a batch: records that changed (by slot), the environment's status after it (None: not
    touched), events as (type, message, extra fields) in order, and whether to wake the lifecycle."""

    changed: dict[str, VmRecord] = field(default_factory=dict)
    status: str | None = None
    events: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    kick: bool = False


def fold_batch(vms: dict[str, VmRecord], entries: list[Entry]) -> Folded:
    """Apply `entries` in order to the records `vms` (changed in place); what to write. Pure."""
    out = Folded()
    for e in entries:
        rec = find_record(vms, e.vmid, e.slot or None)
        extra = {"callback": e.kind, "vmid": str(e.vmid), **e.fields}
        if rec is None:
            out.events.append(("callback_stale", f"callback from VM {e.vmid} ignored: no such VM any more", extra))
            continue
        remark, status = fold_one(rec, e.kind, e.fields)
        out.changed[rec.slot] = rec
        if status is not None:
            out.status = status
            out.kick = out.kick or status.startswith("MASTER_INIT_")
        what = f"status={e.fields['status']}" if e.kind == "status" else f"newip={e.fields['newip']}"
        out.events.append(("callback", f"VM {e.vmid} ({rec.slot}) {what}{remark}", {"slot": rec.slot, **extra}))
    return out


def gather_wait(since_last: float, last_applied: int, oldest_at: float, now: float, gather: float, recent: float,
                stream: int) -> float:
    """Seconds a drain should wait before taking its batch (pure): under a stream of callbacks (the process's last
    drain ended `since_last` s ago, less than `recent`, and applied `stream` or more) until the oldest waiting
    callback (queued at `oldest_at`, 0 = unknown) is `gather` s old, never more than `gather`; else 0 (a callback
    on its own is applied at once)."""
    if last_applied < stream or not 0 <= since_last < recent or oldest_at <= 0:
        return 0.0
    return min(gather, max(0.0, oldest_at + gather - now))
