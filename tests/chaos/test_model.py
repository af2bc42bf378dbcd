"""A model-based chaos run: hypothesis drives the real pieces (real redis-server with AOF, the simulator over
XML-RPC, the engine in-process on one FakeClock: tests/integration/engine_fixtures.Rig) through random
creates, scale-ups and -downs, removes, VM faults (UNKNOWN, BOOT_FAILURE, vanished), callbacks out of order
and duplicated, a master whose SSH fails, drives killed, stalled past the lock's TTL or hit by a failing call
at a chosen Redis write or OpenNebula allocate/terminate (model_parts.Fuse), and redis-server kill -9 /
restarts between steps and in the middle of a drive (appendfsync no: a killed process loses nothing it
acknowledged, the page cache keeps it; World.restart_redis checks that).

After each example everything settles (every environment driven until idle while the clock runs past every
deadline) and the invariants of model_parts.check_settled must hold: the VMs OpenNebula has tagged for an
environment are exactly the ones its records hold (no duplicate slot, no orphan, nothing left by a removed
environment), every job ended, no guard or lock is held, desired_slaves matches the records after a DONE.

One simulator and one redis-server serve the whole test; each example starts from model_parts.reset. What the
runs found is pinned, minimized, in tests/chaos/test_model_regressions.py. A failure prints its program (the
steps); `-s` prints what a run covered.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from config.settings import Settings
from functions.cloud.one import OneUnavailable
from functions.engine import loop as engine
from functions.engine.context import load, work_pending
from functions.errors import Busy, Conflict, NotFound
from functions.model.clock import FakeClock
from functions.ops import callbacks, operations
from functions.store import envstore, guards, keys
from functions.store.runtime import JsonQueue
from functions.upkeep import ticks
from onesim.server import start_simulator
from tests.chaos.model_parts import KINDS, Fuse, Killed, check_settled, fused_ctx, load_scripts, reset
from tests.harness import RedisServer
from tests.integration.engine_fixtures import SERVICE, Rig, SpyOne

SETTLE_ROUNDS = 40
PROGRESS_TICK = 5.0     # seconds of simulator time between the drives of `work`
MAX_ENVS = 3            # per example: the other rules get the steps
# What each rule picks from (a repeated entry is picked more often).
REQUESTS = ("create", "up", "up", "down", "down", "remove", "remove")
WORK = ("steady", "steady", "kill", "kill", "pause", "redis", "blip")
WHERE = ("write", "write", "one", "answered", "answered")             # model_parts.Fuse points
FAULTS = ("UNKNOWN", "BOOT_FAILURE", "vanish")
OUTSIDE = ("vm report 0", "vm report 0", "vm report 1", "vm report 2", *(f"vm {f}" for f in FAULTS),
           "tick 1", "tick 1", "tick 2", "tick 30", "tick 700", "refresh", "ssh ok", "ssh exit", "ssh down",
           "redis restart")


class World:
    """The shared pieces: the redis-server (restartable) and the rig on it; `seen` counts what happened (shown
    on failure and with -s, to judge what a run covered)."""

    def __init__(self, server: RedisServer, rig: Rig) -> None:
        self.server, self.rig = server, rig
        self.seen: Counter[str] = Counter()

    def restart_redis(self) -> None:
        """kill -9 redis-server and start it again on its AOF; the clients reconnect on their next command."""
        before = self._durable_keys()
        self.server.kill()
        self.server.start()
        for client in (self.rig.r, self.rig.queue.connection):
            client.connection_pool.disconnect()
        load_scripts(self.rig.r)                             # as the first EVALSHA of each would
        assert self._durable_keys() == before, "redis lost acknowledged writes over a restart"

    def _durable_keys(self) -> set[str]:
        r = self.rig.r
        names = list(r.scan_iter(count=1000))
        with r.pipeline(transaction=False) as p:
            for name in names:
                p.pttl(name)
            ttls = p.execute()
        return {n for n, ttl in zip(names, ttls, strict=True) if ttl == -1}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    server = RedisServer(Path(tmp_path_factory.mktemp("model-redis")), appendfsync="no").start()
    clock = FakeClock()
    sim = start_simulator(clock=clock, tick=False, guests="none")
    r = redis.Redis.from_url(server.url, decode_responses=True)
    raw = redis.Redis.from_url(server.url)
    home = Path(tmp_path_factory.mktemp("model-home"))
    rig = Rig(r=r, queue=JsonQueue("carina", connection=raw), sim=sim, clock=clock,
              settings=Settings(create_deadline=600, op_deadline=900, drain_time_default=30, ssh_timeout=5.0,
                                callback_addr="127.0.0.1:4567", home=home))
    try:
        yield World(server, rig)
    finally:
        sim.stop()
        r.close()
        raw.close()
        server.stop()


STATUSES = {"master": ("MASTER_INIT_DONE", "MASTER_INIT_FAIL:boom", "APP_RUNNING"),
            "slave": ("SLAVE_{i}_INIT_DONE", "SLAVE_{i}_INIT_FAIL:disk", "APP_RUNNING")}


def _blip(where: str) -> None:
    """The call at this point fails: Redis drops the connection, or OpenNebula cannot be reached (before the
    call) or its answer is lost (after it: the allocate or terminate did happen)."""
    if where == "write":
        raise redis.ConnectionError("connection reset by peer (model blip)")
    raise OneUnavailable("[one.vm] ConnectionError: connection reset (model blip)")


class ChaosModel(RuleBasedStateMachine):
    """Rules are requests, workers (some interrupted), VM reports and faults, and the world outside Carina;
    teardown settles and checks. Weights: a value repeated in a rule's sampled_from is picked more often."""

    world: World

    def __init__(self) -> None:
        super().__init__()
        self.rig = self.world.rig
        self.envids: list[str] = []
        self.vanished: set[int] = set()

    def _pick(self, data: st.DataObject, busy: bool = False) -> str:
        """An environment of this example: one that still exists, with `busy` one whose operation runs (where
        an interrupted worker matters), falling back to any."""
        alive = [e for e in self.envids if self.rig.r.exists(keys.env(e))]
        running = [e for e in alive if guards.current_op(self.rig.r, e)] if busy else []
        return data.draw(st.sampled_from(running or alive or self.envids), label="envid")

    def _create(self, kind: str) -> str:
        rig = self.rig
        envid, _ = operations.request_create(rig.r, rig.queue, SERVICE, kind, rig.clock, rig.settings)
        self.envids.append(envid)
        return envid

    @initialize(kind=st.sampled_from(sorted(KINDS)))
    def fresh(self, kind: str) -> None:
        """A clean slate (model_parts.reset) and a first environment."""
        reset(self.rig)
        self._create(kind)

    @rule(data=st.data(), what=st.sampled_from(REQUESTS), kind=st.sampled_from(sorted(KINDS)),
          how=st.sampled_from(WORK), where=st.sampled_from(WHERE), at=st.integers(1, 6))
    def request(self, data: st.DataObject, what: str, kind: str, how: str, where: str, at: int) -> None:
        """A create (of `kind`, up to MAX_ENVS per example), scale-up, scale-down or remove as the API asks it
        (refusals are the API's 409 / 404). Unless `how` is "steady", the worker that picks up an accepted
        request at once is interrupted as in `work` (where the request's allocate or terminate happens)."""
        if what == "create":
            if len(self.envids) >= MAX_ENVS:
                return
            self.world.seen["create"] += 1
            envid = self._create(kind)
        else:
            envid, rig = self._pick(data), self.rig
            try:
                if what == "remove":
                    operations.request_remove(rig.r, rig.queue, SERVICE, envid, rig.clock)
                else:
                    ready = (envstore.get_env(rig.r, envid) or {}).get("policy_status") not in (None, "INIT")
                    rig.scale(envid, what)
                    assert ready, f"env {envid}: a scale {what} was accepted though its create never completed"
                self.world.seen[f"{what}: accepted"] += 1
            except (Busy, Conflict, NotFound) as exc:
                self.world.seen[f"{what}: refused {type(exc).__name__}"] += 1
                return
        if how != "steady":
            self._work(envid, how, 1, True, where, at)

    @rule(data=st.data(), how=st.sampled_from(WORK), rounds=st.integers(1, 8), reports=st.booleans(),
          where=st.sampled_from(WHERE), at=st.integers(1, 6))
    def work(self, data: st.DataObject, how: str, rounds: int, reports: bool, where: str, at: int) -> None:
        """Workers drive the environment `rounds` times with PROGRESS_TICK of simulator time between (and, with
        `reports` or while the fuse is armed, its master reporting MASTER_INIT_DONE once it runs). Unless `how`
        is "steady", the drives are interrupted at their `at`-th point `where` (model_parts.Fuse, counted
        across the rounds): the worker dies (kill: no more rounds), stalls past the lock's TTL while another
        worker drives the env (pause), redis-server is kill -9'd and restarted under it (redis), or that one
        call fails (blip: OpenNebula unreachable, its answer lost after "answered", or a Redis error); later
        rounds are other, healthy workers."""
        self._work(self._pick(data, busy=how != "steady"), how, rounds, reports, where, at)

    def _work(self, envid: str, how: str, rounds: int, reports: bool, where: str, at: int) -> None:
        at = at if where == "write" else 1 + (at - 1) % 2      # a drive makes one or two OpenNebula changes
        fuse = None if how == "steady" else Fuse(where, at)
        if fuse is not None:
            fuse.action = {"kill": fuse.kill, "pause": lambda: self._takeover(envid),
                           "redis": self.world.restart_redis, "blip": lambda: _blip(where)}[how]
        for _ in range(rounds):
            if fuse is None:
                self.world.seen[f"drive: {self.rig.drive(envid)}"] += 1
            else:
                result = self._fused_drive(envid, fuse)
                self.world.seen[f"{how} at {where}: {result}"] += 1
                if result.startswith("killed"):
                    break                                    # what it left is for the next worker to find
                fuse = None if fuse.blown else fuse
            self.rig.tick(PROGRESS_TICK)
            if reports or fuse is not None:                  # an armed fuse needs the env to move on
                self._master_reports(envid)

    def _master_reports(self, envid: str) -> None:
        master = envstore.get_vms(self.rig.r, envid).get("m")
        if master is not None and master.vmid is not None and master.state == "running" and not master.init:
            callbacks.apply(self.rig.r, self.rig.queue, envid, master.vmid, "status", {"status": "MASTER_INIT_DONE"},
                            self.rig.clock, "m")

    def _fused_drive(self, envid: str, fuse: Fuse) -> str:
        """One drive through `fuse`; returns its result, "killed" if its worker died, "failed: ..." if the drive
        job raised (as RQ would record it), with "(hit)" once blown."""
        try:
            result = engine.step(fused_ctx(self.rig, fuse), envid)
        except Killed:
            result = "killed"
            self.rig.r.delete(keys.env_lock(envid))          # the dead worker's lock expires (its TTL)
        except redis.RedisError as exc:                      # the drive job fails in RQ (taking or freeing the lock)
            result = f"failed: {type(exc).__name__}"
            self.rig.r.delete(keys.env_lock(envid))
        return f"{result} (hit)" if fuse.blown else result

    def _takeover(self, envid: str) -> None:
        self.rig.r.delete(keys.env_lock(envid))              # the paused holder's TTL ran out ...
        self.rig.drive(envid)                                # ... and another worker drove the env meanwhile

    @rule(data=st.data(), what=st.sampled_from(OUTSIDE), times=st.integers(1, 2))
    def outside(self, data: st.DataObject, what: str, times: int) -> None:
        """What happens outside Carina's workers: a VM event (`vm ...`: see _vm) when a VM was ever allocated in
        this example, time passes, the minute tick's VM refresh, the master's SSH starts or stops failing,
        redis-server is kill -9'd and restarted."""
        made = [a for a in self.rig.allocs if a["vmid"] is not None]
        if what.startswith("vm "):
            if made:
                self._vm(data.draw(st.sampled_from(made), label="vm"), what[3:], times)
            return
        self.world.seen[what] += 1
        if what.startswith("tick"):
            self.rig.tick(float(what.split()[1]))
        elif what.startswith("ssh"):
            self.rig.ssh.mode = what.split()[1]
        elif what == "refresh":
            ticks.refresh_vms(self.rig.r, self.rig.clock, lambda url, auth: SpyOne(url, auth, self.rig))
        else:
            self.world.restart_redis()

    def _vm(self, alloc: dict[str, Any], what: str, times: int) -> None:
        """VM `alloc` (any ever allocated in this example, a stale one too) reports a status (`report i`:
        STATUSES[role][i]), possibly twice and in any order, or fails: UNKNOWN, BOOT_FAILURE, or vanishes from
        OpenNebula (onesim.vm.fail)."""
        self.world.seen[f"vm {what}"] += 1
        if what in FAULTS:
            if self.rig.rpc().onesim.vm.fail(self.rig.sim.auth, alloc["vmid"], what)[0] and what == "vanish":
                self.vanished.add(alloc["vmid"])
            return
        role = "master" if alloc["slot"] == "m" else "slave"
        status = STATUSES[role][int(what[-1])].format(i=alloc["slot"][1:])
        for _ in range(times):
            callbacks.apply(self.rig.r, self.rig.queue, alloc["envid"], alloc["vmid"], "status", {"status": status},
                            self.rig.clock, alloc["slot"])

    # ------------------------------------------------------------ the end of an example

    def _unfinished(self) -> list[str]:
        busy = set(envstore.inflight(self.rig.r))
        for envid in self.envids:
            env = load(self.rig.r, envid)
            if env is not None and work_pending(self.rig.r, env):
                busy.add(envid)
        return sorted(busy, key=int)

    def teardown(self) -> None:
        if sys.exc_info()[0] is not None:                    # a rule failed: report that, do not settle over it
            return
        for round_ in range(SETTLE_ROUNDS):
            busy = self._unfinished()
            if not busy:
                break
            for envid in busy:
                self.rig.drive(envid)
            self.rig.tick(31.0 if round_ < 8 else 1000.0)     # drains, polls, then past every deadline
        else:
            raise AssertionError(f"environments {self._unfinished()} still busy after {SETTLE_ROUNDS} rounds")
        check_settled(self.rig, self.envids, self.vanished)
        for job in envstore.list_jobs(self.rig.r, SERVICE):
            self.world.seen[f"job {job['type']} {job['status']}"] += 1


def _run(world: World, examples: int, steps: int, derandomize: bool) -> None:
    ChaosModel.world = world
    world.seen.clear()
    try:
        run_state_machine_as_test(ChaosModel, settings=settings(
            max_examples=examples, stateful_step_count=steps, deadline=None, database=None, derandomize=derandomize,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    finally:
        print("model run covered:", dict(sorted(world.seen.items())))


def test_model_short(world: World) -> None:
    """The same 30 examples every run (derandomized): `make test` stays deterministic."""
    _run(world, examples=30, steps=25, derandomize=True)


@pytest.mark.slow
def test_model_long(world: World) -> None:
    """3,000 steps at most, new examples each run (about a minute on 2 cores)."""
    _run(world, examples=100, steps=30, derandomize=False)
