"""What the minute's refresh writes into a VM record, judged from what OpenNebula says of its VM. Pure.

`seen` is the record as read (functions.store.observed.Seen: JSON value text, observed.FIELDS via `written()`),
`view` what OpenNebula says (functions.cloud.one.VmView, None: not in the pool). A DONE VM (state 6) counts as
missing; a missing VM keeps its last numbers, address and CPU figure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from functions.cloud.one import VmView
    from functions.store.observed import Seen

DONE = 6                            # OpenNebula's VM state DONE


def observation(seen: Seen, view: VmView | None, checked: str | None = None) -> tuple[str, ...] | None:
    """The record's FIELDS (observed.FIELDS, JSON value text) with what OpenNebula says (`view` None: the VM
    is missing; `checked`: a new ownership mark; the view's IP, when it carries one, becomes `one_ip`: full
    bodies do, short ones not), or None when nothing changed."""
    old = seen.written()
    mark = old[4] if checked is None else checked
    if view is None or view.state == DONE:
        new = (old[0], "missing", old[2], old[3], mark, old[5])
    else:
        new = (old[0], view.short_status(), str(view.state), str(view.lcm_state), mark, view.ip or old[5])
    return None if new == old else new


def cpu_figure(seen: Seen, view: VmView | None, cpu: float | None) -> float | None:
    """The VM's new CPU figure, or None when there is none or it did not change (a missing or DONE VM keeps
    its last figure; the figure now is the decoded record's, which the refresh keeps up to date, else the one
    read)."""
    if view is None or view.state == DONE or cpu is None:
        return None
    now = seen.doc.get("cpu") if seen.doc is not None else as_float(seen.cpu)
    return None if now == cpu else float(cpu)


def judgeable(seen: Seen, taken: float) -> bool:
    """A record the snapshot can judge: it has a VM id, is not mid-allocate, was allocated before `taken`."""
    if not seen.vmid.isdigit() or seen.state == "allocating":
        return False
    created = as_float(seen.created or "0")
    return created is not None and created <= taken


def as_float(text: str) -> float | None:
    """`text` as a number, or None when it is not one."""
    try:
        return float(text)
    except ValueError:
        return None
