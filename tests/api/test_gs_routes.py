"""The global scheduler's routes on the real gateway app and a real redis-server: the admin's upload of the global
configuration (POST/GET /global), the --pools, --services and --requests tables and JSON (the guide's columns,
the original's keys), who sees what, and the environments' gsTokens / gsOutStandingReqs."""

from __future__ import annotations

from pathlib import Path

from functions.gs.model import ALLOCATED, Request
from functions.store import gsstore, tenants
from tests.api.conftest import Api, bearer
from tests.api.test_env_routes import CONFIG, TEXT, _create, _setup

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"
GLOBAL = """SHAREDPOOLS = {
  'onesim' => {:zone => 'lab', :allocateable_cpus => '8', :allocateable_mem => '8192', :service_class => 'silver'},
  'onesim-gold' => {:zone => 'lab', :allocateable_cpus => 16, :allocateable_mem => 32768, :service_class => 'gold'},
}
SERVICES = {
  'svc1' => {:priority => 'silver', :maxcpus => 12, :maxmemory => 16384},
  'svc2' => {:priority => 'gold', :maxcpus => 16, :maxmemory => 32768},
  'batch' => {:priority => 'bronze', :maxcpus => 4, :maxmemory => 4096},
}
"""


def _upload(api: Api, text: str, token: str | None = None, **params: str):
    return api.client.simulate_post("/global", params=params or {"kind": "rb"}, body=text.encode(),
                                    headers=bearer(token or api.admin, **{"Content-Type": "text/plain"}))


def _gold(api: Api) -> str:
    """Service svc2 (gold) with the same configuration as svc1; its token."""
    token = api.service("svc2", "gold")
    tenants.save_config(api.r, "svc2", CONFIG, "# source", "rb", clock=api.clock)
    tenants.save_vm_file(api.r, "svc2", "example.vm", "NAME = \"%NAME%\"\nCPU = %CPU%\n")
    return token


def _request(api: Api, envid: str, service: str, slot: str, pool: str = "onesim", grant: bool = True) -> int:
    """A request of `envid`'s `slot` as the capacity hook records it, granted in `pool` when `grant`."""
    req = Request(id=0, envid=envid, service=service, vcpus=1, memory=512, pool_wanted=pool, cls="silver",
                  created=api.clock(), env="tomcat")
    stored = gsstore.new_request(api.r, req, slot)
    if grant:
        assert gsstore.move(api.r, stored.req.id, ("PEND",), ALLOCATED, pool=pool) == "ok"
    return stored.req.id


def test_only_the_admin_uploads_and_reads_the_global_configuration(api: Api) -> None:
    token = _setup(api, "svc1")
    api.service("svc2", "gold")
    assert _upload(api, GLOBAL, token).status_code == 403
    assert api.client.simulate_get("/global", headers=bearer(token)).status_code == 403
    assert api.client.simulate_get("/global", headers=bearer(api.admin)).status_code == 404
    res = _upload(api, GLOBAL)
    assert res.status_code == 200 and res.json == {"status": "OK", "pools": 2, "services": 3}
    res = api.client.simulate_get("/global", headers=bearer(api.admin))
    assert res.json["kind"] == "rb" and res.json["source"] == GLOBAL
    assert res.json["SHAREDPOOLS"]["onesim"] == {"zone": "lab", "allocateable_cpus": 8, "allocateable_mem": 8192,
                                                 "service_class": "silver"}
    assert res.json["SERVICES"]["batch"] == {"priority": "bronze", "maxcpus": 4, "maxmemory": 4096}
    yaml_text = (EXAMPLES / "global.yaml").read_text().replace("oneenv1", "svc1").replace("oneenv2", "svc2")
    res = _upload(api, yaml_text, kind="yaml")
    assert res.status_code == 200
    assert api.client.simulate_get("/global", headers=bearer(api.admin)).json["kind"] == "yaml"


def test_a_refused_upload_names_every_problem_and_changes_nothing(api: Api) -> None:
    _setup(api, "svc1")
    api.service("svc2", "gold")
    assert _upload(api, GLOBAL).status_code == 200
    bad = GLOBAL.replace("'8192'", "'lots'").replace(":priority => 'gold'", ":priority => 'diamond'")
    res = _upload(api, bad)
    assert res.status_code == 422
    assert res.json["errors"] == [
        "SHAREDPOOLS.onesim.allocateable_mem: must be an integer",
        "SERVICES.svc2.priority: unknown class 'diamond' (use one of bronze, silver, gold, platinum, lowest first)"]
    assert "unchanged" in res.json["description"]
    api.service("batch", "silver")                              # SERVICES says bronze
    api.service("extra")                                        # not in SERVICES at all
    res = _upload(api, GLOBAL)
    assert res.status_code == 422
    assert res.json["errors"] == [
        "service batch: class silver (carina-admin service add --class) but SERVICES.batch.priority is bronze; "
        "make them agree",
        "service extra: not in SERVICES of the global configuration; add 'extra' => {:priority => 'silver', "
        ":maxcpus => N, :maxmemory => MB}"]
    assert api.client.simulate_get("/global", headers=bearer(api.admin)).json["source"] == GLOBAL
    assert _upload(api, GLOBAL, kind="json").status_code == 400
    assert api.client.simulate_post("/global", body=GLOBAL, headers=bearer(api.admin)).status_code == 400


def test_a_new_service_must_agree_with_the_global_configuration(api: Api) -> None:
    assert _upload(api, GLOBAL).status_code == 200
    res = api.client.simulate_post("/services", json={"name": "svc2", "class": "silver"}, headers=bearer(api.admin))
    assert res.status_code == 422
    assert res.json["description"] == ("service svc2: class silver (carina-admin service add --class) but "
                                       "SERVICES.svc2.priority is gold; make them agree")
    res = api.client.simulate_post("/services", json={"name": "svc2", "class": "gold"}, headers=bearer(api.admin))
    assert res.status_code == 201


def test_a_pool_still_in_use_cannot_be_dropped(api: Api) -> None:
    token = _setup(api, "svc1")
    api.service("svc2", "gold")
    assert _upload(api, GLOBAL).status_code == 200
    envid, _ = _create(api, token)
    reqid = _request(api, envid, "svc1", "m")
    res = _upload(api, GLOBAL.replace("  'onesim' =>", "  #'onesim' =>"))
    assert res.status_code == 422
    assert res.json["errors"] == [f"SHAREDPOOLS.onesim: still holds request(s) {reqid}; keep the pool until "
                                  "their VMs are gone"]


def test_the_three_tables_follow_the_guide(api: Api) -> None:
    token = _setup(api, "svc1")
    other = _gold(api)
    assert _upload(api, GLOBAL).status_code == 200
    envid, _ = _create(api, token)
    first = _request(api, envid, "svc1", "m")
    _request(api, envid, "svc1", "s0", grant=False)
    gold_env, _ = _create(api, other)
    _request(api, gold_env, "svc2", "m", pool="onesim-gold")

    res = api.client.simulate_get("/pools", headers=bearer(token, **TEXT))
    assert res.text.splitlines() == [
        "       NAME ZONE PRIORITY_CLASS MEM_TOT MEM_AVAIL VCPUS_TOT VCPUS_AVAIL",
        "       ---- ---- -------------- ------- --------- --------- -----------",
        "     onesim  lab         silver    8192      7680         8 7",
        "onesim-gold  lab           gold   32768     32256        16 15"]
    res = api.client.simulate_get("/pools", headers=bearer(token))
    assert res.json[0] == {"name": "onesim", "zone": "lab", "vcpus": 8, "mem": 8192, "priclass": "silver",
                           "availvcpus": 7, "availmem": 7680}

    res = api.client.simulate_get("/services", headers=bearer(api.admin, **TEXT))
    assert res.text.splitlines() == [
        " NAME PRIORITY_CLASS MEM(ALLOC/MAX) VCPUS(ALLOC/MAX) CLIENT",
        " ---- -------------- -------------- ---------------- ------",
        "batch         bronze         0/4096              0/4 NONE",
        " svc1         silver      512/16384             1/12 NONE",
        " svc2           gold      512/32768             1/16 NONE"]
    res = api.client.simulate_get("/services", headers=bearer(token))
    assert res.json == [{"name": "svc1", "zone": None, "maxcpus": 12, "maxmemory": 16384, "priclass": "silver",
                         "vcpusallocated": 1, "memallocated": 512, "client": None, "class": "silver",
                         "mem_alloc": 512, "mem_max": 16384, "vcpus_alloc": 1, "vcpus_max": 12}]
    assert api.client.simulate_get("/services/svc1", headers=bearer(token)).json == res.json[0]

    res = api.client.simulate_get("/requests", headers=bearer(token, **TEXT))   # a service sees its own
    assert res.text.splitlines() == [
        "ID ENVID SERVICE MEM VCPUS    STATUS POOL",
        "-- ----- ------- --- -----    ------ ----",
        f" 1 {envid:>5}    svc1 512     1 ALLOCATED onesim",
        f" 2 {envid:>5}    svc1 512     1      PEND onesim"]
    doc = api.client.simulate_get("/requests", headers=bearer(token)).json[0]
    assert {k: doc[k] for k in ("reqid", "envid", "service", "mem", "vcpus", "status", "pool", "zone", "type")} == {
        "reqid": str(first), "envid": envid, "service": "svc1", "mem": 512, "vcpus": 1, "status": "ALLOCATED",
        "pool": "onesim", "zone": "lab", "type": "ALLOCATE"}
    res = api.client.simulate_get("/requests", headers=bearer(api.admin))         # the admin sees all
    assert [(d["reqid"], d["service"]) for d in res.json] == [("1", "svc1"), ("2", "svc1"), ("3", "svc2")]

    res = api.client.simulate_get("/envs", headers=bearer(token))
    assert res.json[0]["gsTokens"] == [str(first)] and res.json[0]["gsOutStandingReqs"] == 1


def test_without_a_global_configuration_the_tables_are_empty(api: Api) -> None:
    token = _setup(api, "svc1")
    assert api.client.simulate_get("/pools", headers=bearer(token)).json == []
    assert api.client.simulate_get("/requests", headers=bearer(api.admin)).json == []
    res = api.client.simulate_get("/requests", headers=bearer(token, **TEXT))
    assert res.text.splitlines()[0].split() == ["ID", "ENVID", "SERVICE", "MEM", "VCPUS", "STATUS", "POOL"]
    assert api.client.simulate_get("/services", headers=bearer(token)).json[0]["vcpusallocated"] == 0


def test_a_refusal_quoting_a_lone_surrogate_is_still_a_json_answer(api: Api) -> None:
    """Schemathesis found it: a YAML key written as "\\uda77" decodes to a lone surrogate; the refusal quoting it
    could not be encoded as UTF-8 and the gateway answered 500 with no body."""
    api.service("svc1", "silver")
    res = _upload(api, '{"\\uda77\\udf74f": [{}, {}], "2": [{"x": false}], "": []}', kind="yaml")
    assert res.status_code == 422, res.text
    assert res.headers["content-type"].startswith("application/json")
    assert "\\uda77" in res.text and res.json["errors"]                 # the key, escaped, in valid JSON
    res = _upload(api, "SERVICES: {caf\u00e9: {priority: silver, maxcpus: 1, maxmemory: 1}}", kind="yaml")
    assert "caf\u00e9" in res.text                                       # other text stays plain UTF-8


def test_dumps_escapes_only_what_utf8_cannot_carry() -> None:
    from handlers.media import dumps

    assert dumps({"k": "caf\u00e9"}) == '{"k": "caf\u00e9"}'
    assert dumps({"k": "\udab7"}) == '{"k": "\\udab7"}'
