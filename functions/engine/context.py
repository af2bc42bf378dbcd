"""What every step of the lifecycle engine shares: the environment as loaded (`Env`), the step context
(`Ctx`: Redis, queue, settings, clock, OpenNebula and SSH access, hooks) and how an operation ends
(`finish`, `fail`). The steps (functions.engine.steps) and vmops import only this module of the engine; the
loop (functions.engine.loop) dispatches to them.

Hooks: `Ctx.on_end` callables run after a job ended (DONE/FAIL/ABORT) with (ctx, env, job_status); the
task wrapper (functions.tasks) wires what reacts (e.g. groups starting their next member), so the engine
never imports who reacts. `Ctx.capacity(ctx, env, rec)` is asked right before a VM's intent is written
(functions.engine.vmops.ensure_allocated): None when the VM may be allocated now, else why it must wait (the
global scheduler has not granted it); None as the hook itself means no global scheduling.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from rq import Queue

from config.settings import Settings
from functions.cloud import sshexec
from functions.cloud.one import OneClient, OneError
from functions.model import specview
from functions.model.clock import Clock, system_clock
from functions.store import envstore, guards, install, keys, scripts, tenants
from functions.store.envstore import VmRecord

log = logging.getLogger("carina.engine")

POLL = 1.0                  # seconds: a delayed re-drive. A step waiting on OpenNebula returns a Watch instead
                            # (vmops.watch / vmops.wait_new), so waiting costs no job per environment
FINAL = ("DONE", "FAIL", "ABORT")
LOCK_TTL = guards.LOCK_TTL  # the env lock's TTL, renewed while a step runs (functions.store.guards.env_lock)


@dataclass(frozen=True)
class Watch:
    """Come back when OpenNebula shows one of `vms` (VM id -> state as the step saw it, see vmops.watch_state)
    in another state, or at the latest after `within` seconds (None: no time limit). The loop puts the
    environment in the watch set (functions.store.watching); the watcher (functions.engine.watch) polls every
    watched VM of an endpoint in one call and kicks only the environments whose VMs changed."""

    vms: Mapping[int, str]
    within: float | None = None


Step = float | Watch | None   # None: nothing more to do; 0: next step now; > 0: come back in that many
                              # seconds; Watch: come back when a VM changes
EndHook = Callable[["Ctx", "Env", str], None]   # (ctx, env, job status) after a job ended
CapacityHook = Callable[["Ctx", "Env", VmRecord], "str | None"]   # None: allocate now; else why to wait


def later(*waits: Step) -> Step:
    """The wait of a step made of several parts: None parts are done; any 0 means now; delays give the
    soonest; watches merge their VMs and keep the soonest delay as their `within`. None if every part is done."""
    delays = [w for w in waits if isinstance(w, int | float)]
    watches = [w for w in waits if isinstance(w, Watch)]
    soonest = min(delays, default=None)
    if not watches or soonest == 0:
        return soonest
    vms: dict[int, str] = {}
    for w in watches:
        vms.update(w.vms)
    limits = [x for x in [soonest, *(w.within for w in watches)] if x is not None]
    return Watch(vms, min(limits, default=None))


@dataclass
class Env:
    """An environment as loaded for one step."""

    envid: str
    data: dict[str, Any]
    vms: dict[str, VmRecord]
    fresh: set[str] = field(default_factory=set)   # slots whose VM this step allocated (PENDING, not observed)

    @property
    def service(self) -> str:
        return str(self.data.get("service", ""))

    @property
    def name(self) -> str:
        return str(self.data.get("name", ""))

    @property
    def spec(self) -> dict[str, Any]:
        return self.data.get("spec") or {}

    @property
    def cfg(self) -> dict[str, Any]:
        return specview.env_entry(self.spec)

    @property
    def endpoint(self) -> str:
        return str(self.data.get("endpoint") or specview.endpoint(self.spec))

    @property
    def op(self) -> str:
        return str(self.data.get("op") or "CREATE")

    @property
    def jobid(self) -> str:
        return str(self.data.get("job") or "")

    def num(self, name: str, default: float = 0.0) -> float:
        try:
            return float(self.data.get(name) or default)
        except (TypeError, ValueError):
            return default

    def slaves(self) -> list[VmRecord]:
        return sorted((v for v in self.vms.values() if v.role == "slave"), key=lambda v: v.index)


@dataclass
class Ctx:
    """What a step needs: Redis, the queue, settings, the clock and the two outside worlds (OpenNebula, SSH)."""

    r: redis.Redis
    queue: Queue
    settings: Settings
    clock: Clock = system_clock
    one_factory: Callable[[str, str], OneClient] = OneClient
    ssh: Callable[..., tuple[sshexec.SshResult, str]] = sshexec.run_remote
    ssh_batch: sshexec.Batch | None = None     # None: sshexec.run_batch, or `ssh` one command at a time if replaced
    clients: dict[str, OneClient] = field(default_factory=dict)
    on_end: Sequence[EndHook] = ()
    capacity: CapacityHook | None = None
    _install: str = ""
    fence: str = ""             # the env lock's owner token while a step runs (fenced writes)

    def put_vm(self, env: Env, rec: VmRecord) -> None:
        """Write a VM record, fenced by the env lock this step holds (LockLost if it was lost)."""
        envstore.put_vm(self.r, env.envid, rec, fence=self.fence or None)

    def put_vms(self, env: Env, recs: Sequence[VmRecord]) -> None:
        """put_vm for several records in one fenced call (all or none; LockLost if the lock was lost)."""
        envstore.put_vms(self.r, env.envid, recs, fence=self.fence or None)

    def del_vm(self, env: Env, slot: str) -> None:
        """Forget a VM record, fenced like put_vm."""
        envstore.del_vm(self.r, env.envid, slot, fence=self.fence or None)

    def batch_ssh(self) -> sshexec.Batch:
        """How a step runs several commands on one VM: `ssh_batch` if set; else sshexec.run_batch (one connection)
        with the real `ssh`, or a stand-in `ssh` (a test's) called once per command."""
        if self.ssh_batch is not None:
            return self.ssh_batch
        return sshexec.run_batch if self.ssh is sshexec.run_remote else sshexec.one_by_one(self.ssh)

    def install(self) -> str:
        """This installation's id (tags every VM), read once per context."""
        if not self._install:
            self._install = install.installation_id(self.r, self.settings.home)
        return self._install

    def event(self, env: Env, kind: str, msg: str, **extra: str) -> None:
        envstore.add_event(self.r, env.envid, env.service, kind, msg, self.clock, **extra)
        (log.warning if kind == "error" else log.info)("env %s: %s", env.envid, msg)

    def events(self, env: Env, events: Sequence[tuple[str, str, dict[str, str]]]) -> None:
        """`event` for several (kind, msg, extra) events, written in one round trip."""
        envstore.add_events(self.r, env.envid, env.service, events, self.clock)
        for kind, msg, _ in events:
            (log.warning if kind == "error" else log.info)("env %s: %s", env.envid, msg)

    def one(self, env: Env) -> OneClient:
        """The OneClient for the env's endpoint: spec proxy + oneauth from the service's stored config."""
        url = specview.proxy(env.spec)
        if url not in self.clients:
            conf = tenants.get_config(self.r, env.service) or {}
            auth = ((conf.get("ENDPOINT") or {}).get(env.endpoint) or {}).get("oneauth")
            if not auth:
                raise OneError(-1, f"endpoint {env.endpoint!r}: no oneauth in the service's current config")
            self.clients[url] = self.one_factory(url, auth)
        return self.clients[url]


def load(r: redis.Redis, envid: str) -> Env | None:
    data = envstore.get_env(r, envid)
    return None if data is None else Env(envid=envid, data=data, vms=envstore.get_vms(r, envid))


def work_pending(r: redis.Redis, env: Env) -> bool:
    """True while the environment's current job is not final (a job not yet written counts if it holds the op)."""
    if not env.jobid:
        return False
    job = envstore.get_job(r, env.jobid)
    if job is None:
        return guards.current_op(r, env.envid) == env.jobid
    return job.get("status") not in FINAL


# ---------------------------------------------------------------- ending an operation


def _end(ctx: Ctx, env: Env, job_status: str, info: str, **fields: Any) -> None:
    envstore.finish_job(ctx.r, env.jobid, job_status, ctx.clock, info,
                        fence=(env.envid, ctx.fence) if ctx.fence else None)
    envstore.update_env(ctx.r, env.envid, info=info, retries=0, **fields)
    guards.release_op(ctx.r, env.envid, env.jobid)
    scripts.run(ctx.r, "clear_inflight", [keys.env(env.envid), keys.inflight()], [env.envid, env.jobid])
    ctx.r.zrem(keys.kick_schedule(), env.envid)      # its delayed kick (a deadline) has nothing left to do
    for hook in ctx.on_end:
        hook(ctx, env, job_status)


def finish(ctx: Ctx, env: Env, info: str, **fields: Any) -> Step:
    """End the current job DONE. Safe to run twice."""
    _end(ctx, env, "DONE", info, phase="done", **fields)
    ctx.event(env, "step", f"{env.op} job {env.jobid} DONE: {info}", job=env.jobid)
    return None


def fail(ctx: Ctx, env: Env, status: str, why: str, job_status: str = "FAIL") -> Step:
    """End the current job FAIL (VMs are kept: the user removes the environment). Safe to run twice."""
    _end(ctx, env, job_status, why, phase="failed", status=status, error=why)
    ctx.event(env, "error", f"{env.op} job {env.jobid} {job_status}: {why}", job=env.jobid)
    return None


def deadline_passed(ctx: Ctx, env: Env) -> bool:
    return bool(env.num("deadline")) and ctx.clock() >= env.num("deadline")
