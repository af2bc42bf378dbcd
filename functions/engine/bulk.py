"""Allocating many new VMs of one environment in one step (a create's slaves) with the Redis work batched.

Same rules as vmops.ensure_allocated, VM by VM: the intent (a VmRecord in state "allocating" with its nonce)
is written before its VM is allocated, after Ctx.capacity granted it; a VM whose answer is lost is adopted by
its tags on a replay. What is batched: the callback secret is read once, the intents of every granted slot
are written in one fenced call before the first allocate, then the `one.vm.allocate` calls (one per VM, in
slot order), then the VM ids, the vm_index entries and the events in one round trip each. A worker killed
between an allocate and that last write leaves intents whose VMs carry their tags (adopted on the replay);
a drive that lost the env lock meanwhile terminates the VMs it allocated that the new holder did not adopt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from functions.cloud.one import OneClient, OneError
from functions.engine import vmops
from functions.model import render, specview
from functions.store import envstore, install, keys
from functions.store.envstore import VmRecord

if TYPE_CHECKING:
    from functions.engine.context import Ctx, Env


class SlotFailed(Exception):
    """The VM of `slot` could not be rendered or allocated (`cause`: RenderError, SpecError or OneError)."""

    def __init__(self, slot: str, cause: Exception) -> None:
        super().__init__(f"{slot}: {cause}")
        self.slot, self.cause = slot, cause


def _intents(ctx: Ctx, env: Env, wanted: Sequence[tuple[str, str, int]], master_ip: str,
             num_slaves: int) -> tuple[list[tuple[VmRecord, str]], vmops.WaitCapacity | None]:
    """The new records and their allocate texts, for the slots Ctx.capacity grants (rendered first: a render
    error raises before anything is written); the first WaitCapacity of the others."""
    secret = install.callback_secret(ctx.r)
    made: list[tuple[VmRecord, str]] = []
    short: vmops.WaitCapacity | None = None
    for slot, role, index in wanted:
        rec = VmRecord(slot=slot, role=role, index=index, endpoint=env.endpoint, created=ctx.clock(),
                       origin=vmops.op_origin(env))
        try:
            text = vmops.render_vm(ctx, env, rec, master_ip, num_slaves, secret=secret)
        except (render.RenderError, specview.SpecError) as exc:
            raise SlotFailed(slot, exc) from exc
        made.append((rec, text))
    granted: list[tuple[VmRecord, str]] = []
    for rec, text in made:
        try:
            vmops.grant(ctx, env, rec)
        except vmops.WaitCapacity as exc:
            short = short or exc
            continue
        granted.append((rec, text))
    return granted, short


def _record(ctx: Ctx, env: Env, one: OneClient, done: list[tuple[VmRecord, int]]) -> None:
    """Record the VMs just allocated (ids, index, events). A lost lock: drop the ones nobody recorded, re-raise."""
    for rec, vmid in done:
        rec.vmid, rec.state = vmid, "allocated"
    try:
        ctx.put_vms(env, [rec for rec, _ in done])
    except envstore.LockLost:
        for rec, vmid in done:
            vmops.drop_unrecorded(ctx, env, one, rec.slot, vmid)
        raise
    with ctx.r.pipeline(transaction=False) as p:
        for rec, vmid in done:
            p.set(keys.vm_index(env.endpoint, vmid), f"{env.envid} {rec.slot}")
        p.execute()
    env.fresh.update(rec.slot for rec, _ in done)
    ctx.events(env, [("step", f"{rec.role} {rec.slot}: VM {vmid} allocated", {"vmid": str(vmid), "slot": rec.slot})
                     for rec, vmid in done])


def allocate_new(ctx: Ctx, env: Env, one: OneClient, wanted: Sequence[tuple[str, str, int]], master_ip: str = "",
                 num_slaves: int = 0) -> vmops.WaitCapacity | None:
    """Allocate a VM for each (slot, role, index) that has no record yet (a slot with one is left to
    vmops.ensure_allocated). Returns the first WaitCapacity of the slots not granted yet (the others are
    allocated), None if all were. Raises SlotFailed (a render error before anything is written; OpenNebula's
    refusal after recording what was allocated before it), OneUnavailable likewise, LockLost (its own VMs
    dropped). Safe to run twice."""
    wanted = [w for w in wanted if w[0] not in env.vms]
    if not wanted:
        return None
    granted, short = _intents(ctx, env, wanted, master_ip, num_slaves)
    ctx.put_vms(env, [rec for rec, _ in granted])
    for rec, _ in granted:
        env.vms[rec.slot] = rec
    done: list[tuple[VmRecord, int]] = []
    try:
        for rec, text in granted:
            try:
                done.append((rec, one.allocate(text)))
            except OneError as exc:
                raise SlotFailed(rec.slot, exc) from exc
    finally:
        if done:
            _record(ctx, env, one, done)
    return short
