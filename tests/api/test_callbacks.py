"""VM callbacks on the real gateway app and a real redis-server: the three URL forms, tokens, legacy mode,
validation, and apply_callback's effects (run by a real RQ SimpleWorker or called directly)."""

from __future__ import annotations

import time

import falcon.testing
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from config.settings import Settings
from functions.model import tokens
from functions.ops import callbacks, cbinbox
from functions.store import envstore, guards, install, keys, runtime, tenants
from functions.store.envstore import VmRecord
from functions.store.runtime import JsonQueue
from gateway import create_app
from tests.harness import twin


@pytest.fixture
def world(api, redis_server, monkeypatch):
    """Service svc1 with env E: master (vmid 7) and slave s0 (vmid 8); service svc2 exists too.

    Queued functions connect from the environment, as a worker started with REDIS_URL does."""
    return make_world(api, redis_server, monkeypatch)


def make_world(api, redis_server, monkeypatch):
    """The `world` fixture's work (other test modules build their own fixture with it)."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    api.service("svc1")
    api.service("svc2")
    envid, _ = envstore.create_env(api.r, "svc1", "tomcat", {"endpoint": "onesim", "num_slaves": 1}, "CREATE",
                                   api.clock)
    master = VmRecord(slot="m", role="master", index=0, endpoint="onesim", vmid=7, state="running")
    slave = VmRecord(slot="s0", role="slave", index=0, endpoint="onesim", vmid=8, state="running")
    for rec in (master, slave):
        envstore.put_vm(api.r, envid, rec)
    secret = install.callback_secret(api.r)
    api.envid = envid
    api.tok = {rec.vmid: tokens.vm_token(secret, envid, rec.slot, rec.nonce) for rec in (master, slave)}
    return api


def _queue(r: redis.Redis) -> JsonQueue:
    return JsonQueue("carina", connection=twin(r))


def _queued(r: redis.Redis) -> list[tuple[str, list]]:
    """Every accepted callback waiting in an environment's inbox, oldest first, as ("callback", [envid, vmid, kind,
    fields, slot]), then every queued job but inbox drains, in the order a worker takes them (high, callbacks, then
    drives). Checks that each environment with waiting callbacks has one drain queued (and pending)."""
    queues = runtime.worker_queues(_queue(r))
    jobs = [(j.func_name, j.args) for q in queues for j in (q.fetch_job(i) for i in q.job_ids)]
    drains = [a[0] for f, a in jobs if f == cbinbox.DRAIN]
    out: list[tuple[str, list]] = []
    for key in sorted(r.scan_iter(keys.callback_inbox("*"))):
        envid = key.split(":")[2]
        assert drains.count(envid) == 1 and r.zscore(keys.callback_drains(), envid) is not None, envid
        out += [("callback", [envid, e["v"], e["k"], e["f"], e["s"]]) for e in cbinbox.waiting(r, envid)]
    return out + [(f, a) for f, a in jobs if f != cbinbox.DRAIN]


def _run_queue(r: redis.Redis) -> None:
    qs = runtime.worker_queues(_queue(r))
    SimpleWorker(qs, connection=qs[0].connection, serializer=JSONSerializer).work(burst=True)


def _events(api, kind: str) -> list[dict]:
    return [e for e in envstore.list_events(api.r, api.envid) if e["type"] == kind]


def test_updatevmstatus_query_form_is_applied_by_a_worker(world):
    e, t = world.envid, world.tok[8]
    url = f"/cgi-bin/updatevmstatus.sh?service=svc1&vmid=8&envid={e}&newip=10.0.0.8&name=tomcat-s&token={t}"
    res = world.client.simulate_get(url)
    assert res.status_code == 200 and res.text == "OK" and res.headers["content-type"].startswith("text/plain")
    assert _queued(world.r) == [("callback", [e, 8, "net", {"newip": "10.0.0.8", "name": "tomcat-s"}, "s0"])]
    _run_queue(world.r)
    rec = envstore.get_vms(world.r, e)["s0"]
    assert (rec.ip, rec.hostname, rec.status) == ("10.0.0.8", "tomcat-s", "NET_CONFIG_DONE")
    assert envstore.get_env(world.r, e)["status"] == "INIT"          # the env status is untouched
    ev = _events(world, "callback")
    assert len(ev) == 1 and ev[0]["vmid"] == "8" and ev[0]["newip"] == "10.0.0.8" and ev[0]["name"] == "tomcat-s"
    assert not any(t in str(v) for v in ev[0].values())              # never the token
    assert _queued(world.r) == []                                   # no kick for a network callback


def test_updateappstatus_any_order_sets_env_and_vm_status(world):
    e, t = world.envid, world.tok[8]
    url = f"/cgi-bin/updateappstatus.sh?token={t}&status=SLAVE_0_INIT_DONE&envid={e}&vmid=8"   # no service
    assert world.client.simulate_get(url).status_code == 200
    _run_queue(world.r)
    assert envstore.get_env(world.r, e)["status"] == "SLAVE_0_INIT_DONE"
    assert envstore.get_vms(world.r, e)["s0"].status == "SLAVE_0_INIT_DONE"


@pytest.mark.parametrize("path", [
    "/cgi-bin/svc1&vmid=7&envid={e}&status=MASTER_INIT_DONE&token={t}",
    "/cgi-bin/svc1&envid={e}&token={t}&status=MASTER_INIT_DONE&vmid=7",
    "/cgi-bin/svc1&vmid=7&envid={e}?status=MASTER_INIT_DONE&token={t}",
    "/cgi-bin/svc1?token={t}&envid={e}&vmid=7&status=MASTER_INIT_DONE&service=svc1",
])
def test_guide_form_with_params_in_the_path(world, path):
    res = world.client.simulate_get(path.format(e=world.envid, t=world.tok[7]))
    assert res.status_code == 200, res.text
    assert _queued(world.r) == [("callback", [world.envid, 7, "status", {"status": "MASTER_INIT_DONE"}, "m"])]


def test_guide_form_network_callback_and_space_decoding(world):
    e, t = world.envid, world.tok[7]
    assert world.client.simulate_get(f"/cgi-bin/svc1&vmid=7&envid={e}&newip=10.0.0.7&name=tomcat-m&token={t}"
                                     ).status_code == 200
    res = world.client.simulate_get(f"/cgi-bin/updateappstatus.sh?vmid=7&envid={e}&status=APP%20X&token={t}")
    assert res.status_code == 400 and res.json["description"].startswith("status: must be")
    assert world.client.simulate_get(f"/cgi-bin/svc1&vmid=7&envid={e}&newip=10.0.0.7&name=my_env-m.lan&token={t}"
                                     ).status_code == 200
    assert world.client.simulate_get(f"/cgi-bin/updatevmstatus.sh?vmid=7&envid={e}&newip=10.0.0.7&name=&token={t}"
                                     ).status_code == 200
    assert [a[3] for _, a in _queued(world.r)] == [{"newip": "10.0.0.7", "name": "tomcat-m"},
                                                   {"newip": "10.0.0.7", "name": "my_env-m.lan"},
                                                   {"newip": "10.0.0.7"}]


def test_master_init_done_kicks_the_lifecycle(world):
    e = world.envid
    q = _queue(world.r)
    assert callbacks.apply(world.r, q, e, 7, "status", {"status": "MASTER_INIT_DONE"}, world.clock, "m") == "applied"
    assert envstore.get_vms(world.r, e)["m"].status == "MASTER_INIT_DONE"
    assert envstore.get_env(world.r, e)["status"] == "MASTER_INIT_DONE"
    assert _queued(world.r) == [("functions.tasks.drive", [e])]


def test_master_init_fail_keeps_the_reason(world):
    e = world.envid
    status = "MASTER_INIT_FAIL:MOUNTLIST_MISSING"
    callbacks.apply(world.r, _queue(world.r), e, 7, "status", {"status": status}, world.clock, "m")
    assert envstore.get_env(world.r, e)["status"] == status
    assert _queued(world.r) == [("functions.tasks.drive", [e])]


def test_busy_env_lock_requeues_the_callback(world):
    e = world.envid
    q = _queue(world.r)
    with guards.env_lock(world.r, e) as got:
        assert got
        assert callbacks.apply(world.r, q, e, 8, "status", {"status": "X"}, world.clock, "s0") == "retry"
    assert envstore.get_env(world.r, e)["status"] == "INIT"
    assert q.scheduled_job_registry.get_job_ids() == []                  # not RQ's delayed jobs (scheduler lock)
    assert callbacks.pump_retries(q) == 0                                # not due yet
    assert callbacks.pump_retries(q, now=time.time() + 60) == 1
    cq = runtime.sibling(q, runtime.CALLBACKS)                          # callbacks are served before drives
    job = cq.fetch_job(cq.job_ids[0])
    assert job.func_name == "functions.tasks.apply_callback" and job.args == [e, 8, "status", {"status": "X"},
                                                                                "s0", 1]
    assert callbacks.apply(world.r, q, *job.args[:4], world.clock, "s0", 1) == "applied"
    assert envstore.get_env(world.r, e)["status"] == "X"


def test_apply_twice_is_harmless_and_a_removed_env_is_gone(world):
    e = world.envid
    q = _queue(world.r)
    for _ in range(2):
        callbacks.apply(world.r, q, e, 8, "net", {"newip": "10.0.0.8", "name": "h"}, world.clock, "s0")
    assert envstore.get_vms(world.r, e)["s0"].ip == "10.0.0.8" and len(envstore.get_vms(world.r, e)) == 2
    assert callbacks.apply(world.r, q, e, 99, "status", {"status": "X"}, world.clock) == "stale"
    envstore.delete_env(world.r, e)
    assert callbacks.apply(world.r, q, e, 8, "status", {"status": "X"}, world.clock, "s0") == "gone"


@pytest.mark.parametrize("token_of, status, code, why", [
    (None, "APP_X", 403, "token: callback token required"),
    ("empty", "APP_X", 403, "token: callback token required"),
    ("forged", "APP_X", 403, "token: does not match VM 8"),
    (7, "APP_X", 403, "token: does not match VM 8"),                # the master's token used for the slave
    (8, "MASTER_INIT_DONE", 403, "status: only the master reports MASTER_INIT_DONE"),
])
def test_refused_callbacks_are_recorded_without_the_token(world, token_of, status, code, why):
    token = {None: None, "empty": "", "forged": "AAAAforgedAAAA"}.get(token_of, world.tok.get(token_of))
    url = f"/cgi-bin/updateappstatus.sh?service=svc1&vmid=8&envid={world.envid}&status={status}"
    url += f"&token={token}" if token is not None else ""
    res = world.client.simulate_get(url)
    assert res.status_code == code and res.json["description"].startswith(why)
    assert _queued(world.r) == []
    refused = _events(world, "callback_refused")
    assert len(refused) == 1 and refused[0]["vmid"] == "8" and refused[0]["status"] == status
    assert "token" not in refused[0] and (not token or token not in str(refused[0]))


def test_wrong_service_and_unknown_env_are_404(world):
    e, t = world.envid, world.tok[8]
    res = world.client.simulate_get(f"/cgi-bin/updateappstatus.sh?service=svc2&vmid=8&envid={e}&status=X&token={t}")
    assert res.status_code == 404 and len(_events(world, "callback_refused")) == 1
    res = world.client.simulate_get(f"/cgi-bin/svc2&vmid=8&envid={e}&status=X&token={t}")
    assert res.status_code == 404
    assert world.client.simulate_get(f"/cgi-bin/updateappstatus.sh?vmid=8&envid=999&status=X&token={t}"
                                     ).status_code == 404
    assert world.client.simulate_get(f"/cgi-bin/other.sh?vmid=8&envid={e}&status=X").status_code == 404
    assert _queued(world.r) == []


@pytest.mark.parametrize("query, field", [
    ("vmid=8&status=X", "envid"),
    ("envid={e}&status=X", "vmid"),
    ("vmid=8a&envid={e}&status=X", "vmid"),
    ("vmid=8&envid=-{e}&status=X", "envid"),
    ("vmid=8&envid={e}&status=a%22b", "status"),
    ("vmid=8&envid={e}&status=" + "x" * 129, "status"),
    ("vmid=8&envid={e}", "status"),
    ("vmid=8&envid={e}&status=X&service=a%20b", "service"),
    ("vmid=8&envid={e}&status=X&token=a/b", "token"),
    ("vmid=8&envid={e}&status=X&vmid=9", "vmid"),
    ("vmid=8&envid={e}&status=X&junk", "junk"),
])
def test_bad_app_params_are_400_naming_the_field(world, query, field):
    res = world.client.simulate_get("/cgi-bin/updateappstatus.sh?" + query.format(e=world.envid))
    assert res.status_code == 400 and res.json["description"].startswith(f"{field}:"), res.json


@pytest.mark.parametrize("query, field", [
    ("vmid=8&envid={e}&name=h", "newip"),
    ("vmid=8&envid={e}&newip=10.0.0.300&name=h", "newip"),
    ("vmid=8&envid={e}&newip=10.0.0.8;rm&name=h", "newip"),
    ("vmid=8&envid={e}&newip=10.0.0.8&name=-bad-", "name"),
    ("vmid=8&envid={e}&newip=10.0.0.8&name=a%20b", "name"),
])
def test_bad_net_params_are_400_naming_the_field(world, query, field):
    res = world.client.simulate_get("/cgi-bin/updatevmstatus.sh?" + query.format(e=world.envid))
    assert res.status_code == 400 and res.json["description"].startswith(f"{field}:"), res.json


def test_ipv6_and_bad_guide_service(world):
    e, t = world.envid, world.tok[8]
    ok = world.client.simulate_get(f"/cgi-bin/updatevmstatus.sh?vmid=8&envid={e}&newip=fd00::8&name=h&token={t}")
    assert ok.status_code == 200
    res = world.client.simulate_get(f"/cgi-bin/sv%20c&vmid=8&envid={e}&status=X")
    assert res.status_code == 400 and res.json["description"].startswith("service:")
    res = world.client.simulate_get(f"/cgi-bin/svc1&vmid=8&envid={e}")
    assert res.status_code == 400 and res.json["description"].startswith("status: missing")


def test_token_proves_a_slot_whose_vmid_is_not_recorded_yet(world):
    e = world.envid
    rec = VmRecord(slot="s1", role="slave", index=1, endpoint="onesim", vmid=None)
    envstore.put_vm(world.r, e, rec)
    token = tokens.vm_token(install.callback_secret(world.r), e, "s1", rec.nonce)
    res = world.client.simulate_get(f"/cgi-bin/updatevmstatus.sh?vmid=12&envid={e}&newip=10.0.0.12&token={token}")
    assert res.status_code == 200
    _run_queue(world.r)
    got = envstore.get_vms(world.r, e)["s1"]
    assert got.ip == "10.0.0.12" and got.vmid is None and got.status == "NET_CONFIG_DONE"


def _legacy(world, redis_server, tmp_path) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_app(Settings(redis_url=redis_server.url, home=tmp_path,
                                                         legacy_callbacks=True), clock=world.clock))


def _set_vm(world, slot: str, **values) -> None:
    rec = envstore.get_vms(world.r, world.envid)[slot]
    for name, value in values.items():
        setattr(rec, name, value)
    envstore.put_vm(world.r, world.envid, rec)


def test_legacy_mode_accepts_tokenless_callbacks_only_for_existing_vms(world, redis_server, tmp_path):
    legacy = _legacy(world, redis_server, tmp_path)
    _set_vm(world, "s0", one_ip="127.0.0.1")                 # OpenNebula's address for VM 8: the test client's
    e = world.envid
    ok = legacy.simulate_get(f"/cgi-bin/updateappstatus.sh?service=svc1&vmid=8&envid={e}&status=APP_SVC_START")
    assert ok.status_code == 200
    res = legacy.simulate_get(f"/cgi-bin/updateappstatus.sh?service=svc1&vmid=99&envid={e}&status=X")
    assert res.status_code == 404 and res.json["description"] == f"vmid: no VM 99 in environment {e}"
    forged = legacy.simulate_get(f"/cgi-bin/updateappstatus.sh?vmid=8&envid={e}&status=X&token=AAAAforged")
    assert forged.status_code == 403                                  # a token, if given, must still match
    _run_queue(world.r)
    assert envstore.get_env(world.r, e)["status"] == "APP_SVC_START"
    assert [e_["type"] for e_ in envstore.list_events(world.r, e)] == ["callback_refused", "callback_refused",
                                                                      "callback"]


def test_legacy_callbacks_come_only_from_the_address_opennebula_reports(world, redis_server, tmp_path):
    legacy = _legacy(world, redis_server, tmp_path)
    e = world.envid
    url = f"/cgi-bin/updateappstatus.sh?vmid=8&envid={e}&status=APP_X"
    res = legacy.simulate_get(url, remote_addr="10.0.0.8")
    assert res.status_code == 403                                     # no address known yet: refused
    assert res.json["description"] == "address: OpenNebula has not reported an address for VM 8 yet"
    _set_vm(world, "s0", one_ip="10.0.0.8", ip="10.9.9.9")
    for addr in ("10.0.0.9", "127.0.0.1", "10.9.9.9", "::1"):        # the VM's own claim (ip) does not count
        res = legacy.simulate_get(url, remote_addr=addr)
        assert res.status_code == 403, addr
        assert res.json["description"] == "address: a callback without a token is accepted only from the VM's " \
                                          "own address (as OpenNebula reports it)"
    assert legacy.simulate_get(url, remote_addr="10.0.0.8").status_code == 200
    assert legacy.simulate_get(url.replace("APP_X", "APP_Y"), remote_addr="::ffff:10.0.0.8").status_code == 200
    _set_vm(world, "m", one_ip="", ip="10.0.0.7")                     # no address from OpenNebula yet: the
    res = legacy.simulate_get(f"/cgi-bin/updateappstatus.sh?vmid=7&envid={e}&status=APP_Z",  # VM's own claim
                              remote_addr="10.0.0.7")                 # (ip) does not count either
    assert res.status_code == 403 and res.json["description"].startswith("address: OpenNebula has not reported")
    _set_vm(world, "m", one_ip="10.0.0.7")
    assert legacy.simulate_get(f"/cgi-bin/updateappstatus.sh?vmid=7&envid={e}&status=APP_Z",
                               remote_addr="10.0.0.7").status_code == 200
    token = world.tok[8]                                              # a token is accepted from anywhere
    assert legacy.simulate_get(url.replace("APP_X", "APP_T") + f"&token={token}", remote_addr="192.0.2.1"
                               ).status_code == 200
    assert len(_queued(world.r)) == 4
    assert [ev["msg"] for ev in _events(world, "callback_refused")][0].startswith("callback refused: address:")


def test_a_token_callback_is_accepted_from_any_address(world):
    res = world.client.simulate_get(f"/cgi-bin/updateappstatus.sh?vmid=8&envid={world.envid}&status=A"
                                    f"&token={world.tok[8]}", remote_addr="203.0.113.5")
    assert res.status_code == 200


def test_callback_routes_need_no_bearer_token_and_keys_are_untouched(world):
    assert tenants.get_service(world.r, "svc1") is not None
    before = world.r.get(keys.callback_secret())
    res = world.client.simulate_get(f"/cgi-bin/updateappstatus.sh?vmid=8&envid={world.envid}&status=X&token=x")
    assert res.status_code == 403 and world.r.get(keys.callback_secret()) == before


def test_refused_events_are_capped_per_minute(world):
    url = f"/cgi-bin/updateappstatus.sh?vmid=8&envid={world.envid}&status=X"
    world.clock.advance(60 - world.clock.now % 60)                    # start of a minute
    for _ in range(callbacks.REFUSALS_PER_MINUTE + 5):
        assert world.client.simulate_get(url).status_code == 403     # still refused, just not all recorded
    assert len(_events(world, "callback_refused")) == callbacks.REFUSALS_PER_MINUTE
    world.clock.advance(60)
    assert world.client.simulate_get(url).status_code == 403
    assert len(_events(world, "callback_refused")) == callbacks.REFUSALS_PER_MINUTE + 1


def _status(world, vmid: int, status: str, **extra: str):
    query = "&".join(f"{k}={v}" for k, v in extra.items())
    return world.client.simulate_get(f"/cgi-bin/updateappstatus.sh?vmid={vmid}&envid={world.envid}&status={status}"
                                     f"&token={world.tok[vmid]}" + (f"&{query}" if query else ""))


def test_a_vm_sending_too_fast_gets_429_and_nothing_queued(world):
    """A token bucket per VM (default 60 a minute, burst 20): beyond it 429 JSON with Retry-After, no job, one
    `callback_throttled` event; the other VM is not affected; tokens come back with time."""
    for i in range(20):
        assert _status(world, 8, f"APP_{i}").status_code == 200
    assert len(_queued(world.r)) == 20
    for _ in range(5):
        res = _status(world, 8, "APP_MORE")
        assert res.status_code == 429 and res.headers["content-type"].startswith("application/json")
        assert res.json["title"] == "Too many callbacks" and res.json["description"].startswith("vmid: VM 8 ")
        assert res.headers["retry-after"] == "1"
    assert len(_queued(world.r)) == 20
    throttled = _events(world, "callback_throttled")
    assert len(throttled) == 1 and throttled[0]["vmid"] == "8" and throttled[0]["slot"] == "s0"
    assert _status(world, 7, "APP_M").status_code == 200                             # per VM
    world.clock.advance(1.0)                                                        # 60 a minute: one per second
    assert _status(world, 8, "APP_MORE").status_code == 200
    assert _status(world, 8, "APP_MORE2").status_code == 429
    world.clock.advance(3600)                                                       # refills up to the burst only
    assert all(_status(world, 8, f"APP_B{i}").status_code == 200 for i in range(20))
    assert _status(world, 8, "APP_C").status_code == 429
    assert len(_events(world, "callback_throttled")) == 2                           # at most one a minute


def test_rate_and_burst_come_from_settings(world, redis_server, tmp_path):
    app = create_app(Settings(redis_url=redis_server.url, home=tmp_path, callback_rate=6, callback_burst=2),
                     clock=world.clock)
    client = falcon.testing.TestClient(app)
    url = f"/cgi-bin/updateappstatus.sh?vmid=8&envid={world.envid}&token={world.tok[8]}&status="
    assert [client.simulate_get(url + f"S{i}").status_code for i in range(3)] == [200, 200, 429]
    assert client.simulate_get(url + "S9").headers["retry-after"] == "10"          # 6 a minute: one per 10 s
    world.clock.advance(10)
    assert client.simulate_get(url + "S9").status_code == 200


def test_a_repeated_report_is_answered_but_not_queued_again(world):
    e, t = world.envid, world.tok[8]
    net = f"/cgi-bin/updatevmstatus.sh?vmid=8&envid={e}&newip=10.0.0.8&name=h&token={t}"
    first, again = world.client.simulate_get(net), world.client.simulate_get(net)
    assert (first.status_code, first.text) == (200, "OK")
    assert (again.status_code, again.text) == (200, "OK (duplicate: not queued again)")
    assert _status(world, 8, "APP_X").text == "OK" and _status(world, 8, "APP_X").text.startswith("OK (dup")
    assert _status(world, 8, "APP_Y").text == "OK" and _status(world, 8, "APP_X").text == "OK"   # not the last one
    assert _status(world, 7, "APP_Y").text == "OK"                                  # another VM's own history
    assert world.client.simulate_get(net).text.startswith("OK (dup")              # the last report of its kind
    assert world.client.simulate_get(net.replace("name=h", "name=h2")).text == "OK"
    assert [a[3] for _, a in _queued(world.r)] == [{"newip": "10.0.0.8", "name": "h"}, {"status": "APP_X"},
                                                   {"status": "APP_Y"}, {"status": "APP_X"}, {"status": "APP_Y"},
                                                   {"newip": "10.0.0.8", "name": "h2"}]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(gaps=st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=60),
       per_minute=st.integers(1, 120), burst=st.integers(1, 10))
def test_the_bucket_never_admits_more_than_burst_plus_refill(rdb, gaps, per_minute, burst):
    """Whatever the timing, admitted <= burst + rate x elapsed; calls spaced by a full period are all admitted."""
    rdb.flushall()
    caller = callbacks.Caller(slot="m", role="master", nonce="n")
    now, admitted = 1000.0, 0
    for i, gap in enumerate(gaps):
        now += gap
        gate = callbacks.ingest(rdb, "1", caller, 7, "status", {"status": f"S{i}"}, now, per_minute, burst)
        admitted += gate.verdict == "queue"
        assert gate.verdict in ("queue", "throttled")
        assert admitted <= burst + per_minute / 60.0 * (now - 1000.0) + 1e-6
    rdb.flushall()
    period = 60.0 / per_minute
    assert all(callbacks.ingest(rdb, "1", caller, 7, "status", {"status": f"T{i}"}, 1000.0 + i * period,
                                per_minute, burst).verdict == "queue" for i in range(30))


def test_the_network_callback_carries_the_vms_host_key(world, redis_server, tmp_path):
    """hostkey= is the VM's public key line (comment dropped) or a SHA256 fingerprint; only a token-proven
    callback may carry it (legacy mode drops it); anything else is a 400 naming the field."""
    from urllib.parse import quote

    from functions.model import hostkeys
    from onesim.sshd import generate_host_key, load_host_key, public_line
    key = public_line(load_host_key(generate_host_key()))
    e, t = world.envid, world.tok[8]
    url = f"/cgi-bin/updatevmstatus.sh?vmid=8&envid={e}&newip=10.0.0.8&token={t}&hostkey="
    assert world.client.simulate_get(url + quote(key + " root@vm")).status_code == 200
    plus = url + quote(key, safe=" ").replace(" ", "+")                     # `+` for a space, as forms encode it
    assert world.client.simulate_get(plus).text.startswith("OK (duplicate")      # the same key, the same report
    fp = hostkeys.fingerprint(key)
    guide = f"/cgi-bin/svc1&vmid=8&envid={e}&newip=10.0.0.9&token={t}"   # a key's `/` goes in the query string
    assert world.client.simulate_get(guide, query_string=f"hostkey={quote(fp, safe='')}").status_code == 200
    for bad in ("ssh-ed25519", "ssh-dss AAAAB3NzaC1kc3M=", "ssh-ed25519 AAAA%21", "SHA256:short",
                quote("ssh-ed25519 AAAAA")):
        res = world.client.simulate_get(url + bad)
        assert res.status_code == 400 and res.json["description"].startswith("hostkey: "), bad
    _set_vm(world, "s0", one_ip="127.0.0.1")
    legacy = _legacy(world, redis_server, tmp_path)
    assert legacy.simulate_get(f"/cgi-bin/updatevmstatus.sh?vmid=8&envid={e}&newip=10.0.0.10&hostkey="
                               + quote(key)).status_code == 200
    assert [a[3] for _, a in _queued(world.r)] == [{"newip": "10.0.0.8", "hostkey": key},
                                                   {"newip": "10.0.0.9", "hostkey": fp},
                                                   {"newip": "10.0.0.10"}]
    _run_queue(world.r)
    rec = envstore.get_vms(world.r, e)["s0"]
    assert rec.hostkey == key and rec.ip == "10.0.0.10"                 # the first key reported is kept
