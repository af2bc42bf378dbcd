"""Every request path is one atomic step: a Redis error injected at each of its commands in turn leaves either
nothing, or the whole operation recorded (job, guard, in-flight mark) so that recovery drives it; never a guard
pointing at a job that does not exist, a RUNNING job nobody will end, or half a group (real redis-server)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from config.settings import Settings
from functions import errors
from functions.ops import operations
from functions.store import envstore, guards, keys
from functions.upkeep import reconcile
from tests.api.test_env_routes import _create, _finish, _queue, _setup
from tests.faultredis import TickingRedis

FINAL = ("DONE", "FAIL", "ABORT")


class Injected(redis.ConnectionError):
    """The injected failure."""


class FaultyRedis(TickingRedis):
    """A real client whose `fail_at`-th command (a pipeline's EXEC counting as one) raises Injected."""

    fail_at = 0
    count = 0

    def tick(self) -> None:
        self.count += 1
        if self.count == self.fail_at:
            raise Injected(f"injected failure at command {self.count}")


def jobs_of(r: redis.Redis, service: str, envid: str) -> list[dict[str, str]]:
    return [j for j in envstore.list_jobs(r, service, limit=1000) if j.get("envid") == envid]


def check_invariants(r: redis.Redis, service: str) -> None:
    """No guard without its job; a RUNNING job is its env's guard holder (or pre-empted by the REMOVE holding
    it); a held guard's env is in flight (recovery will drive it)."""
    for env in envstore.list_envs(r, service):
        envid = env["envid"]
        holder = guards.current_op(r, envid)
        if holder:
            job = envstore.get_job(r, holder)
            assert job is not None, f"env {envid}: guard {holder} names no job"
            if job["status"] not in FINAL:
                assert envid in envstore.inflight(r), f"env {envid}: job {holder} runs but nothing drives it"
        holder_type = (envstore.get_job(r, holder) or {}).get("type") if holder else None
        for job in jobs_of(r, service, envid):
            if job["status"] == "RUNNING" and job["jobid"] != holder:
                assert holder_type == "REMOVE", f"env {envid}: job {job['jobid']} RUNNING without the guard"


def inject_everywhere(rdb: redis.Redis, setup: Callable[[], Any], request: Callable[[redis.Redis, Any], Any],
                      after: Callable[[Any], None]) -> int:
    """Run `request` with a failure injected at command 1, 2, ... until one run completes; check the
    invariants after each failed run and `after` once the state settles. Returns how many points were hit."""
    for point in range(1, 200):
        rdb.flushall()
        ctx = setup()
        faulty = FaultyRedis(connection_pool=rdb.connection_pool)
        faulty.fail_at = point
        try:
            request(faulty, ctx)
        except Injected:
            check_invariants(rdb, "svc1")
            after(ctx)
            continue
        check_invariants(rdb, "svc1")
        return point - 1
    raise AssertionError("the request never completed")


def test_a_scale_request_failing_at_any_write_never_blocks_the_environment(api: Any) -> None:
    def setup() -> tuple[str, str]:
        token = _setup(api)
        envid, _ = _create(api, token)
        _finish(api, envid)
        return token, envid

    def request(r: redis.Redis, ctx: tuple[str, str]) -> None:
        operations.request_scale(r, _queue(api.r), "svc1", ctx[1], "up", api.clock)

    def after(ctx: tuple[str, str]) -> None:
        envid = ctx[1]
        holder = guards.current_op(api.r, envid)
        try:                                        # the next request is served, or the recorded one runs
            operations.request_scale(api.r, _queue(api.r), "svc1", envid, "up", api.clock)
        except errors.Busy:
            assert holder is not None and envid in reconcile.recover_all(api.r, _queue(api.r))

    assert inject_everywhere(api.r, setup, request, after) >= 3


def test_a_remove_request_failing_at_any_write_leaves_the_environment_removable(api: Any) -> None:
    def setup() -> str:
        token = _setup(api)
        envid, _ = _create(api, token)
        _finish(api, envid)
        operations.request_scale(api.r, _queue(api.r), "svc1", envid, "up", api.clock)
        return envid

    def request(r: redis.Redis, envid: str) -> None:
        operations.request_remove(r, _queue(api.r), "svc1", envid, api.clock)

    def after(envid: str) -> None:
        (jobid,) = operations.request_remove(api.r, _queue(api.r), "svc1", envid, api.clock)
        assert guards.current_op(api.r, envid) == jobid and envstore.get_job(api.r, jobid)["type"] == "REMOVE"

    assert inject_everywhere(api.r, setup, request, after) >= 3


def test_a_group_request_failing_at_any_write_leaves_no_half_group(api: Any) -> None:
    def setup() -> None:
        _setup(api)

    def request(r: redis.Redis, _: None) -> None:
        operations.request_create(r, _queue(api.r), "svc1", "pair", api.clock, Settings())

    def after(_: None) -> None:
        envs = envstore.list_envs(api.r, "svc1")
        jobs = envstore.list_jobs(api.r, "svc1", limit=100)
        if not envs:
            assert jobs == [] and api.r.keys(keys.group("*")) == []
        else:
            (env,) = envs
            assert env.get("group") == env["envid"] and api.r.exists(keys.group(env["envid"]))
            assert sorted(j["status"] for j in jobs) == ["PENDING", "RUNNING"]

    assert inject_everywhere(api.r, setup, request, after) >= 3

