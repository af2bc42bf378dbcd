"""Filling for bench/policy_tick_bench.py: simulators holding the environments' VMs, and Redis holding what a
real create leaves for each environment (copied from one environment created by the engine)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml

from bench.common import wait_until
from bench.sim_pool_bench import guest_mode, inventory
from functions.conf.schema import load_config
from functions.store import keys, tenants
from tests.harness import RedisServer, free_port, project_env, wait_port

ROOT = Path(__file__).resolve().parent.parent
AUTH = "oneadmin:onesim"
ENDPOINTS = 4
VMS = 10
PER_SERVICE = 1000
BATCH = 1000
T0 = 1_790_000_000.0
AUTO = {"mode": "auto", "min": 2, "max": 20, "period": 3, "scaleup_expr": "avgcpu > 70",
        "scaledown_expr": "avgcpu < 5", "cooldown": 120}
RECREATE = {"period": 3, "recreate_expr": "nummissing > 0 || numunknown > 0 || numfailed > 0"}
WINDOWS = {"mode": "time-based", "timezone": "Europe/Paris",
           "windows": {"office": {"spec": "Mon-Fri 0800-1800", "min": 10}, "night": {"spec": "0000-0600", "min": 2}}}
FAILOVER = {"period": 3, "failover_role": "active", "failover_group": "g",
            "failover_expr": "(numunknown + nummissing + numfail)/numvms > 0.50", "failback_expr": "numunknown == 0"}
VM_TEMPLATE = """NAME = "{name}-{short}"
CPU = 0.1
MEMORY = 64
DISK = [ IMAGE_ID = 0 ]
NIC = [ NETWORK_ID = 0 ]
CONTEXT = [ ENVID = "{envid}", IP = "$NIC[IP]", CARINA_SLOT = "{slot}", CARINA_ROLE = "{role}",
  CARINA_TOKEN = "{envid}.{slot}.3f1e9d3c0b7a4e2f9c8d7b6a5f4e3d2c1b0a99887766554433221100ffeeddcc" ]
CARINA_SERVICE = "{service}"
CARINA_ENVID = "{envid}"
CARINA_ROLE = "{role}"
CARINA_SLOT = "{slot}"
CARINA_NONCE = "{nonce}"
"""


@dataclass
class Sim:
    """One simulator standing for one endpoint."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str

    def rpc(self) -> Any:
        return xmlrpc.client.ServerProxy(self.url).onesim


@dataclass
class Template:
    """What one real create of 1 + 9 VMs left: the env hash, VM records, env events, job hash."""

    env: dict[str, str]
    vms: dict[str, dict[str, Any]]
    events: list[dict[str, str]]
    job: dict[str, str]
    spec: dict[str, Any] = field(default_factory=dict)


def _entry(**extra: object) -> dict[str, object]:
    return {"type": "compute", "endpoint": "e0", "master_template": "t", "slave_template": "t",
            "num_slaves": VMS - 1, **extra}


def config_text(urls: list[str]) -> str:
    """The services' configuration (YAML): 4 endpoints, the four kinds of environment."""
    cfg = {"ENDPOINT": {f"e{i}": {"proxy": url, "oneauth": AUTH} for i, url in enumerate(urls)},
           "TEMPLATE": {"t": {"file": "t.vm", "cpu": 1, "memory": 512, "network_id": {f"e{i}": 0 for i in range(4)},
                              "image_id": {f"e{i}": 0 for i in range(4)}}},
           "ENVIRONMENT": {"web": _entry(elasticity_policy=AUTO, availability_policy=RECREATE),
                           "batch": _entry(elasticity_policy=WINDOWS),
                           "ha_a": _entry(availability_policy=dict(FAILOVER, recreate_expr=RECREATE["recreate_expr"])),
                           "ha_p": _entry(elasticity_policy=WINDOWS,
                                          availability_policy={"period": 3, "failover_role": "passive",
                                                               "failover_group": "g"})}}
    return yaml.safe_dump(cfg)


def kind(k: int) -> str:
    """The configuration name of environment number k (0-based)."""
    slot = k % 10
    return "web" if slot < 7 else "batch" if slot < 9 else ("ha_a" if k % 20 == 9 else "ha_p")


def slot_of(i: int) -> tuple[str, str]:
    return ("m", "master") if i == 0 else (f"s{i - 1}", "slave")


# ---------------------------------------------------------------- one real create


def capture_template(workdir: Path) -> Template:
    """Create one environment of 1 + 9 VMs through the engine (a simulator, a scratch Redis) and keep what
    it left in Redis."""
    from tests.integration.engine_fixtures import create_ready, open_rig

    server = RedisServer(Path(tempfile.mkdtemp(dir=workdir)), appendfsync="everysec").start()
    try:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        rigs = open_rig(r)
        rig = next(rigs)
        try:
            envid, jobid = create_ready(rig, num_slaves=VMS - 1, master_setup_time=0)
            env = r.hgetall(keys.env(envid))
            vms = {slot: json.loads(text) for slot, text in r.hgetall(keys.env_vms(envid)).items()}
            events = [fields for _, fields in r.xrange(keys.env_events(envid))]
            job = r.hgetall(keys.job(jobid))
        finally:
            rigs.close()
        return Template(env, vms, events, job, json.loads(env["spec"]))
    finally:
        server.kill()


# ---------------------------------------------------------------- simulators


def start_sims(workdir: Path, n_envs: int) -> list[Sim]:
    """One simulator per endpoint, sized for its share of the VMs (no lifecycle delays, no own monitoring)."""
    per = (n_envs + ENDPOINTS - 1) // ENDPOINTS * VMS
    sims = []
    for e in range(ENDPOINTS):
        port, ssh_port = free_port(), free_port()
        home = workdir / f"onesim-{n_envs}-e{e}"
        args = [sys.executable, "-m", "onesim", "--port", str(port), "--auth", AUTH, "--guests", guest_mode(per),
                "--ssh-port", str(ssh_port), "--workdir", str(home), "--monitoring-keep", "2",
                "--inventory", str(inventory(workdir / f"inventory-{n_envs}-e{e}.yaml", per))]
        args += [f"--delay-{phase}=0" for phase in ("schedule", "prolog", "boot")] + ["--delay-monitor=3600"]
        with open(workdir / f"onesim-{n_envs}-e{e}.log", "ab") as log:
            proc = subprocess.Popen(args, cwd=ROOT, env=project_env(), stdout=log, stderr=subprocess.STDOUT)
        sims.append(Sim(f"e{e}", proc, f"http://127.0.0.1:{port}/RPC2"))
    for sim in sims:
        wait_port(int(sim.url.rsplit(":", 1)[1].split("/")[0]), timeout=30)
    return sims


def stop_sims(sims: list[Sim]) -> None:
    for sim in sims:
        if sim.proc.poll() is None:
            sim.proc.terminate()
    for sim in sims:
        try:
            sim.proc.wait(15)
        except subprocess.TimeoutExpired:
            sim.proc.kill()
            sim.proc.wait(5)


def _ok(answer: list[Any]) -> Any:
    if not answer[0]:
        raise RuntimeError(str(answer[1]))
    return answer[1]


@dataclass
class Placed:
    """Where each environment's VMs are: envid -> (endpoint index, [vmid per VM]), and which are hot."""

    vmids: dict[str, tuple[int, list[int]]]
    hot: set[str]
    broken: set[tuple[str, int]]


def service_of(k: int) -> str:
    return f"bench{k // PER_SERVICE}"


def fill_sims(sims: list[Sim], n_envs: int, rng: random.Random) -> Placed:
    """Allocate every environment's VMs on its endpoint (env k on endpoint k % 4), wait until all RUNNING,
    set their CPU (1 % of the `auto` envs hot) and make 0.2 % of the VMs UNKNOWN."""
    placed = Placed({}, set(), set())
    for e, sim in enumerate(sims):
        mine = [k for k in range(n_envs) if k % ENDPOINTS == e]
        texts = []
        for k in mine:
            envid = str(k + 1)
            for i in range(VMS):
                slot, role = slot_of(i)
                texts.append(VM_TEMPLATE.format(name=kind(k), short=slot[0], envid=envid, slot=slot, role=role,
                                                service=service_of(k), nonce=f"n{envid}{slot}"))
        proxy = xmlrpc.client.ServerProxy(sim.url)
        ids: list[int] = []
        for first in range(0, len(texts), BATCH):
            ids += _ok(proxy.onesim.vm.allocatebatch(AUTH, texts[first:first + BATCH], False))
        for j, k in enumerate(mine):
            placed.vmids[str(k + 1)] = (e, ids[j * VMS:(j + 1) * VMS])
        if wait_until(lambda p=proxy, last=ids[-1]: "<STATE>3</STATE><LCM_STATE>3</LCM_STATE>" in
                      str(_ok(p.one.vm.info(AUTH, last))), timeout=900, every=0.5) is None:
            raise RuntimeError(f"{sim.name}: VMs did not reach RUNNING")
    for k in range(n_envs):
        if kind(k) == "web" and rng.random() < 0.01:
            placed.hot.add(str(k + 1))
    new_samples(sims, placed, rng)
    for envid, (e, ids) in placed.vmids.items():
        for i, vmid in enumerate(ids):
            if rng.random() < 0.002:
                _ok(xmlrpc.client.ServerProxy(sims[e].url).onesim.vm.fail(AUTH, vmid, "UNKNOWN"))
                placed.broken.add((envid, i))
    return placed


def new_samples(sims: list[Sim], placed: Placed, rng: random.Random) -> None:
    """Every VM gets a new monitoring sample with a new CPU figure (hot envs 75-95 %, others 20-45 %)."""
    per: list[tuple[list[int], list[float]]] = [([], []) for _ in sims]
    for envid, (e, ids) in placed.vmids.items():
        lo, hi = (75, 95) if envid in placed.hot else (20, 45)
        per[e][0].extend(ids)
        per[e][1].extend(round(rng.uniform(lo, hi), 2) for _ in ids)
    for sim, (ids, pcts) in zip(sims, per, strict=True):
        proxy = xmlrpc.client.ServerProxy(sim.url)
        for first in range(0, len(ids), 10_000):
            _ok(proxy.onesim.vm.setcpubatch(AUTH, ids[first:first + 10_000], pcts[first:first + 10_000]))


# ---------------------------------------------------------------- Redis


def _spec(template: Template, service: str, name: str, endpoint: str, url: str,
          cfg: dict[str, Any]) -> str:
    entry = cfg["ENVIRONMENT"][name]
    spec = dict(template.spec, name=name, service=service, endpoint=endpoint, proxy=url,
                elasticity_policy=entry.get("elasticity_policy"), availability_policy=entry.get("availability_policy"))
    return json.dumps(spec)


def _env_writes(p: Any, template: Template, k: int, placed: Placed, sims: list[Sim], spec: str) -> None:
    """Everything the create left for environment k, as the template's create wrote it."""
    envid, name, service = str(k + 1), kind(k), service_of(k)
    e, ids = placed.vmids[envid]
    endpoint, jobid = f"e{e}", envid
    minute = int(T0 // 60) - 1
    env = dict(template.env, envid=envid, name=name, service=service, endpoint=endpoint, proxy=sims[e].url,
               spec=spec, job=jobid, op_job=jobid, policy_status="PASSIVE" if name == "ha_p" else "ACTIVE",
               app_url=f"http://10.{k // 250 % 250}.{k % 250}.1:8080/app", pol_minute=str(minute),
               pol_up="2" if envid in placed.hot else "0", created=str(T0 - 86400))
    p.hset(keys.env(envid), mapping=env)
    p.zadd(keys.service_envs(service), {envid: int(envid)})
    records = {}
    for i, vmid in enumerate(ids):
        slot, _ = slot_of(i)
        ip = f"10.{k // 250 % 250}.{k % 250}.{i + 1}"
        rec = dict(template.vms[slot], vmid=vmid, ip=ip, one_ip=ip, nonce=f"n{envid}{slot}", endpoint=endpoint,
                   created=T0 - 86400, checked="")
        records[slot] = json.dumps(rec, sort_keys=True)
        p.set(keys.vm_index(endpoint, vmid), f"{envid} {slot}")
    p.hset(keys.env_vms(envid), mapping=records)
    for fields in template.events:
        ev = dict(fields, envid=envid)
        p.xadd(keys.env_events(envid), ev, maxlen=10000, approximate=True)
        p.xadd(keys.service_events(service), ev, maxlen=10000, approximate=True)
    job = dict(template.job, jobid=jobid, envid=envid, service=service, name=name)
    job.update({k: str(T0 - 86400) for k in ("created", "start", "end", "updated") if k in job})
    p.hset(keys.job(jobid), mapping=job)
    p.zadd(keys.service_jobs(service), {jobid: T0 - 86400 + k})


def fill_redis(r: redis.Redis, n_envs: int, sims: list[Sim], placed: Placed, template: Template) -> None:
    """Every environment as a create leaves it, in services of PER_SERVICE, configuration uploaded."""
    text = config_text([s.url for s in sims])
    cfg = load_config(text, "yaml", {"t.vm"})
    specs: dict[tuple[str, str, int], str] = {}
    for s in range((n_envs + PER_SERVICE - 1) // PER_SERVICE):
        service = f"bench{s}"
        tenants.add_service(r, service)
        tenants.save_config(r, service, cfg, text, "yaml", lambda: T0 - 3600)
        with r.pipeline(transaction=False) as p:
            for k in range(s * PER_SERVICE, min(n_envs, (s + 1) * PER_SERVICE)):
                e = k % ENDPOINTS
                key = (service, kind(k), e)
                if key not in specs:
                    specs[key] = _spec(template, service, kind(k), f"e{e}", sims[e].url, cfg)
                _env_writes(p, template, k, placed, sims, specs[key])
            p.execute()
