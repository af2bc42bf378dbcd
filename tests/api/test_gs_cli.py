"""The global scheduler from the command line: bin/carina-admin installs the global configuration (validated, a
refused file changes nothing) against the real Redis, and bin/oneenv shows --pools, --services and --requests
through a real gunicorn gateway, as tables with the guide's columns or as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from functions.gs.model import ALLOCATED, Request
from functions.store import gsstore
from tests.api import test_cli
from tests.api.test_cli import admin, oneenv
from tests.harness import RedisServer

gateway = test_cli.gateway          # the real gunicorn gateway fixture (module scope: one for this module)

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"


def _token(res) -> str:
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[-1]


def test_carina_admin_installs_the_global_configuration(rdb: redis.Redis, redis_server: RedisServer,
                                                        tmp_path: Path) -> None:
    _token(admin(redis_server, tmp_path, "service", "add", "oneenv1"))
    bad = tmp_path / "global.rb"
    bad.write_text("SHAREDPOOLS = {'p' => {:zone => 'z', :allocateable_cpus => 'x'}}\nSERVICES = {}\n")
    res = admin(redis_server, tmp_path, "global", "--upload", str(bad))
    assert res.returncode == 1 and "the configuration in force is unchanged" in res.stderr
    assert "  SHAREDPOOLS.p.allocateable_cpus: must be an integer" in res.stderr.splitlines()
    assert "  SHAREDPOOLS.p.service_class: missing (required)" in res.stderr.splitlines()
    res = admin(redis_server, tmp_path, "global", "--show")
    assert res.returncode == 1 and "no global configuration" in res.stderr
    _token(admin(redis_server, tmp_path, "service", "add", "arch", "--class", "gold"))
    res = admin(redis_server, tmp_path, "global", "--upload", str(EXAMPLES / "global.yaml"))
    assert res.returncode == 1 and "  service arch: not in SERVICES of the global configuration; add 'arch' => " \
        "{:priority => 'gold', :maxcpus => N, :maxmemory => MB}" in res.stderr.splitlines()
    assert admin(redis_server, tmp_path, "service", "remove", "arch").returncode == 0
    res = admin(redis_server, tmp_path, "global", "--upload", str(EXAMPLES / "global.yaml"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "global configuration installed: 2 pools, 3 services"
    res = admin(redis_server, tmp_path, "global", "--show")
    assert res.returncode == 0 and res.stdout == (EXAMPLES / "global.yaml").read_text()
    res = admin(redis_server, tmp_path, "service", "add", "batch", "--class", "silver")
    assert res.returncode == 1 and "SERVICES.batch.priority is bronze; make them agree" in res.stderr
    _token(admin(redis_server, tmp_path, "service", "add", "batch", "--class", "bronze"))
    other = tmp_path / "global.txt"
    other.write_text((EXAMPLES / "global.rb").read_text())
    res = admin(redis_server, tmp_path, "global", "--upload", str(other))
    assert res.returncode == 1 and "--kind" in res.stderr
    res = admin(redis_server, tmp_path, "global", "--upload", str(other), "--kind", "rb")
    assert res.returncode == 0, res.stderr


def test_oneenv_shows_pools_services_and_requests(rdb: redis.Redis, redis_server: RedisServer, gateway: str,
                                                  tmp_path: Path) -> None:
    token = _token(admin(redis_server, tmp_path, "service", "add", "oneenv1"))
    _token(admin(redis_server, tmp_path, "service", "add", "oneenv2", "--class", "gold"))
    assert admin(redis_server, tmp_path, "global", "--upload", str(EXAMPLES / "global.rb")).returncode == 0
    for slot in ("s0", "s1"):
        req = Request(id=0, envid="14", service="oneenv1", vcpus=1, memory=512, pool_wanted="onesim", cls="silver")
        stored = gsstore.new_request(rdb, req, slot)
    assert gsstore.move(rdb, 1, ("PEND",), ALLOCATED, pool="onesim") == "ok"
    res = oneenv(gateway, tmp_path, "--pools", token=token)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "       NAME ZONE PRIORITY_CLASS MEM_TOT MEM_AVAIL VCPUS_TOT VCPUS_AVAIL",
        "       ---- ---- -------------- ------- --------- --------- -----------",
        "     onesim  lab         silver    8192      7680         8 7",
        "onesim-gold  lab           gold   32768     32768        16 16"]
    res = oneenv(gateway, tmp_path, "--services", token=token)
    assert res.stdout.splitlines() == [
        "   NAME PRIORITY_CLASS MEM(ALLOC/MAX) VCPUS(ALLOC/MAX) CLIENT",
        "   ---- -------------- -------------- ---------------- ------",
        "oneenv1         silver      512/16384             1/12 NONE"]
    res = oneenv(gateway, tmp_path, "--requests", token=token)
    assert res.stdout.splitlines() == [
        "ID ENVID SERVICE MEM VCPUS    STATUS POOL",
        "-- ----- ------- --- -----    ------ ----",
        " 1    14 oneenv1 512     1 ALLOCATED onesim",
        f" {stored.req.id}    14 oneenv1 512     1      PEND onesim"]
    res = oneenv(gateway, tmp_path, "--requests", "--json", token=token)
    docs = json.loads(res.stdout)
    assert [(d["reqid"], d["status"], d["pool"], d["zone"]) for d in docs] == [
        ("1", "ALLOCATED", "onesim", "lab"), ("2", "PEND", "onesim", "lab")]
    res = oneenv(gateway, tmp_path, "-S", "-j", token=token)
    assert json.loads(res.stdout)[0]["priclass"] == "silver" and json.loads(res.stdout)[0]["vcpusallocated"] == 1
