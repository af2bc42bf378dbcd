"""Helpers for the policy tests: the minute tick as the scheduler runs it (refresh from the simulator, then the
policy pass), driving an environment's operation to its end, and faults injected through onesim's own XML-RPC
methods (onesim/faults.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from functions.conf.schema import load_config
from functions.ops import operations
from functions.store import envstore, guards
from functions.upkeep import ticks
from functions.views import shapes
from tests.integration.engine_fixtures import SERVICE, Rig, drive_ready, env_entry

GRACE = 120.0
GUIDE = Path(__file__).resolve().parents[2] / "config/examples/config.rb"
ACTIVE, PASSIVE = "tomcat_ha_active", "tomcat_ha_passive"


def guide_pair() -> dict[str, dict[str, Any]]:
    """The guide's active/passive pair (config/examples/config.rb) with its policies and sizes, on the rig's
    endpoint and templates."""
    guide = load_config(GUIDE.read_text(), "rb", {"example.vm", "cassandra.vm"})
    out = {}
    for name in (ACTIVE, PASSIVE):
        entry = guide["ENVIRONMENT"][name]
        out[name] = env_entry(num_slaves=entry["num_slaves"], master_setup_time=0, drain_time=0,
                              availability_policy=entry["availability_policy"],
                              elasticity_policy=entry.get("elasticity_policy"))
    return out


def minute(rig: Rig, grace: float = GRACE) -> dict[str, Any]:
    """Move to the next minute (the simulator ticks once) and run the minute tick; returns the policy stats."""
    rig.tick(60.0)
    stats = ticks.tick(rig.r, rig.queue, rig.clock, one_factory=rig.ctx().one_factory, grace=grace)
    assert stats is not None, "a new minute always runs"
    return stats["policies"]


def settle(rig: Rig, envid: str, rounds: int = 30, until: str = "") -> None:
    """Drive the env's current operation to its end (or until its phase is `until`), letting the simulator
    move (2 s per round)."""
    for _ in range(rounds):
        if guards.current_op(rig.r, envid) is None:
            return
        rig.drive(envid)
        if guards.current_op(rig.r, envid) is None or (until and rig.env(envid).get("phase") == until):
            return
        rig.tick(2.0)
    raise AssertionError(f"env {envid}: operation still running: {rig.env(envid).get('phase')}")


def last_job(rig: Rig, envid: str) -> dict[str, str]:
    """The env's most recent job."""
    jobs = [j for j in envstore.list_jobs(rig.r, SERVICE) if j.get("envid") == envid]
    return jobs[-1]


def policy_jobs(rig: Rig, envid: str) -> list[dict[str, Any]]:
    """The env's jobs started by a policy, as `--jobs --json` shows them."""
    docs = [shapes.job_json(j) for j in envstore.list_jobs(rig.r, SERVICE) if j.get("envid") == envid]
    return [d for d in docs if d["origin"] == "policy"]


def env_doc(rig: Rig, envid: str) -> dict[str, Any]:
    """The env as `--envs --json` shows it."""
    return shapes.env_json(rig.env(envid), len(rig.vms(envid)))


def fail_vm(rig: Rig, vmid: int | None, kind: str) -> None:
    """onesim fault: make the VM UNKNOWN / BOOT_FAILURE / ..., or `vanish` (deleted behind Carina's back)."""
    ok, *_ = rig.rpc().onesim.vm.fail(rig.sim.auth, vmid, kind)
    assert ok


def set_cpu(rig: Rig, vmid: int | None, pct: float) -> None:
    """onesim fault: the VM's monitored CPU %."""
    ok, *_ = rig.rpc().onesim.vm.setcpu(rig.sim.auth, vmid, pct)
    assert ok


def create_named(rig: Rig, name: str) -> str:
    """Create configuration `name` (already uploaded) and drive it to its end. Returns the envid."""
    envid, jobid = operations.request_create(rig.r, rig.queue, SERVICE, name, rig.clock, rig.settings)
    drive_ready(rig, envid, jobid)
    return envid
