"""Chaos on the real stack (tests/stack.py: redis-server with AOF appendfsync always, gunicorn gateway, RQ
workers as subprocesses, the simulator with process guests): Redis kill -9, worker kill -9, OpenNebula down,
two schedulers. After each fault the environment must converge to exactly the desired VMs (counted in the
simulator by their CARINA_ENVID tag), its job must end DONE and its event stream must be intact.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from functions import schedule
from functions.store import envstore, guards, keys
from functions.store.runtime import JsonJob
from tests.stack import Stack, wait_for

pytestmark = pytest.mark.slow

SERVICE = "chaos1"
RECOVERY = 60        # seconds: a killed holder's env lock (TTL 10 s) expires, then the env moves on
SLOW = 1.5           # seconds per simulated boot / shutdown while a fault is injected


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    with Stack(Path(tmp_path_factory.mktemp("chaos")), workers=2, clock_skew=True,
               env={"CARINA_CREATE_DEADLINE": "200"}) as st:
        token = st.add_service(SERVICE)
        st.upload_example(token)
        yield st, token


def _create(st: Stack, token: str) -> tuple[str, str]:
    answer = st.http("POST", "/configs/tomcat", token)
    return answer["envid"], answer["jobid"]


def _final(st: Stack, jobid: str, timeout: float = RECOVERY) -> dict[str, str]:
    return wait_for(lambda: (j := st.job(jobid)).get("status") in ("DONE", "FAIL", "ABORT") and j,
                    timeout, f"job {jobid} to end", stack=st)


def _api_env(st: Stack, token: str, envid: str) -> dict:
    envs: list[dict] = st.http("GET", "/envs", token)  # type: ignore[assignment] - a JSON list
    return next((e for e in envs if e.get("envid") == envid), {})


def _restart_workers(st: Stack) -> None:
    st.kill_workers()
    st.start_worker()
    st.start_worker()


def _event_ids(st: Stack, envid: str) -> list[str]:
    return [e["id"] for e in envstore.list_events(st.r, envid)]


def _slow(st: Stack, *phases: str) -> None:
    for phase in phases:
        st.sim_call("onesim.sim.setdelay", phase, SLOW)


def _fast(st: Stack) -> None:
    for phase in ("boot", "shutdown", "epilog"):
        st.sim_call("onesim.sim.setdelay", phase, st.sim_delay)


def _crash_redis_when(st: Stack, envid: str, cond: object, what: str) -> list[str]:
    """Wait for `cond`, kill -9 redis-server, restart it on the same port and data directory.

    Returns the event ids acknowledged before the crash (they must all survive: appendfsync always).
    """
    wait_for(cond, 40, what, stack=st)  # type: ignore[arg-type]
    before = _event_ids(st, envid)
    st.crash_redis()
    st.restart_redis()
    return before


def test_redis_kill_9_mid_create_and_mid_scaleup_converges(stack: tuple[Stack, str]) -> None:
    st, token = stack
    scheduler = st.start_scheduler("scheduler")
    _slow(st, "boot")
    try:
        envid, jobid = _create(st, token)
        before = _crash_redis_when(st, envid, lambda: len(st.vms_of(envid)) >= 2, "a slave being created")
        # workers and scheduler stay up: they reconnect and re-drive in-flight envs once Redis is back
        assert _final(st, jobid)["status"] == "DONE", st.events(envid)
        assert st.slots_of(envid) == ["m", "s0", "s1"]
        assert sorted(envstore.get_vms(st.r, envid)) == ["m", "s0", "s1"]
        after = _event_ids(st, envid)
        assert after[:len(before)] == before and len(after) > len(before)

        up = st.http("PUT", f"/envs/{envid}/scaleup", token)["jobid"]
        before = _crash_redis_when(st, envid, lambda: "s2" in st.slots_of(envid), "the new slave VM")
        assert _final(st, up)["status"] == "DONE", st.events(envid)
        alive = [p for p in [*st.workers, scheduler] if p.poll() is None]
        assert len(alive) == 3, "a worker or the scheduler did not survive the Redis restarts"
    finally:
        _fast(st)
        scheduler.terminate()
        scheduler.wait(10)
    assert st.slots_of(envid) == ["m", "s0", "s1", "s2"]
    vms = envstore.get_vms(st.r, envid)
    assert sorted(vms) == ["m", "s0", "s1", "s2"] and vms["s2"].state == "announced"
    assert f"{vms['s2'].ip}:8080" in st.ssh_show(SERVICE, envid)
    assert _event_ids(st, envid)[:len(before)] == before
    assert [j["status"] for j in (st.job(jobid), st.job(up))] == ["DONE", "DONE"]
    assert _api_env(st, token, envid)["policy_status"] == "ACTIVE"
    _remove(st, token, envid)


def _remove(st: Stack, token: str, envid: str) -> None:
    jobid = st.http("DELETE", f"/envs/{envid}", token)["jobid"]
    assert _final(st, jobid)["status"] == "DONE", st.events(envid)
    wait_for(lambda: not st.vms_of(envid), 30, f"env {envid} VMs gone", stack=st)
    assert st.env_state(envid) is None


def _removing(st: Stack, envid: str) -> bool:
    return any(v.state == "removing" for v in envstore.get_vms(st.r, envid).values())


def test_worker_kill_9_mid_scaledown_and_mid_remove_converges(stack: tuple[Stack, str]) -> None:
    st, token = stack
    envid, jobid = _create(st, token)
    assert _final(st, jobid)["status"] == "DONE", st.events(envid)
    _slow(st, "shutdown", "epilog")
    try:
        down = st.http("PUT", f"/envs/{envid}/scaledown", token)["jobid"]
        wait_for(lambda: _removing(st, envid), 30, "the slave being terminated", stack=st)
        _restart_workers(st)
        assert _final(st, down)["status"] == "DONE", st.events(envid)
        wait_for(lambda: st.slots_of(envid) == ["m", "s0"], 30, "exactly n-1 VMs", stack=st)
        assert sorted(envstore.get_vms(st.r, envid)) == ["m", "s0"]

        remove = st.http("DELETE", f"/envs/{envid}", token)["jobid"]
        wait_for(lambda: _removing(st, envid), 30, "the env's VMs being terminated", stack=st)
        _restart_workers(st)
        assert _final(st, remove)["status"] == "DONE", st.events(envid)
    finally:
        _fast(st)
    assert st.vms_of(envid) == [] and st.env_state(envid) is None
    assert guards.current_op(st.r, envid) is None and envid not in envstore.inflight(st.r)


def test_opennebula_down_during_a_create_is_retried_and_shown(stack: tuple[Stack, str]) -> None:
    st, token = stack
    st.sim_call("onesim.sim.down", 4)
    envid, jobid = _create(st, token)
    shown = wait_for(lambda: "unreachable" in (info := _api_env(st, token, envid).get("info", "")) and info,
                     15, "the API to say OpenNebula is unreachable", stack=st)
    assert "retrying" in shown
    assert _final(st, jobid)["status"] == "DONE", st.events(envid)
    assert st.slots_of(envid) == ["m", "s0", "s1"]                  # nothing duplicated
    assert sorted(envstore.get_vms(st.r, envid)) == ["m", "s0", "s1"]
    assert any("OpenNebula unreachable" in e for e in st.events(envid))
    _remove(st, token, envid)


def _live_schedulers(raw: redis.Redis) -> set[str]:
    """rq-scheduler instances whose loop is running: each heartbeats its own key (`rq:scheduler_instance:<uuid>`,
    expiring a few seconds after its last loop) and marks it `death` when it stops."""
    keys_ = raw.keys("rq:scheduler_instance:*")
    return {k.decode() for k in keys_ if raw.hexists(k, "birth") and not raw.hexists(k, "death")}


def _tick_results(raw: redis.Redis, into: dict[str, str], old: frozenset[str] = frozenset()) -> list[str]:
    """Add the tick job's results seen now to `into` (result id -> value: RQ keeps only its last 10) and
    return them all but those with an id in `old`, oldest first."""
    try:
        job = JsonJob.fetch(schedule.TICK_ID, connection=raw)
    except Exception:  # noqa: BLE001 - not enqueued yet
        job = None
    for result in job.results() if job is not None else []:
        if result.return_value:
            into.setdefault(str(result.id), str(result.return_value))
    return [into[k] for k in sorted(into) if k not in old]


def _minutes_done(results: list[str]) -> list[int]:
    return [int(m.group(1)) for r in results if (m := re.search(r"'minute': (\d+)", r))]


def test_two_schedulers_do_one_ticks_work_per_minute(stack: tuple[Stack, str]) -> None:
    """Two scheduler processes run side by side (both rq-scheduler loops alive the whole time, ticks every
    second); across two minute boundaries (stepped: Stack.run_minute) each minute's work is done by exactly one
    tick, every other is skipped."""
    st, _ = stack
    raw = redis.Redis.from_url(st.redis.url)
    before = _live_schedulers(raw)
    results: dict[str, str] = {}
    _tick_results(raw, results)
    old = frozenset(results)                                 # ticks of earlier tests
    first, second = st.start_scheduler("sched1", tick_every=1), st.start_scheduler("sched2", tick_every=1)
    try:
        both = wait_for(lambda: len(s := _live_schedulers(raw) - before) == 2 and s, 30, "both schedulers' loops",
                        stack=st)

        def enough() -> list[str]:
            seen = _tick_results(raw, results, old)
            skipped = sum(r.startswith("skipped") for r in seen)
            return seen if len(set(_minutes_done(seen))) >= 2 and skipped >= 3 else []

        st.run_minute()
        st.run_minute()
        seen = wait_for(enough, 30, "ticks done in two minutes and skipped thrice", stack=st)
        assert _live_schedulers(raw) - before == both, "a scheduler stopped or was replaced meanwhile"
        assert [p.poll() for p in (first, second)] == [None, None]
    finally:
        for proc in (first, second):
            proc.terminate()
            proc.wait(10)
        raw.close()
    for name in ("sched1", "sched2"):
        assert "Registering birth" in (st.workdir / f"{name}.log").read_text(), name
    done = _minutes_done(seen)
    assert len(done) == len(set(done)), f"two ticks did one minute's work: {json.dumps(seen)}"
    assert done == sorted(done) and done[-1] - done[0] == len(done) - 1, f"a minute without its tick: {done}"
    skipped = [r for r in seen if r.startswith("skipped")]
    assert len(skipped) + len(done) == len(seen) and len(skipped) >= 3, seen
    for minute in done:
        assert st.r.exists(keys.tick("minute", minute)), minute
