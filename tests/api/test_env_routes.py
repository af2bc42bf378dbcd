"""Environment routes on the real gateway app and a real redis-server: create, lists, scale, remove."""

from __future__ import annotations

import copy
import threading

import falcon.testing
import pytest
import redis

from config.settings import Settings
from functions import errors
from functions.ops import operations
from functions.store import envstore, guards, keys, tenants
from functions.store.envstore import VmRecord
from functions.store.runtime import JsonQueue
from gateway import create_app
from tests.api.conftest import bearer
from tests.harness import twin

TEXT = {"Accept": "text/plain"}
CONFIG = {
    "ENDPOINT": {"onesim": {"proxy": "http://127.0.0.1:2633/RPC2", "oneauth": "oneadmin:s3cret-pw"}},
    "TEMPLATE": {
        "example": {"file": "example.vm", "cpu": 1, "memory": 512, "network_id": {"onesim": 0},
                    "image_id": {"onesim": 0}},
        "elsewhere": {"file": "example.vm", "cpu": 1, "memory": 512, "network_id": {"other": 0},
                      "image_id": {"onesim": 0}},
        "nofile": {"file": "missing.vm", "cpu": 1, "memory": 512, "network_id": {"onesim": 0},
                   "image_id": {"onesim": 0}},
    },
    "ENVIRONMENT": {
        "tomcat": {"type": "compute", "endpoint": "onesim", "description": "1+2", "placement_policy": None,
                   "master_template": "example", "slave_template": "example",
                   "master_context_script": "tomcat-master.sh", "slave_context_script": "tomcat-slave.sh",
                   "master_setup_time": 0, "master_context_var": "", "slave_context_var": "", "num_slaves": 2,
                   "slavedata": "8080", "adminuser": "root", "app_url": "http://%MASTER%:8080/",
                   "master_service_port": "", "app_package": "", "drain_time": 0, "scaledown_verb": "remove",
                   "elasticity_policy": None, "availability_policy": None},
        "analytics": {"type": "group", "description": "g", "members": ["tomcat"], "dependencies": {}},
    },
}


def _variant(name: str, **changes: object) -> dict:
    entry = copy.deepcopy(CONFIG["ENVIRONMENT"]["tomcat"])
    entry.update(changes)
    return {name: entry}


CONFIG["ENVIRONMENT"].update(_variant("nonet", master_template="elsewhere"))
CONFIG["ENVIRONMENT"].update(_variant("novm", slave_template="nofile"))
CONFIG["ENVIRONMENT"].update(_variant("noep", endpoint="ghost"))
CONFIG["ENVIRONMENT"].update(_variant("defdrain", drain_time=None))
CONFIG["ENVIRONMENT"].update({
    "ghostgroup": {"type": "group", "description": "g", "members": ["tomcat", "ghost"], "dependencies": {}},
    "nested": {"type": "group", "description": "g", "members": ["tomcat", "analytics"], "dependencies": {}},
    "badmember": {"type": "group", "description": "g", "members": ["tomcat", "novm"], "dependencies": {}},
    "pair": {"type": "group", "description": "g", "members": ["tomcat", "defdrain"],
             "dependencies": {"defdrain": ["tomcat"]}}})


def _setup(api, name: str = "svc1") -> str:
    token = api.service(name)
    tenants.save_config(api.r, name, CONFIG, "# source", "rb", clock=api.clock)
    tenants.save_vm_file(api.r, name, "example.vm", "NAME = \"%NAME%\"\nCPU = %CPU%\n")
    return token


def _queue(r: redis.Redis) -> JsonQueue:
    return JsonQueue("carina", connection=twin(r))


def _create(api, token: str, name: str = "tomcat") -> tuple[str, str]:
    res = api.client.simulate_post(f"/configs/{name}", headers=bearer(token))
    assert res.status_code == 202, res.text
    return res.json["envid"], res.json["jobid"]


def _finish(api, envid: str) -> None:
    """What the lifecycle does at the end of an op: job DONE, guard released, env ready."""
    jobid = guards.current_op(api.r, envid)
    envstore.finish_job(api.r, jobid, "DONE", api.clock)
    guards.release_op(api.r, envid, jobid)
    envstore.update_env(api.r, envid, policy_status="ACTIVE", status="MASTER_INIT_DONE")


def test_create_records_env_job_event_and_kicks_the_lifecycle(api):
    token = _setup(api)
    envid, jobid = _create(api, token)
    env = envstore.get_env(api.r, envid)
    assert env["service"] == "svc1" and env["op"] == "CREATE" and env["job"] == jobid and env["phase"] == "new"
    assert env["status"] == "INIT" and env["policy_status"] == "INIT"
    spec = env["spec"]
    assert spec["proxy"] == "http://127.0.0.1:2633/RPC2" and spec["endpoint"] == "onesim"
    assert spec["templates"]["master"]["text"].startswith("NAME") and spec["templates"]["slave"]["name"] == "example"
    assert spec["num_slaves"] == 2 and spec["drain_time"] == 0 and spec["name"] == "tomcat"
    assert "s3cret-pw" not in api.r.hget(keys.env(envid), "spec")          # never the oneauth secret
    assert envstore.get_job(api.r, jobid)["type"] == "CREATE"
    assert envid in envstore.inflight(api.r) and guards.current_op(api.r, envid) == jobid
    assert [e["type"] for e in envstore.list_events(api.r, envid)] == ["request"]
    q = _queue(api.r)
    jobs = [q.fetch_job(j) for j in q.job_ids]
    assert [(j.func_name, j.args) for j in jobs] == [("functions.tasks.drive", [envid])]


def test_create_default_drain_time_comes_from_settings(api):
    token = _setup(api)
    envid, _ = _create(api, token, "defdrain")
    assert envstore.get_env(api.r, envid)["spec"]["drain_time"] == 30


@pytest.mark.parametrize("name, status, words", [
    ("nosuch", 404, "no configuration named 'nosuch'"),
    ("ghostgroup", 422, "ENVIRONMENT.ghostgroup.members: member 'ghost' is not defined"),
    ("nested", 422, "ENVIRONMENT.nested.members: member 'analytics' is a group"),
    ("badmember", 422, "TEMPLATE.nofile.file: VM template 'missing.vm' was not uploaded"),
    ("nonet", 422, "TEMPLATE.elsewhere.network_id: no value for endpoint 'onesim'"),
    ("novm", 422, "TEMPLATE.nofile.file: VM template 'missing.vm' was not uploaded"),
    ("noep", 422, "ENVIRONMENT.noep.endpoint"),
])
def test_create_refusals_name_the_problem(api, name, status, words):
    token = _setup(api)
    res = api.client.simulate_post(f"/configs/{name}", headers=bearer(token))
    assert res.status_code == status and words in res.json["description"]
    assert api.r.zcard(keys.service_envs("svc1")) == 0 and api.r.zcard(keys.service_jobs("svc1")) == 0


def test_create_without_config_is_409_and_admin_token_is_403(api):
    token = api.service("bare")
    res = api.client.simulate_post("/configs/tomcat", headers=bearer(token))
    assert res.status_code == 409 and "upload a configuration first" in res.json["description"]
    assert api.client.simulate_post("/configs/tomcat", headers=bearer(api.admin)).status_code == 403
    assert api.client.simulate_get("/envs").status_code == 401


def test_envs_json_and_table(api):
    token = _setup(api)
    envid, _ = _create(api, token)
    envstore.put_vm(api.r, envid, VmRecord(slot="m", role="master", index=0, endpoint="onesim", vmid=4))
    res = api.client.simulate_get("/envs", headers=bearer(token))
    assert res.status_code == 200
    assert res.json == [{"envid": envid, "name": "tomcat", "status": "INIT", "policy_status": "INIT", "url": None,
                         "numVMs": 1, "metrics": "", "gsTokens": [], "gsOutStandingReqs": 0, "info": "",
                         "groupid": "-1", "policy_source": None}]
    envstore.update_env(api.r, envid, app_url="http://10.0.0.4:8080/", status="MASTER_INIT_FAIL:MOUNTLIST_MISSING")
    res = api.client.simulate_get("/envs", headers=bearer(token, **TEXT))
    assert res.headers["content-type"].startswith("text/plain")
    assert res.text.splitlines() == [
        "ID   NAME VMS P_STATUS              D_STATUS APP_URL",
        "--   ---- --- --------              -------- -------",
        f"{envid:>2} tomcat   1     init master_init_fail:moun http://10.0.0.4:8080/"]


def test_vms_jobs_events_listings(api):
    token = _setup(api)
    envid, jobid = _create(api, token)
    envstore.put_vm(api.r, envid, VmRecord(slot="m", role="master", index=0, endpoint="onesim", vmid=4,
                                           ip="10.0.0.4", hostname="tomcat-m", status="MASTER_INIT_DONE", cpu=5))
    envstore.put_vm(api.r, envid, VmRecord(slot="s0", role="slave", index=0, endpoint="onesim", vmid=5,
                                           status="VM_CREATE", one_state="unkn"))
    for path in (f"/envs/{envid}/vms", "/vms"):
        res = api.client.simulate_get(path, headers=bearer(token))
        assert res.status_code == 200
        assert res.json[0] == {"vmid": 4, "envid": envid, "endpoint": "onesim", "hostname": "tomcat-m",
                               "ipaddress": "10.0.0.4", "status": "MASTER_INIT_DONE", "cpu": 5, "slot": "m",
                               "role": "master"}
        assert res.json[1]["status"] == "UNKNOWN"
        table = api.client.simulate_get(path, headers=bearer(token, **TEXT)).text.splitlines()
        assert table[0] == "VMID ENVID HOSTNAME   IPADDR           STATUS CPU"
        assert table[2] == f"   4 {envid:>5} tomcat-m 10.0.0.4 master_init_done 5"
        assert table[3] == f"   5 {envid:>5}        -        -          unknown -1"
    res = api.client.simulate_get("/jobs", headers=bearer(token))
    assert [(j["jobid"], j["envid"], j["name"], j["type"], j["status"]) for j in res.json] == [
        (jobid, envid, "tomcat", "CREATE", "RUNNING")]
    table = api.client.simulate_get("/jobs", headers=bearer(token, **TEXT)).text.splitlines()
    assert table[0].split() == ["ID", "ENVID", "CONFIG_NAME", "TYPE", "SUBMIT_TIME", "STATUS"]
    assert table[2].endswith(" +0000 2026 RUNNING") and " tomcat CREATE " in table[2]
    events = api.client.simulate_get(f"/envs/{envid}/events", headers=bearer(token)).json
    assert events[0]["type"] == "request" and events[0]["jobid"] == jobid and events[0]["time"].endswith("Z")
    table = api.client.simulate_get(f"/envs/{envid}/events", headers=bearer(token, **TEXT)).text.splitlines()
    assert table[0].split() == ["TIME", "TYPE", "MESSAGE"] and table[2].endswith(f"create of 'tomcat' requested "
                                                                                f"(job {jobid})")


def test_other_services_envs_are_404_and_ids_must_be_digits(api):
    token = _setup(api)
    other = _setup(api, "svc2")
    envid, _ = _create(api, token)
    for method, path in (("GET", f"/envs/{envid}/vms"), ("GET", f"/envs/{envid}/events"),
                         ("PUT", f"/envs/{envid}/scaleup"), ("PUT", f"/envs/{envid}/scaledown"),
                         ("DELETE", f"/envs/{envid}"), ("DELETE", f"/envs/-{envid}")):
        res = api.client.simulate_request(method, path, headers=bearer(other))
        assert res.status_code == 404 and res.json["title"] == "Not found", (method, path)
    assert api.client.simulate_get("/envs", headers=bearer(other)).json == []
    assert api.client.simulate_get("/vms", headers=bearer(other)).json == []
    assert api.client.simulate_get("/jobs", headers=bearer(other)).json == []
    for method, path in (("GET", "/envs/x1/vms"), ("PUT", "/envs/1a/scaleup"), ("DELETE", "/envs/--1"),
                         ("GET", "/envs/-1/events")):
        res = api.client.simulate_request(method, path, headers=bearer(token))
        assert res.status_code == 400 and res.json["description"].startswith("envid: must be digits"), path
    assert envstore.get_env(api.r, envid) is not None


def test_scale_while_create_runs_is_409_and_leaves_no_job(api):
    token = _setup(api)
    envid, jobid = _create(api, token)
    res = api.client.simulate_put(f"/envs/{envid}/scaleup", headers=bearer(token))
    assert res.status_code == 409
    assert res.json == {"title": "Conflict", "description": f"operation in progress (job {jobid})"}
    assert [j["jobid"] for j in envstore.list_jobs(api.r, "svc1")] == [jobid]


def test_scale_of_a_failed_create_is_409_not_ready(api):
    token = _setup(api)
    envid, jobid = _create(api, token)
    envstore.finish_job(api.r, jobid, "FAIL", api.clock)
    guards.release_op(api.r, envid, jobid)
    res = api.client.simulate_put(f"/envs/{envid}/scaledown", headers=bearer(token))
    assert res.status_code == 409 and "is not ready" in res.json["description"]


def test_scaleup_then_second_scale_is_409_even_after_restart(api, redis_server, tmp_path):
    token = _setup(api)
    envid, _ = _create(api, token)
    _finish(api, envid)
    res = api.client.simulate_put(f"/envs/{envid}/scaleup", headers=bearer(token))
    assert res.status_code == 202
    jobid = res.json["jobid"]
    env = envstore.get_env(api.r, envid)
    assert (env["op"], env["job"], env["phase"]) == ("SCALEUP", jobid, "new")
    assert envstore.get_job(api.r, jobid)["type"] == "SCALEUP" and envid in envstore.inflight(api.r)
    fresh = falcon.testing.TestClient(create_app(Settings(redis_url=redis_server.url, home=tmp_path)))
    for direction in ("scaleup", "scaledown"):
        res = fresh.simulate_put(f"/envs/{envid}/{direction}", headers=bearer(token))
        assert res.status_code == 409
        assert res.json["description"] == f"operation in progress (job {jobid})"
    assert len(envstore.list_jobs(api.r, "svc1")) == 2
    _finish(api, envid)
    res = fresh.simulate_put(f"/envs/{envid}/scaledown", headers=bearer(token))
    assert res.status_code == 202 and envstore.get_env(api.r, envid)["op"] == "SCALEDOWN"


def test_guard_left_by_an_ended_job_does_not_block_forever(api):
    token = _setup(api)
    envid, jobid = _create(api, token)
    envstore.update_env(api.r, envid, policy_status="ACTIVE")
    envstore.finish_job(api.r, jobid, "DONE", api.clock)               # ended, but the guard was never released
    res = api.client.simulate_put(f"/envs/{envid}/scaleup", headers=bearer(token))
    assert res.status_code == 202 and guards.current_op(api.r, envid) == res.json["jobid"]


def test_concurrent_scaleups_exactly_one_wins(api):
    token = _setup(api)
    envid, _ = _create(api, token)
    _finish(api, envid)
    barrier = threading.Barrier(4)
    codes: list[int] = []

    def scale() -> None:
        barrier.wait()
        codes.append(api.client.simulate_put(f"/envs/{envid}/scaleup", headers=bearer(token)).status_code)

    threads = [threading.Thread(target=scale) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [202, 409, 409, 409]
    assert [j["type"] for j in envstore.list_jobs(api.r, "svc1")] == ["CREATE", "SCALEUP"]


def test_remove_preempts_a_running_scale(api):
    token = _setup(api)
    envid, _ = _create(api, token)
    _finish(api, envid)
    scale = api.client.simulate_put(f"/envs/{envid}/scaleup", headers=bearer(token)).json["jobid"]
    res = api.client.simulate_delete(f"/envs/{envid}", headers=bearer(token))
    assert res.status_code == 202
    remove = res.json["jobid"]
    job = envstore.get_job(api.r, scale)
    assert job["status"] == "FAIL" and job["info"] == f"pre-empted by remove {remove}"
    env = envstore.get_env(api.r, envid)
    assert (env["op"], env["job"]) == ("REMOVE", remove) and guards.current_op(api.r, envid) == remove
    assert envstore.get_job(api.r, remove)["type"] == "REMOVE"
    again = api.client.simulate_delete(f"/envs/{envid}", headers=bearer(token))
    assert again.status_code == 202 and again.json["jobid"] == remove          # same remove, no new job
    types = [e["type"] for e in envstore.list_events(api.r, envid)]
    assert types == ["request", "request", "request", "preempted"]   # the remove is recorded, then pre-empts
    assert api.client.simulate_put(f"/envs/{envid}/scaleup", headers=bearer(token)).status_code == 409


def test_remove_of_a_group_lists_parent_first(api):
    token = _setup(api)
    parent, _ = _create(api, token)
    members = []
    for _ in range(2):
        envid, _ = _create(api, token)
        envstore.update_env(api.r, envid, groupid=parent)
        members.append(envid)
    loner, _ = _create(api, token)
    res = api.client.simulate_delete(f"/envs/-{parent}", headers=bearer(token))
    assert res.status_code == 202
    jobids = res.json["jobid"].split(",")
    assert [envstore.get_job(api.r, j)["envid"] for j in jobids] == [parent, *members]
    assert all(envstore.get_env(api.r, e)["op"] == "REMOVE" for e in [parent, *members])
    assert envstore.get_env(api.r, loner)["op"] == "CREATE"
    assert api.client.simulate_delete("/envs/-999", headers=bearer(token)).status_code == 404


def test_request_scale_direction_is_checked(api):
    token = _setup(api)
    envid, _ = _create(api, token)
    assert token
    with pytest.raises(errors.Invalid) as err:
        operations.request_scale(api.r, _queue(api.r), "svc1", envid, "sideways", api.clock)
    assert err.value.field == "direction"


def test_create_group_starts_the_first_member_and_lists_the_rest_pending(api):
    token = _setup(api)
    envid, jobid = _create(api, token, "pair")
    assert envstore.get_env(api.r, envid)["name"] == "tomcat"
    res = api.client.simulate_get("/jobs", headers=bearer(token))
    assert res.status_code == 200
    rows = [(j["name"], j["envid"], j["status"], j["groupid"]) for j in res.json]
    assert rows == [("tomcat", envid, "RUNNING", jobid), ("defdrain", "-1", "PENDING", jobid)]
    assert [e["envid"] for e in api.client.simulate_get("/envs", headers=bearer(token)).json] == [envid]
    res = api.client.simulate_delete(f"/envs/-{envid}", headers=bearer(token))
    assert res.status_code == 202
    statuses = {j["name"]: j["status"] for j in api.client.simulate_get("/jobs", headers=bearer(token)).json
                if j["type"] == "CREATE"}
    assert statuses == {"tomcat": "FAIL", "defdrain": "ABORT"}
