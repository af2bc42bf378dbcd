"""Helpers for driving the engine Rig under the global scheduler: upload a global configuration, configure a
second service on its own endpoint (a pool of its own), run allocation passes, drive an environment until its job
ends (answering MASTER_INIT_DONE like a master would), and read requests / pools / counters back."""

from __future__ import annotations

from typing import Any

import yaml

from functions.conf.schema import load_config
from functions.gs.allocate import usage
from functions.gs.model import ALLOCATED, PEND, Request, Size
from functions.ops import gsadmin, gsched, operations
from functions.store import envstore, gsstore, tenants
from tests.integration.engine_fixtures import BAD_VM_TEXT, SERVICE, VM_TEXT, Rig, env_entry

FINAL = ("DONE", "FAIL", "ABORT")


def upload_global(rig: Rig, pools: dict[str, tuple[str, int, int]],
                  services: dict[str, tuple[str, int, int]], **extra: dict[str, Any]) -> None:
    """Upload a global configuration through its validation: pools name -> (class, vCPUs, MB) all in zone `lab`,
    services name -> (class, max vCPUs, max MB); `extra` adds keys to a service's entry."""
    conf = {"SHAREDPOOLS": {name: {"zone": "lab", "allocateable_cpus": cpus, "allocateable_mem": mem,
                                   "service_class": cls} for name, (cls, cpus, mem) in pools.items()},
            "SERVICES": {name: {"priority": cls, "maxcpus": cpus, "maxmemory": mem, **extra.get(name, {})}
                         for name, (cls, cpus, mem) in services.items()}}
    gsadmin.upload_global(rig.r, yaml.safe_dump(conf), "yaml", rig.clock)


def add_service(rig: Rig, name: str, cls: str, endpoint: str, **over: Any) -> None:
    """A second service `name` of class `cls` whose `web` environment uses endpoint `endpoint` (the simulator)."""
    tenants.add_service(rig.r, name, cls, clock=rig.clock)
    tenants.save_vm_file(rig.r, name, "small.vm", VM_TEXT)
    tenants.save_vm_file(rig.r, name, "bad.vm", BAD_VM_TEXT)
    configure(rig, name, endpoint, **over)


def configure(rig: Rig, service: str, endpoint: str, **over: Any) -> None:
    """Upload `service`'s config: endpoint `endpoint` on the simulator, the `web` entry changed by `over`."""
    cfg = {"ENDPOINT": {endpoint: {"proxy": rig.sim.url, "oneauth": rig.sim.auth}},
           "TEMPLATE": {"small": {"file": "small.vm", "cpu": 1, "memory": 512, "network_id": {endpoint: 0},
                                  "image_id": {endpoint: 0}}},
           "ENVIRONMENT": {"web": env_entry(endpoint=endpoint, **over)}}
    text = yaml.safe_dump(cfg)
    tenants.save_config(rig.r, service, load_config(text, "yaml", {"small.vm", "bad.vm"}), text, "yaml", rig.clock)


def create(rig: Rig, service: str = SERVICE) -> tuple[str, str]:
    return operations.request_create(rig.r, rig.queue, service, "web", rig.clock, rig.settings)


def allocate(rig: Rig) -> dict[str, Any]:
    """One allocation pass, as the queued functions.tasks.gs_allocate job would run it."""
    gsstore.clear_alloc_job(rig.r)
    return gsched.allocate_now(rig.r, rig.queue, rig.clock)


def settle(rig: Rig, envid: str, jobid: str, rounds: int = 40, setup: float = 20.0,
           step: float = 5.0) -> dict[str, str]:
    """Allocate, drive, tick and answer the master's MASTER_INIT_DONE until the job ends (or `rounds` pass).
    Returns the job."""
    for _ in range(rounds):
        if rig.job(jobid).get("status") in FINAL:
            break
        allocate(rig)
        rig.drive(envid)
        master = rig.vms(envid).get("m") if envstore.get_env(rig.r, envid) else None
        if master is not None and master.state == "running" and not master.init and rig.env(envid).get("phase") \
                == "master_init":
            rig.callback(envid, "m", "MASTER_INIT_DONE")
            rig.clock.advance(setup)
        rig.tick(step)
    return rig.job(jobid)


def requests(rig: Rig, envid: str | None = None) -> list[Request]:
    """Every request kept (of `envid` when given), by id."""
    return [s.req for s in gsstore.listed(rig.r) if envid is None or s.req.envid == envid]


def statuses(rig: Rig, envid: str) -> list[tuple[str, str]]:
    """(slot, status) of the environment's requests, by id."""
    return [(s.slot, s.req.status) for s in gsstore.listed(rig.r) if s.req.envid == envid]


def pool_free(rig: Rig) -> dict[str, tuple[int, int]]:
    """name -> (free vCPUs, free MB) as --pools shows them."""
    return {d["name"]: (d["availvcpus"], d["availmem"]) for d in gsadmin.pool_docs(rig.r)}


def assert_consistent(rig: Rig) -> None:
    """The counters equal what ALLOCATED requests hold; every ALLOCATED request is bound to a VM record of its
    slot (same incarnation) whose environment exists; no live request of a missing environment."""
    assert gsstore.check_counters(rig.r) == [], "usage counters drifted from the requests"
    live = [s for s in gsstore.live(rig.r)]
    held_pool, held_svc = usage(s.req for s in live)
    assert gsstore.counters(rig.r) == (held_pool, held_svc)
    for stored in live:
        env = envstore.get_env(rig.r, stored.req.envid)
        assert env is not None, f"request {stored.req.id} outlives environment {stored.req.envid}"
        assert gsstore.slot_request(rig.r, stored.req.envid, stored.slot) == stored
        if stored.req.status == ALLOCATED:
            rec = rig.vms(stored.req.envid).get(stored.slot)
            if rec is not None:
                assert rec.nonce == stored.nonce, f"request {stored.req.id} bound to another incarnation"


def held(rig: Rig) -> Size:
    """Everything ALLOCATED requests hold."""
    return sum((s.req.size for s in gsstore.live(rig.r) if s.req.status == ALLOCATED), Size())


def pending(rig: Rig) -> list[Request]:
    return [s.req for s in gsstore.live(rig.r) if s.req.status == PEND]
