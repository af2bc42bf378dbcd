"""Event routes on the real gateway app and a real redis-server: reading after a cursor, long polling (an
event written by another thread while the request waits), a job's events and status, the log download."""

from __future__ import annotations

import threading

from functions.store import envstore, feeds
from handlers import events
from tests.api.conftest import bearer
from tests.api.test_env_routes import TEXT, _create, _setup


def _add(api, envid: str, msg: str, kind: str = "step", **extra: str) -> None:
    envstore.add_event(api.r, envid, "svc1", kind, msg, api.clock, **extra)


def test_events_after_a_cursor_with_the_next_cursor_in_a_header(api):
    token = _setup(api)
    envid, jobid = _create(api, token)
    res = api.client.simulate_get(f"/envs/{envid}/events", headers=bearer(token))
    assert [e["type"] for e in res.json] == ["request"]
    cursor = res.headers["carina-cursor"]
    assert cursor == res.json[-1]["id"]
    _add(api, envid, "master m: VM 3 allocated")
    _add(api, envid, "second\nline")
    res = api.client.simulate_get(f"/envs/{envid}/events", params={"after": cursor}, headers=bearer(token))
    assert [e["msg"] for e in res.json] == ["master m: VM 3 allocated", "second\nline"]
    nxt = res.headers["carina-cursor"]
    text = api.client.simulate_get(f"/envs/{envid}/events", params={"after": cursor}, headers=bearer(token, **TEXT))
    lines = text.text.splitlines()
    assert len(lines) == 2 and lines[0].endswith("step     master m: VM 3 allocated")
    assert lines[1].endswith("step     second line")
    assert text.headers["carina-cursor"] == nxt
    res = api.client.simulate_get(f"/envs/{envid}/events", params={"after": nxt}, headers=bearer(token))
    assert res.json == [] and res.headers["carina-cursor"] == nxt
    res = api.client.simulate_get(f"/envs/{envid}/events", params={"after": "0", "limit": 1}, headers=bearer(token))
    assert [e["type"] for e in res.json] == ["request"]


def test_a_waiting_request_answers_the_event_written_while_it_waits(api):
    token = _setup(api)
    envid, _ = _create(api, token)
    cursor = feeds.last_id(api.r, feeds.stream_key(envid=envid))
    writer = threading.Timer(0.3, _add, (api, envid, "arrived later"))
    writer.start()
    res = api.client.simulate_get(f"/envs/{envid}/events", params={"after": cursor, "wait": 20},
                                  headers=bearer(token))
    writer.join()
    assert [e["msg"] for e in res.json] == ["arrived later"]


def test_waiting_is_bounded_and_refused_beyond_the_waiter_limit(api):
    token = _setup(api)
    envid, _ = _create(api, token)
    cursor = feeds.last_id(api.r, feeds.stream_key(envid=envid))
    res = api.client.simulate_get(f"/envs/{envid}/events", params={"after": cursor, "wait": 1},
                                  headers=bearer(token))
    assert res.status_code == 200 and res.json == []
    held = [events._WAITERS.acquire(blocking=False) for _ in range(events.MAX_WAITERS)]
    try:
        assert all(held)
        res = api.client.simulate_get(f"/envs/{envid}/events", params={"after": cursor, "wait": events.MAX_WAIT},
                                      headers=bearer(token))   # answers at once: no waiter slot left
        assert res.status_code == 200 and res.json == []
    finally:
        for _ in held:
            events._WAITERS.release()
    for params, field in (({"after": "x"}, "after"), ({"after": "1-2-3"}, "after"), ({"wait": 26}, "wait"),
                          ({"wait": -1}, "wait"), ({"limit": 0}, "limit")):
        res = api.client.simulate_get(f"/envs/{envid}/events", params=params, headers=bearer(token))
        assert res.status_code == 400 and field in res.text, params


def test_service_events_are_the_services_own(api):
    token = _setup(api)
    other = _setup(api, "svc2")
    envid, _ = _create(api, token)
    _add(api, envid, "hello")
    res = api.client.simulate_get("/events", headers=bearer(token))
    assert [e["msg"] for e in res.json][-1] == "hello" and all(e["envid"] == envid for e in res.json)
    assert api.client.simulate_get("/events", headers=bearer(other)).json == []
    res = api.client.simulate_get("/events", params={"after": res.headers["carina-cursor"]}, headers=bearer(token))
    assert res.json == []
    assert api.client.simulate_get(f"/envs/{envid}/events", headers=bearer(other)).status_code == 404
    assert api.client.simulate_get("/events", headers=bearer(api.admin)).status_code == 403


def test_one_job_and_its_events_until_it_ends(api):
    token = _setup(api)
    envid, jobid = _create(api, token)
    _add(api, envid, f"CREATE job {jobid} started", job=jobid)      # about the job, but not its closing event
    job = api.client.simulate_get(f"/jobs/{jobid}", headers=bearer(token))
    assert job.json["jobid"] == jobid and job.json["status"] == "RUNNING" and job.json["type"] == "CREATE"
    table = api.client.simulate_get(f"/jobs/{jobid}", headers=bearer(token, **TEXT)).text.splitlines()
    assert table[0].split() == ["ID", "ENVID", "CONFIG_NAME", "TYPE", "SUBMIT_TIME", "STATUS"]
    res = api.client.simulate_get(f"/jobs/{jobid}/events", headers=bearer(token))
    assert [e["type"] for e in res.json] == ["request", "step"]
    assert res.headers["carina-job-status"] == "RUNNING" and "carina-job-info" not in res.headers
    cursor = res.headers["carina-cursor"]
    api.clock.advance(5)
    envstore.finish_job(api.r, jobid, "FAIL", api.clock, "master said MASTER_INIT_FAIL:\nno disk")
    res = api.client.simulate_get(f"/jobs/{jobid}/events", params={"after": cursor}, headers=bearer(token))
    assert res.headers["carina-job-status"] == "RUNNING"      # ended, but its closing event is not there yet
    _add(api, envid, f"CREATE job {jobid} FAIL: no disk", kind="error", job=jobid)
    res = api.client.simulate_get(f"/jobs/{jobid}/events", params={"after": cursor, "wait": 20},
                                  headers=bearer(token, **TEXT))
    assert res.headers["carina-job-status"] == "FAIL"
    assert res.headers["carina-job-info"] == "master said MASTER_INIT_FAIL: no disk"
    assert res.text.splitlines()[-1].endswith(f"error    CREATE job {jobid} FAIL: no disk")


def test_a_job_ended_without_a_closing_event_shows_final_after_the_grace(api):
    token = _setup(api)
    envid, jobid = _create(api, token)
    envstore.finish_job(api.r, jobid, "DONE", api.clock, "environment removed")
    res = api.client.simulate_get(f"/jobs/{jobid}/events", headers=bearer(token))
    assert res.headers["carina-job-status"] == "RUNNING"
    api.clock.advance(events.CLOSE_GRACE)
    res = api.client.simulate_get(f"/jobs/{jobid}/events", params={"wait": 20}, headers=bearer(token))
    assert res.headers["carina-job-status"] == "DONE" and [e["type"] for e in res.json] == ["request"]


def test_jobs_of_other_services_are_404(api):
    token = _setup(api)
    other = _setup(api, "svc2")
    _, jobid = _create(api, token)
    for path in (f"/jobs/{jobid}", f"/jobs/{jobid}/events", "/jobs/999/events"):
        assert api.client.simulate_get(path, headers=bearer(other)).status_code == 404, path
    res = api.client.simulate_get("/jobs/x/events", headers=bearer(token))
    assert res.status_code == 400 and res.json["description"].startswith("jobid: must be digits")


def test_the_log_download_outlives_the_environment(api):
    token = _setup(api)
    other = _setup(api, "svc2")
    envid, _ = _create(api, token)
    _add(api, envid, "master: add 10.0.0.3 8080", slot="s0", vmid="4")
    res = api.client.simulate_get(f"/envs/{envid}/log", headers=bearer(token))
    assert res.headers["content-type"].startswith("text/plain")
    lines = res.text.splitlines()
    assert "request" in lines[0] and lines[1].endswith("step     master: add 10.0.0.3 8080 slot=s0 vmid=4")
    envstore.delete_env(api.r, envid)
    assert api.client.simulate_get(f"/envs/{envid}/log", headers=bearer(token)).text == res.text
    assert api.client.simulate_get(f"/envs/{envid}/events", headers=bearer(token)).status_code == 200
    assert api.client.simulate_get(f"/envs/{envid}/log", headers=bearer(other)).status_code == 404
    assert api.client.simulate_get("/envs/4242/log", headers=bearer(token)).status_code == 404
