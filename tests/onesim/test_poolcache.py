"""The pool caches never serve stale XML: every API and fault path that changes a VM shows in
one.vmpool.info / infoextended / infoset / monitoring, byte for byte what a fresh render gives."""

from __future__ import annotations

import xmlrpc.client
from collections.abc import Callable
from typing import Any

import pyone
import pytest

from onesim import states as S
from onesim import xmlout as X
from tests.onesim.conftest import Sim
from tests.onesim.xsdcheck import validate

VM = ('CPU = 0.5\nMEMORY = 128\nNIC = [ NETWORK_ID = 0 ]\nDISK = [ IMAGE_ID = 0 ]\n'
      'CONTEXT = [ IP = "$NIC[IP]", TOKEN = "a<b>&c" ]\nCARINA_ENVID = "7"\nLABELS = "x"\n')


def ok(answer: list) -> object:
    assert answer[0] is True, answer
    return answer[1]


class Pools:
    """Reads every pool over XML-RPC and compares it with a fresh render of the model."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.proxy = xmlrpc.client.ServerProxy(sim.handle.url)
        self.auth = sim.handle.auth
        self.seen: list[str] = []

    def served(self) -> dict[str, str]:
        p, a = self.proxy, self.auth
        with self.sim.model.lock:
            ids = ",".join(str(i) for i in sorted(self.sim.model.vms))
        return {"extended": str(ok(p.one.vmpool.infoextended(a, -2, -1, -1, -2))),
                "short": str(ok(p.one.vmpool.info(a, -2, -1, -1, -2))),
                "infoset": str(ok(p.one.vmpool.infoset(a, ids, True))),
                "monitoring": str(ok(p.one.vmpool.monitoring(a, -2, 0)))}

    def fresh(self) -> dict[str, str]:
        with self.sim.model.lock:
            vms = [vm for _, vm in sorted(self.sim.model.vms.items())]
            full = "<VM_POOL>" + "".join(X.vm_xml(vm) for vm in vms) + "</VM_POOL>"
            return {"extended": full, "short": "<VM_POOL>" + "".join(X.vm_short_xml(vm) for vm in vms) + "</VM_POOL>",
                    "infoset": full,
                    "monitoring": X.monitoring_xml([vm.monitoring[-1] for vm in vms
                                                    if vm.monitoring and vm.state != S.DONE])}

    def check(self) -> dict[int, Any]:
        """Assert every pool equals a fresh render and validates; the full bodies by VM id (lxml elements)."""
        served, fresh = self.served(), self.fresh()
        for kind in served:
            assert served[kind] == fresh[kind], f"stale {kind} pool"
        validate(served["short"], "vm_pool.xsd", "VM_POOL")
        validate(served["monitoring"], "monitoring_data.xsd", "MONITORING_DATA")
        root = validate(served["extended"], "vm_pool_extended.xsd", "VM_POOL")
        return {int(vm.findtext("ID")): vm for vm in root}


    def step(self, name: str, change: Callable[[], object], expect: Callable[[dict[int, Any]], bool]) -> None:
        """With warm caches, make one change; every pool must show it (and `expect` hold on the full bodies)."""
        self.check()
        change()
        assert expect(self.check()), name
        self.seen.append(name)


@pytest.fixture
def pools(sim: Sim) -> Pools:
    return Pools(sim)


def st(vms: dict[int, Any], vmid: int) -> tuple[int, int]:
    return int(vms[vmid].findtext("STATE")), int(vms[vmid].findtext("LCM_STATE"))


def last(vms: dict[int, Any], vmid: int, name: str) -> str:
    return vms[vmid].findtext(f"HISTORY_RECORDS/HISTORY[last()]/{name}")


def user(vms: dict[int, Any], vmid: int, name: str) -> str | None:
    return vms[vmid].findtext(f"USER_TEMPLATE/{name}")


def test_lifecycle_changes_show_in_the_pools(sim: Sim, one: pyone.OneServer, pools: Pools) -> None:
    rpc, auth, step = pools.proxy, pools.auth, pools.step
    a = one.vm.allocate(VM)
    b = ok(rpc.onesim.vm.allocatebatch(auth, [VM], True))[0]  # type: ignore[index]
    tid = one.template.allocate('NAME = "t"\nCPU = 0.1\nMEMORY = 64')
    step("instantiate", lambda: one.template.instantiate(tid, "from-t"), lambda v: v[2].findtext("NAME") == "from-t")
    step("release", lambda: one.vm.action("release", b), lambda v: st(v, b) == (1, 0))
    step("schedule+boot", lambda: sim.advance(), lambda v: st(v, a) == (3, 3) and last(v, a, "HOSTNAME"))
    step("setcpu", lambda: rpc.onesim.vm.setcpu(auth, a, 42.5), lambda v: v[a].findtext("MONITORING/CPU") == "42.5")
    step("monitor tick", lambda: sim.advance(10), lambda v: v[a].findtext("LAST_POLL") == str(sim.model.now()))
    step("sim.monitor", lambda: (sim.clock.advance(1), rpc.onesim.sim.monitor(auth)),
         lambda v: v[a].findtext("LAST_POLL") == str(sim.model.now()))
    step("update merge", lambda: one.vm.update(a, "READY = YES", 1), lambda v: user(v, a, "READY") == "YES")
    step("update replace", lambda: one.vm.update(a, "ONLY = 1", 0),
         lambda v: user(v, a, "READY") is None and user(v, a, "ONLY") == "1")
    step("poweroff", lambda: one.vm.action("poweroff", a), lambda v: st(v, a) == (3, 18))
    step("-> POWEROFF", lambda: sim.advance(), lambda v: st(v, a) == (8, 0))
    step("resched", lambda: one.vm.action("resched", a), lambda v: v[a].findtext("RESCHED") == "1")
    step("unresched", lambda: one.vm.action("unresched", a), lambda v: v[a].findtext("RESCHED") == "0")
    step("resume", lambda: one.vm.action("resume", a), lambda v: st(v, a) == (3, 20))
    step("-> RUNNING", lambda: sim.advance(), lambda v: st(v, a) == (3, 3))
    step("suspend", lambda: (one.vm.action("suspend", a), sim.advance()), lambda v: st(v, a) == (5, 0))
    step("stop", lambda: (one.vm.action("stop", a), sim.advance()),
         lambda v: st(v, a) == (4, 0) and last(v, a, "ETIME") != "0")
    step("resume stopped", lambda: one.vm.action("resume", a), lambda v: st(v, a) == (1, 0))
    step("redeploy", lambda: sim.advance(), lambda v: st(v, a) == (3, 3) and last(v, a, "SEQ") == "1")
    step("undeploy", lambda: (one.vm.action("undeploy", a), sim.advance()), lambda v: st(v, a) == (9, 0))
    step("deploy", lambda: (one.vm.deploy(a, 2), sim.advance()),
         lambda v: st(v, a) == (3, 3) and last(v, a, "HID") == "2")
    step("terminate", lambda: one.vm.action("terminate", b), lambda v: st(v, b) == (3, 12))
    step("-> DONE", lambda: sim.advance(), lambda v: st(v, b) == (6, 0) and v[b].findtext("ETIME") != "0")
    step("terminate-hard", lambda: (one.vm.action("terminate-hard", 2), sim.advance()), lambda v: st(v, 2) == (6, 0))
    assert len(pools.seen) == 23


def test_fault_recover_and_scheduler_changes_show_in_the_pools(sim: Sim, one: pyone.OneServer,
                                                               pools: Pools) -> None:
    rpc, auth, step = pools.proxy, pools.auth, pools.step
    a, b, held = ok(rpc.onesim.vm.allocatebatch(auth, [VM, VM], False)) + [one.vm.allocate(VM, True)]  # type: ignore[operator]
    sim.advance()
    step("hold", lambda: (rpc.one.vm.allocate(auth, VM, False), one.vm.action("hold", 3)),
         lambda v: st(v, 3) == (2, 0))
    step("fail BOOT_FAILURE", lambda: rpc.onesim.vm.fail(auth, a, "BOOT_FAILURE"), lambda v: st(v, a) == (3, 36))
    step("recover retry", lambda: (one.vm.recover(a, 2), sim.advance()), lambda v: st(v, a) == (3, 3))
    step("fail UNKNOWN", lambda: rpc.onesim.vm.fail(auth, a, "UNKNOWN"), lambda v: st(v, a) == (3, 16))
    step("recover success", lambda: one.vm.recover(a, 1), lambda v: st(v, a) == (3, 3))
    step("recover recreate", lambda: one.vm.recover(b, 4),
         lambda v: st(v, b) == (1, 0) and v[b].findtext("DEPLOY_ID") == "")
    step("fill on", lambda: (rpc.onesim.host.fill(auth, True), sim.advance()),
         lambda v: "No host with enough capacity" in (user(v, b, "SCHED_MESSAGE") or ""))
    step("fill off", lambda: (rpc.onesim.host.fill(auth, False), sim.advance()),
         lambda v: st(v, b) == (3, 3) and user(v, b, "SCHED_MESSAGE") is None)
    step("recover delete", lambda: one.vm.recover(held, 3), lambda v: st(v, held) == (6, 0))
    step("recover delete-db", lambda: one.vm.recover(3, 5), lambda v: 3 not in v)
    step("vanish", lambda: rpc.onesim.vm.fail(auth, a, "vanish"), lambda v: a not in v)
    assert len(pools.seen) == 11


def test_the_check_catches_a_change_made_without_touch(sim: Sim, one: pyone.OneServer, pools: Pools) -> None:
    vmid = one.vm.allocate(VM)
    sim.advance()
    pools.check()
    with sim.model.lock:
        sim.model.vms[vmid].history[-1].etime = 12345  # in place and without touch(): a bug
    with pytest.raises(AssertionError, match="stale extended pool"):
        pools.check()
    with sim.model.lock:
        sim.model.vms[vmid].touch()
    assert pools.check()[vmid].findtext("HISTORY_RECORDS/HISTORY/ETIME") == "12345"


def test_unchanged_vms_are_not_rendered_again(sim: Sim, one: pyone.OneServer, pools: Pools) -> None:
    ids = [one.vm.allocate(VM) for _ in range(3)]
    sim.advance()
    pools.check()
    cache = sim.handle.api.pools
    with sim.model.lock:
        before = {i: cache.full(sim.model.vms[i]) for i in ids}
        sim.model.vms[ids[1]].resched = 1  # any assignment bumps the version
        after = {i: cache.full(sim.model.vms[i]) for i in ids}
    assert all(x is y for x, y in zip(before[ids[0]], after[ids[0]], strict=True))
    assert after[ids[1]][2] is not before[ids[1]][2]  # the state was rendered again...
    assert after[ids[1]][4] is before[ids[1]][4]  # ...the template part was not (templates unchanged)
    assert after[ids[1]][3] is before[ids[1]][3]  # ...nor the monitoring (no new sample)


def test_a_new_monitoring_sample_renders_last_poll_and_monitoring_only(sim: Sim, one: pyone.OneServer,
                                                                       pools: Pools) -> None:
    vmid = one.vm.allocate(VM)
    sim.advance()
    pools.check()
    cache = sim.handle.api.pools
    with sim.model.lock:
        vm = sim.model.vms[vmid]
        full, short, version = cache.full(vm), cache.short(vm), vm.version
    sim.clock.advance(1)
    pools.proxy.onesim.vm.setcpu(pools.auth, vmid, 33.0)           # a new sample: cpu_pct, record, LAST_POLL
    with sim.model.lock:
        assert vm.version == version
        full2, short2 = cache.full(vm), cache.short(vm)
    changed = {i for i, (a, b) in enumerate(zip(full, full2, strict=True)) if a is not b}
    assert changed == {1, 3}                                       # LAST_POLL and MONITORING
    assert {i for i, (a, b) in enumerate(zip(short, short2, strict=True)) if a is not b} == {1, 4}
    vms = pools.check()                                            # byte for byte a fresh render
    assert vms[vmid].findtext("MONITORING/CPU") == "33.0" and vms[vmid].findtext("LAST_POLL") == str(sim.model.now())


def test_version_moves_on_every_assignment_and_touch(sim: Sim, one: pyone.OneServer) -> None:
    vmid = one.vm.allocate(VM)
    with sim.model.lock:
        vm = sim.model.vms[vmid]
        start = vm.version
        mon = vm.mon_version
        vm.resched = vm.resched
        vm.touch()
        assert vm.version == start + 2 and vm.mon_version == mon + 1   # touch(): every piece is stale
        vm.last_poll = 7                                               # a monitoring field: mon_version only
        assert vm.version == start + 2 and vm.mon_version == mon + 2
        vm.version = 100  # setting the version itself does not bump it
        assert vm.version == 100
