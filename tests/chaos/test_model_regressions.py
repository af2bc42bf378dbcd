"""What the model-based chaos run (tests/chaos/test_model.py) found, minimized to plain tests: each drives the
engine in-process (real Redis, the in-process simulator over XML-RPC, one FakeClock) and interrupts a worker
exactly where the model did (tests/chaos/model_parts.Fuse: a death or a pause past the lock's TTL)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from functions import tasks
from functions.engine import loop as engine
from functions.engine.context import Ctx
from functions.errors import Conflict, NotFound
from functions.ops import operations
from functions.store import envstore, guards, keys, scripts
from tests.chaos.model_parts import Fuse, Killed, fused_ctx
from tests.integration.engine_fixtures import SERVICE, Rig, SpyOne, create_ready, open_rig


@pytest.fixture
def rig(rdb: redis.Redis) -> Iterator[Rig]:
    yield from open_rig(rdb)


def test_a_drive_paused_between_its_intent_and_the_allocate_leaves_no_second_vm(rig: Rig) -> None:
    """Model: fresh(w0); work(how=pause, where=one, at=1). The drive wrote the master's intent and stalled
    just before allocate; its lock expired and another worker allocated the master and recorded it; then the
    stalled allocate went through. Its VM (tagged with the same slot and nonce) was recorded nowhere: a live
    orphan next to the master, for the environment's whole life."""
    envid, _ = rig.create(master_setup_time=0, num_slaves=0)

    def another_worker_takes_over() -> None:
        rig.r.delete(keys.env_lock(envid))                   # the stalled holder's TTL ran out
        assert rig.drive(envid) == "wait"                    # ... and this worker allocated the master

    fuse = Fuse("one", 1, action=another_worker_takes_over)
    assert engine.step(fused_ctx(rig, fuse), envid) == "lost"
    master = rig.vms(envid)["m"]
    assert [a["vmid"] is not None for a in rig.allocs] == [True, True]   # both allocates reached OpenNebula
    assert [vm.id for vm in rig.live(envid)] == [master.vmid]            # the stalled one's VM is terminated
    rig.tick()
    rig.drive(envid)
    assert rig.running(master.vmid) and rig.vms(envid)["m"].state == "running"


class _DiesAfterScript(redis.Redis):
    """The real client of a worker that dies at its first Redis call after script `name` ran (on this thread)."""

    def __init__(self, pool: redis.ConnectionPool, name: str) -> None:
        super().__init__(connection_pool=pool)
        self.sha = hashlib.sha1(scripts.LUA[name].encode()).hexdigest()  # noqa: S324 - Redis' script id
        self.owner, self.dead = threading.get_ident(), False

    def execute_command(self, *args: Any, **options: Any) -> Any:
        mine = threading.get_ident() == self.owner
        if mine and self.dead:
            raise Killed
        result = super().execute_command(*args, **options)
        self.dead = self.dead or (mine and args[0] == "EVALSHA" and args[1] == self.sha)
        return result

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        if self.dead and threading.get_ident() == self.owner:
            raise Killed
        return super().pipeline(transaction, shard_hint)


def test_a_worker_killed_right_after_ending_a_job_leaves_no_guard_behind(rig: Rig) -> None:
    """Model: a create killed (work how=kill) after its job was written FAIL and before the operation guard
    was released. The next drive saw no work and left the guard naming the ended job for ever, so the
    never-created environment accepted a scale-up (start_op treats an ended holder as free) instead of 409;
    and until that drive, the request's "not ready" check (made only when no guard was held) was skipped."""
    envid, jobid = rig.create(master_setup_time=0, num_slaves=0)
    rig.drive(envid)
    rig.tick()
    rig.drive(envid)                                         # waiting for MASTER_INIT_DONE
    rig.clock.advance(rig.settings.create_deadline)
    _killed_after(rig, envid, "finish_job_if_owner")
    assert rig.job(jobid)["status"] == "FAIL" and guards.current_op(rig.r, envid) == jobid
    with pytest.raises(Conflict, match="not ready"):         # even before recovery drives it again
        rig.scale(envid, "up")
    assert rig.drive(envid) == "idle"                        # recovery's drive
    assert guards.current_op(rig.r, envid) is None and envstore.inflight(rig.r) == []
    with pytest.raises(Conflict, match="not ready"):
        rig.scale(envid, "up")


def _killed_after(rig: Rig, envid: str, script: str) -> None:
    """One drive of `envid` by a worker that dies right after Lua script `script` ran; its lock then expires."""
    ctx = Ctx(r=_DiesAfterScript(rig.r.connection_pool, script), queue=rig.queue, settings=rig.settings,
              clock=rig.clock, one_factory=lambda url, auth: SpyOne(url, auth, rig), on_end=tasks.END_HOOKS,
              ssh=rig.ssh)
    with pytest.raises(Killed):
        engine.step(ctx, envid)
    rig.r.delete(keys.env_lock(envid))


def test_a_remove_killed_between_its_done_and_the_deletion_still_deletes_and_takes_no_scale(rig: Rig) -> None:
    """Model: fresh(w0); remove; the remove's worker killed after its job was written DONE and before the
    environment was deleted; then a scale-up. The environment stayed for ever (the next drive saw no work),
    and the scale-up was accepted on it (an ended guard counts as free) instead of 404."""
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=0)
    (remove,) = operations.request_remove(rig.r, rig.queue, SERVICE, envid, rig.clock)
    rig.drive(envid)                                         # terminating the master
    rig.tick()
    _killed_after(rig, envid, "finish_job_if_owner")         # its VM gone, the job DONE, not deleted yet
    assert rig.job(remove)["status"] == "DONE" and envstore.get_env(rig.r, envid) is not None
    assert rig.live(envid) == []
    with pytest.raises(NotFound):
        rig.scale(envid, "up")
    assert rig.drive(envid) in ("idle", "gone")              # recovery's drive finishes the deletion
    assert envstore.get_env(rig.r, envid) is None and guards.current_op(rig.r, envid) is None
    assert envstore.inflight(rig.r) == [] and rig.job(remove)["status"] == "DONE"
    assert [j["status"] for j in envstore.list_jobs(rig.r, SERVICE)] == ["DONE", "DONE"]   # create, remove


def _killed_at(rig: Rig, envid: str, where: str, at: int = 1) -> None:
    """One drive of `envid` by a worker that dies at its `at`-th point `where` (model_parts.Fuse)."""
    fuse = Fuse(where, at)
    fuse.action = fuse.kill
    with pytest.raises(Killed):
        engine.step(fused_ctx(rig, fuse), envid)
    rig.r.delete(keys.env_lock(envid))                       # its lock expires


def test_a_scaleup_rolled_back_after_a_lost_allocate_answer_terminates_that_vm(rig: Rig) -> None:
    """Model (minimized by hand from a long run): a scale-up whose worker died right after OpenNebula answered
    the allocate (the intent recorded, its VM id not), then the scale-up's deadline passed before the next
    drive: the rollback dropped the intent and left the VM it never recorded (tagged with the slot) running."""
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=0)
    up = rig.scale(envid, "up")
    _killed_at(rig, envid, "answered")
    assert rig.vms(envid)["s0"].vmid is None and len(rig.live(envid)) == 2
    rig.clock.advance(rig.settings.create_deadline)
    rig.drive(envid)
    job = rig.job(up)
    assert job["status"] == "FAIL" and "not running within" in job["info"]
    assert sorted(rig.vms(envid)) == ["m"]
    rig.tick()
    assert [vm.id for vm in rig.live(envid)] == [rig.vms(envid)["m"].vmid]      # the unrecorded VM is gone too


def test_a_remove_re_driven_after_its_deadline_finishes_when_its_vms_are_gone(rig: Rig) -> None:
    """Model (minimized by hand from a long run): a remove whose worker died right after OpenNebula accepted the
    terminate, re-driven only after the operation deadline: it failed at once ("did not complete within") and
    kept the environment with a record of the VM it had itself terminated, though nothing was left to wait for."""
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=0)
    (remove,) = operations.request_remove(rig.r, rig.queue, SERVICE, envid, rig.clock)
    _killed_at(rig, envid, "answered")                       # terminate asked, then the worker died
    rig.tick()                                               # the master VM is DONE
    assert rig.live(envid) == []
    rig.clock.advance(rig.settings.op_deadline)
    rig.drive(envid)
    assert rig.job(remove)["status"] == "DONE" and envstore.get_env(rig.r, envid) is None


def test_a_create_failing_at_its_deadline_records_the_vm_its_lost_allocate_made(rig: Rig) -> None:
    """Model (test_model_short): a create whose worker died right after OpenNebula answered the master's allocate,
    re-driven only after the create deadline: it failed without looking, so the master's record kept no VM id
    while that VM ran (shown without an id; only a remove's tag scan would ever find it)."""
    envid, jobid = rig.create(master_setup_time=0, num_slaves=0)
    _killed_at(rig, envid, "answered")
    (made,) = [vm.id for vm in rig.live(envid)]
    assert rig.vms(envid)["m"].vmid is None
    rig.clock.advance(rig.settings.create_deadline)
    rig.drive(envid)
    job = rig.job(jobid)
    assert job["status"] == "FAIL" and job["info"].startswith("the master VM did not reach RUNNING")
    assert rig.vms(envid)["m"].vmid == made and [vm.id for vm in rig.live(envid)] == [made]


def test_a_scaledown_re_driven_after_its_deadline_finishes_when_its_vm_is_gone(rig: Rig) -> None:
    """Model (long run): a scale-down whose worker died right after OpenNebula accepted the slave's terminate,
    re-driven only after the operation deadline: it failed at once and kept the record of the slave it had
    itself terminated. Past the deadline, a scale-down that already told the master now takes one last look."""
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=1, drain_time=0)
    s0 = rig.vms(envid)["s0"]
    down = rig.scale(envid, "down")
    _killed_at(rig, envid, "answered")
    rig.tick()
    assert rig.sim_vm(s0.vmid).state == 6 and "s0" in rig.vms(envid)              # DONE, still recorded
    rig.clock.advance(rig.settings.op_deadline)
    rig.drive(envid)
    job = rig.job(down)
    assert job["status"] == "DONE" and job["info"] == f"removed slave s0 (VM {s0.vmid})"
    assert sorted(rig.vms(envid)) == ["m"]


def test_a_scaledown_past_its_deadline_before_telling_the_master_still_fails(rig: Rig) -> None:
    """The last look starts nothing new: a scale-down that never told the master fails at its deadline."""
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=1, drain_time=0)
    down = rig.scale(envid, "down")
    before = len(rig.ssh.calls)
    _killed_at(rig, envid, "write", 4)                       # after begin set the deadline, before the master
    assert rig.env(envid)["op_job"] == down and len(rig.ssh.calls) == before
    rig.clock.advance(rig.settings.op_deadline)
    rig.drive(envid)
    assert rig.job(down)["status"] == "FAIL" and len(rig.ssh.calls) == before and "s0" in rig.vms(envid)


def test_a_remove_with_opennebula_down_still_fails_at_its_deadline(rig: Rig) -> None:
    """The last look past the deadline does not turn an unreachable OpenNebula into retries for ever."""
    envid, _ = create_ready(rig, master_setup_time=0, num_slaves=0)
    (remove,) = operations.request_remove(rig.r, rig.queue, SERVICE, envid, rig.clock)
    rig.sim.stop()                                           # the endpoint is gone
    assert rig.drive(envid) == "retry"
    rig.clock.advance(rig.settings.op_deadline)
    assert rig.drive(envid) == "idle"
    job = rig.job(remove)
    assert job["status"] == "FAIL" and "remove did not complete within" in job["info"]
    assert guards.current_op(rig.r, envid) is None and envstore.get_env(rig.r, envid) is not None
