"""Fast answers for big VM pools (one.vmpool.info / infoextended / infoset / monitoring).

Each VM's XML is kept rendered, already escaped for the XML-RPC `<string>` and encoded (UTF-8), and is
re-rendered only when the VM changed: an entry is valid while it belongs to the same `Vm` object and
`vm.version` did not move (onesim.model bumps it on every change but a new monitoring sample). The parts that
depend only on `vm.template` / `vm.user_template` (most of a full body) are kept apart and re-rendered only
when one of those lists is replaced; LAST_POLL and the MONITORING elements are kept apart too and re-rendered
only when `vm.mon_version` moved (a new monitoring sample, or any in-place change), so a new sample
re-renders those small pieces only.
A pool answer is a `Chunks`: the server writes the pieces as they are (onesim.server).

Callers hold the model lock. Output is byte-for-byte what onesim.xmlout renders, escaped as
`xmlrpc.client` would.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from xmlrpc.client import escape

from onesim import states as S
from onesim import xmlout as X
from onesim.inventory import UserSpec
from onesim.model import Model, Vm


def encode(text: str) -> bytes:
    """`text` escaped as the content of an XML-RPC `<string>`, in UTF-8 (as xmlrpc.client marshals it)."""
    return escape(text).encode("utf-8")


class Chunks:
    """An XML-RPC string value given as its escaped UTF-8 pieces (the server joins them without copying text)."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts

    def size(self) -> int:
        return sum(len(p) for p in self.parts)

    def text(self) -> str:
        """The plain (unescaped) string value, as a client would read it (tests, debugging)."""
        raw = b"".join(self.parts).decode("utf-8")
        return raw.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


class _Entry:
    """The rendered pieces of one VM. Full body: head, poll, state, mon, middle, back; short body: shead, poll,
    sstate, short_tmpl, smon, short_user, sback. middle / short_tmpl / short_user depend on the two templates
    only; poll, mon and smon on the monitoring fields (kept while vm.mon_version did not move)."""

    __slots__ = ("vm", "full_of", "middle", "short_of", "short_tmpl", "short_user", "full_v", "head", "state",
                 "back", "short_v", "shead", "sstate", "sback", "poll_v", "poll", "mon_v", "mon", "smon_v", "smon")

    def __init__(self, vm: Vm) -> None:
        self.vm = vm
        self.full_of: tuple[object, object] | None = None  # the (template, user_template) lists rendered
        self.short_of: tuple[object, object] | None = None
        self.middle = self.short_tmpl = self.short_user = self.head = self.state = self.back = self.mon = b""
        self.shead = self.sstate = self.sback = self.poll = self.smon = b""
        self.full_v = self.short_v = self.poll_v = self.mon_v = self.smon_v = -1

    def _changed(self, rendered: tuple[object, object] | None) -> bool:
        return rendered is None or rendered[0] is not self.vm.template or rendered[1] is not self.vm.user_template

    def full_statics(self) -> None:
        """Re-render `middle` if vm.template or vm.user_template was replaced since."""
        if self._changed(self.full_of):
            self.full_of = (self.vm.template, self.vm.user_template)
            self.middle = encode(X.full_middle(self.vm))

    def short_statics(self) -> None:
        """Re-render the short template and user template if either list was replaced since."""
        if self._changed(self.short_of):
            self.short_of = (self.vm.template, self.vm.user_template)
            self.short_tmpl = encode(X.short_template(self.vm))
            self.short_user = encode(X.short_user(self.vm))

    # The pieces that depend on the monitoring fields only.
    def last_poll(self) -> bytes:
        if self.poll_v != self.vm.mon_version:
            self.poll, self.poll_v = encode(X.last_poll(self.vm)), self.vm.mon_version
        return self.poll

    def monitoring(self) -> bytes:
        if self.mon_v != self.vm.mon_version:
            self.mon, self.mon_v = encode(X.monitoring_el(self.vm)), self.vm.mon_version
        return self.mon

    def short_monitoring(self) -> bytes:
        if self.smon_v != self.vm.mon_version:
            self.smon, self.smon_v = encode(X.short_monitoring(self.vm)), self.vm.mon_version
        return self.smon


_POOL_OPEN, _POOL_CLOSE = encode("<VM_POOL>"), encode("</VM_POOL>")
_MON_OPEN, _MON_CLOSE = encode("<MONITORING_DATA>"), encode("</MONITORING_DATA>")


def window(ids: Sequence[int], start: int, end: int, keep: Callable[[int], bool]) -> list[int]:
    """oned's pool range over sorted `ids`, keeping those `keep` accepts: start/end >= -1 are id bounds
    (-1 or below: open), end < -1 a page of -end kept ids after skipping `start` kept ids. Pure."""
    if end < -1:
        skip, size = max(start, 0), -end
        out: list[int] = []
        for i in ids:
            if keep(i):
                if skip:
                    skip -= 1
                    continue
                out.append(i)
                if len(out) == size:
                    break
        return out
    lo = bisect_left(ids, start) if start >= 0 else 0
    hi = bisect_right(ids, end) if end >= 0 else len(ids)
    return [i for i in ids[lo:hi] if keep(i)]


class PoolCache:
    """The rendered VMs of one model (entries of removed VMs are dropped when the cache outgrows the pool)."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.entries: dict[int, _Entry] = {}

    def _entry(self, vm: Vm) -> _Entry:
        entry = self.entries.get(vm.id)
        if entry is None or entry.vm is not vm:
            entry = self.entries[vm.id] = _Entry(vm)
        return entry

    def full(self, vm: Vm) -> list[bytes]:
        """The pieces of the full `<VM>` body (infoextended), escaped and encoded."""
        e = self._entry(vm)
        if e.full_v != vm.version:
            e.full_statics()
            e.head, e.state, e.back = encode(X.full_head(vm)), encode(X.full_state(vm)), encode(X.full_back(vm))
            e.full_v = vm.version
        return [e.head, e.last_poll(), e.state, e.monitoring(), e.middle, e.back]

    def short(self, vm: Vm) -> list[bytes]:
        """The pieces of the short `<VM>` body (vmpool.info), escaped and encoded."""
        e = self._entry(vm)
        if e.short_v != vm.version:
            e.short_statics()
            e.shead, e.sstate, e.sback = (encode(X.short_front(vm)), encode(X.short_state(vm)),
                                          encode(X.short_back(vm)))
            e.short_v = vm.version
        return [e.shead, e.last_poll(), e.sstate, e.short_tmpl, e.short_monitoring(), e.short_user, e.sback]

    def monitoring(self, vm: Vm) -> bytes:
        """The `<MONITORING>` element of the last record (vmpool.monitoring with seconds 0; full bodies)."""
        return self._entry(vm).monitoring()

    def _sweep(self) -> None:
        vms = self.model.vms
        if len(self.entries) > len(vms) + 1000:
            self.entries = {i: e for i, e in self.entries.items() if vms.get(i) is e.vm}

    # ---- pools -------------------------------------------------------------------------------------------
    def select(self, user: UserSpec, flag: int, start: int, end: int, state: int) -> list[Vm]:
        """The VMs of a pool call in id order (filter flag, id range or page, state filter -2/-1/STATE)."""
        if state < -2 or state > 11 or state == 7:
            raise S.OneError(S.RPC_API, f"Incorrect state filter {state}.")
        vms = self.model.vms
        owner = self.model.filter_owner(user, flag)

        def keep(i: int) -> bool:
            vm = vms[i]
            return ((state == -2 or (state == -1 and vm.state != S.DONE) or vm.state == state)
                    and (flag == -2 or owner(vm.uid, vm.gid)))
        return [vms[i] for i in window(sorted(vms), start, end, keep)]

    def vm_pool(self, vms: list[Vm], extended: bool) -> Chunks:
        """`<VM_POOL>` of full (extended) or short bodies."""
        self._sweep()
        render = self.full if extended else self.short
        parts = [_POOL_OPEN]
        for vm in vms:
            parts += render(vm)
        parts.append(_POOL_CLOSE)
        return Chunks(parts)

    def monitoring_pool(self, user: UserSpec, flag: int, seconds: int) -> Chunks:
        """`<MONITORING_DATA>` of every non-DONE VM of the filter: the last record each (seconds 0), every
        record (seconds < 0) or those of the last `seconds` seconds."""
        m = self.model
        owner = m.filter_owner(user, flag)
        vms = [m.vms[i] for i in sorted(m.vms)]
        vms = [vm for vm in vms if vm.monitoring and vm.state != S.DONE and (flag == -2 or owner(vm.uid, vm.gid))]
        if seconds == 0:
            return Chunks([_MON_OPEN, *[self.monitoring(vm) for vm in vms], _MON_CLOSE])
        since = m.now() - seconds
        records = [r for vm in vms for r in vm.monitoring if seconds < 0 or r["TIMESTAMP"] >= since]
        return Chunks([encode(X.monitoring_xml(records))])
