"""Telling the master about its slaves: `~/<master script> <verb> <slave ip> <slavedata>` over SSH.

Every command for one master in one step goes over ONE SSH connection (`Ctx.batch_ssh`: one key exchange, one
authentication, one exec channel per slave, settings.ssh_channels at a time), so each master script still
sees one `add`/`remove` per slave, and each slave keeps its own outcome: a script that exits non-zero or a
channel that fails touches only that slave; a connection that cannot be made (refused, dropped, our key
refused, a changed host key) fails every slave of the batch the same way, and nothing ran.

Host keys: the master's key must be the pinned one (functions.model.hostkeys; pins keyed by
vmops.pin_id); before there is a pin, the key the master reported in its token-proven network callback, else
any key (trust on first use). The first connection that succeeds pins the key it showed and records how
(VmRecord.hostkey_pin, an event).

`bring_up` is the slave's path shared by create and scale-up: boot (watch OpenNebula unless it called back),
then announce `add`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from functions.cloud import sshexec
from functions.cloud.one import OneClient
from functions.engine import vmops
from functions.engine.context import Step
from functions.model import hostkeys
from functions.store import install, tenants
from functions.store.envstore import VmRecord

if TYPE_CHECKING:
    from functions.engine.context import Ctx, Env


def tell_master(ctx: Ctx, env: Env, master: VmRecord, verb: str,
                slaves: Sequence[VmRecord]) -> list[sshexec.SshFailed | None]:
    """Run `<verb> <ip> <slavedata>` on the master for each slave, over one connection; per slave (in order)
    None when it ran and exited 0 (a `master: <verb> ...` event), else the SshFailed why not (HostKeyMismatch:
    the master's key changed, nothing ran). Nothing to do (all None) without a master context script.

    Pins the master's host key on the first connection that succeeds. Runs the commands again if called again
    (the master scripts' add/remove are idempotent).
    """
    script = str(env.cfg.get("master_context_script") or "")
    if not script or not slaves:
        return [None] * len(slaves)
    data = str(env.cfg.get("slavedata") or "")
    commands = [sshexec.script_command(script, [verb, s.ip, data]) for s in slaves]
    private_pem, _ = tenants.service_keypair(ctx.r, env.service)
    assert master.vmid is not None
    known = install.pinned_hostkey(ctx.r, vmops.pin_id(env, master))
    try:
        outcomes, seen = ctx.batch_ssh()(master.ip, ctx.settings.ssh_port, str(env.cfg.get("adminuser") or "root"),
                                         private_pem, commands, known_key=known or master.hostkey or None,
                                         timeout=ctx.settings.ssh_timeout, channels=ctx.settings.ssh_channels)
    except sshexec.SshFailed as exc:                 # HostKeyMismatch included: nothing ran
        return [exc] * len(slaves)
    if known is None and seen:
        _pin(ctx, env, master, seen)
    out: list[sshexec.SshFailed | None] = []
    events: list[tuple[str, str, dict[str, str]]] = []
    for slave, outcome in zip(slaves, outcomes, strict=True):
        if isinstance(outcome, sshexec.SshFailed):
            out.append(outcome)
        elif outcome.rc != 0:
            tail = (outcome.err or outcome.out)[-200:]
            out.append(sshexec.SshFailed(f"`{verb}` on the master exited {outcome.rc}: {tail}"))
        else:
            out.append(None)
            events.append(("step", f"master: {verb} {slave.ip} {data}".rstrip(), {"slot": slave.slot}))
    ctx.events(env, events)
    return out


def master_command(ctx: Ctx, env: Env, master: VmRecord, verb: str, slave: VmRecord) -> None:
    """tell_master for one slave: raises its SshFailed (HostKeyMismatch: never accepted), else returns."""
    (failed,) = tell_master(ctx, env, master, verb, [slave])
    if failed is not None:
        raise failed


def _pin(ctx: Ctx, env: Env, master: VmRecord, seen: str) -> None:
    """Pin the key the master just showed (never replacing a pin) and record whether the callback vouched for
    it. Safe to run twice."""
    how = "callback" if master.hostkey else "first-use"
    if install.pin_hostkey(ctx.r, vmops.pin_id(env, master), seen) != seen or master.hostkey_pin:
        return
    master.hostkey_pin = how
    ctx.put_vm(env, master)
    env.vms[master.slot] = master
    if how == "callback":
        msg = f"master: host key pinned from callback ({hostkeys.fingerprint(seen)})"
    else:
        msg = f"master: host key pinned on first use ({hostkeys.fingerprint(seen)}; its callback carried none)"
    ctx.event(env, "hostkey", msg, vmid=str(master.vmid), slot=master.slot, how=how)


@dataclass(frozen=True)
class Progress:
    """Where one slave stands after bring_up: still booting (`wait`), never going to run (`failed`, why), not
    announced (`ssh`, why), or announced (all None)."""

    wait: Step = None
    failed: str | None = None
    ssh: sshexec.SshFailed | None = None


def _boot(ctx: Ctx, env: Env, one: OneClient, rec: VmRecord) -> Progress | None:
    """None once the slave runs (it called back, or OpenNebula shows it RUNNING); else how it waits or fails."""
    if rec.state not in ("allocating", "allocated") or vmops.came_up(ctx, env, rec):
        return None
    if rec.slot in env.fresh:                                # allocated just now: PENDING, nothing to ask
        return Progress(wait=vmops.wait_new(rec))
    view = vmops.observe(ctx, env, one, rec)
    why = vmops.boot_failure(rec, view)
    if why:
        return Progress(failed=why)
    return None if rec.state == "running" else Progress(wait=vmops.watch(rec, view))


def _mark_called_back(ctx: Ctx, env: Env, recs: Sequence[VmRecord]) -> None:
    """vmops.came_up for every booting record that called back, written at once (records, then events)."""
    ups = [r for r in recs if r.state in ("allocating", "allocated") and vmops.called_back(r)]
    for rec in ups:
        rec.state = "running"
    ctx.put_vms(env, ups)
    ctx.events(env, [vmops.came_up_event(rec) for rec in ups])


def bring_up(ctx: Ctx, env: Env, one: OneClient, master: VmRecord, recs: Sequence[VmRecord]) -> dict[str, Progress]:
    """Move each slave on: boot, then `add` on the master (all the running ones over one connection), marking
    the announced ones. When a slave will never run, nothing is announced (the caller ends the operation).
    Returns each slave's Progress by slot. Safe to run twice (an announced slave is left alone). The records'
    writes are batched: the ones that called back, then the announced ones, one fenced call each."""
    _mark_called_back(ctx, env, recs)
    out: dict[str, Progress] = {}
    ready: list[VmRecord] = []
    for rec in recs:
        progress = _boot(ctx, env, one, rec)
        if progress is not None:
            out[rec.slot] = progress
            if progress.failed:
                return out
        elif rec.state == "running":
            ready.append(rec)
        else:
            out[rec.slot] = Progress()
    told: list[VmRecord] = []
    for rec, failed in zip(ready, tell_master(ctx, env, master, "add", ready), strict=True):
        if failed is None:
            rec.state = "announced"
            told.append(rec)
        out[rec.slot] = Progress(ssh=failed)
    ctx.put_vms(env, told)
    return out
