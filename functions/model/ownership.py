"""Whether an OpenNebula VM is the one a VM record stands for, judged by its USER_TEMPLATE tags. Pure.

Every VM Carina creates carries CARINA_SERVICE, CARINA_INSTALL (this installation), CARINA_ENVID,
CARINA_SLOT and CARINA_NONCE (the incarnation's nonce, written in the record before allocate). A VM id can be
reused (a cloud reset, another installation, a re-pointed endpoint): Carina never terminates, adopts,
announces or counts a VM whose tags name another owner; the record's VM is then MISSING.
"""

from __future__ import annotations

from collections.abc import Mapping

TAGS = ("CARINA_SERVICE", "CARINA_INSTALL", "CARINA_ENVID", "CARINA_SLOT", "CARINA_NONCE")


def vm_tags(service: str, install: str | None, envid: str, slot: str, nonce: str, role: str) -> dict[str, str]:
    """The USER_TEMPLATE tags of the VM for one slot incarnation (no CARINA_INSTALL when `install` is None)."""
    tags = {"CARINA_SERVICE": service, "CARINA_INSTALL": install or "", "CARINA_ENVID": envid, "CARINA_ROLE": role,
            "CARINA_SLOT": slot, "CARINA_NONCE": nonce}
    if install is None:
        del tags["CARINA_INSTALL"]
    return tags


def owner(tags: Mapping[str, str]) -> str:
    """A short description of who a VM's tags say it belongs to (for events)."""
    if not tags.get("CARINA_ENVID"):
        return "no Carina environment"
    return (f"environment {tags.get('CARINA_ENVID')} slot {tags.get('CARINA_SLOT', '?')} of service "
            f"{tags.get('CARINA_SERVICE', '?')} (installation {tags.get('CARINA_INSTALL', '?')})")


def mismatch(tags: Mapping[str, str], expected: Mapping[str, str], keys: tuple[str, ...] = TAGS) -> str | None:
    """None when `tags` carry every expected value of `keys`, else which tag differs (and who owns the VM).

    A VM made before installations and nonces were tagged lacks CARINA_INSTALL and CARINA_NONCE: it is
    judged by the tags it has (service, envid, slot); any tag present with another value is a mismatch.
    """
    for key in keys:
        want, have = expected.get(key), tags.get(key)
        if want is None:
            continue
        if have is None and key in ("CARINA_INSTALL", "CARINA_NONCE") and tags.get("CARINA_ENVID"):
            continue
        if have != want:
            return f"{key} is {have!r}, not {want!r}: the VM belongs to {owner(tags)}"
    return None
