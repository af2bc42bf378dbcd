"""Every XML-RPC method: the raw answer validates against OpenNebula's XSD and pyone parses it."""

from __future__ import annotations

import time
import xmlrpc.client

import pyone
import pytest

from tests.onesim.conftest import Sim
from tests.onesim.xsdcheck import validate

VM_TMPL = """NAME = "web-1"
CPU = 0.5
VCPU = 2
MEMORY = 512
NIC = [ NETWORK_ID = 0 ]
DISK = [ IMAGE_ID = 0 ]
GRAPHICS = [ TYPE = "vnc", LISTEN = "0.0.0.0" ]
CONTEXT = [ NETWORK = "YES", IP = "$NIC[IP]", VMID = "$VMID", NAME = "$NAME",
            GW = "$NETWORK[GATEWAY, NETWORK_ID=0]", ESC = "a<b>&c]]>d" ]
SCHED_RANK = "FREE_CPU"
CARINA_ENVID = "42"
LABELS = "x/y"
"""


def raw(sim: Sim, method: str, *params: object) -> list:
    """Call `method` with the session prepended, through a plain XML-RPC client."""
    proxy = xmlrpc.client.ServerProxy(sim.handle.url)
    return getattr(proxy, method)(sim.handle.auth, *params)


def ok(answer: list) -> object:
    assert answer[0] is True and answer[2] == 0 and len(answer) == 3, answer
    return answer[1]


@pytest.fixture
def running(sim: Sim, one: pyone.OneServer) -> int:
    vmid = one.vm.allocate(VM_TMPL, False)
    sim.advance()
    raw(sim, "onesim.vm.setcpu", vmid, 37.5)
    sim.advance(10)
    return vmid


def test_version(sim: Sim, one: pyone.OneServer) -> None:
    assert ok(raw(sim, "one.system.version")) == "7.0.0"
    assert one.system.version() == "7.0.0"


def test_vm_info_full_body(sim: Sim, one: pyone.OneServer, running: int) -> None:
    doc = validate(ok(raw(sim, "one.vm.info", running)), "vm.xsd", "VM")
    names = [child.tag for child in doc]
    assert names[:6] == ["ID", "UID", "GID", "UNAME", "GNAME", "NAME"]
    assert names[-3:] == ["USER_TEMPLATE", "HISTORY_RECORDS", "BACKUPS"]
    vm = one.vm.info(running)
    assert (vm.ID, vm.NAME, vm.STATE, vm.LCM_STATE) == (running, "web-1", 3, 3)
    assert pyone.LCM_STATE(vm.LCM_STATE).name == "RUNNING"
    assert float(vm.MONITORING.CPU) == 37.5 and vm.MONITORING.MEMORY > 0
    nic = vm.TEMPLATE["NIC"]
    assert nic["IP"].startswith("127.0.") and nic["MAC"].startswith("02:00:7f:00:")
    ctx = vm.TEMPLATE["CONTEXT"]
    assert ctx["IP"] == nic["IP"] and ctx["VMID"] == str(running) and ctx["NAME"] == "web-1"
    assert ctx["GW"] == "127.0.0.1" and ctx["ETH0_IP"] == nic["IP"] and ctx["ESC"] == "a<b>&c]]>d"
    assert vm.TEMPLATE["VMID"] == str(running) and vm.TEMPLATE["TM_MAD_SYSTEM"]
    assert vm.USER_TEMPLATE["CARINA_ENVID"] == "42" and vm.USER_TEMPLATE["SCHED_RANK"] == "FREE_CPU"
    assert "CARINA_ENVID" not in vm.TEMPLATE and "SCHED_RANK" not in vm.TEMPLATE
    assert vm.HISTORY_RECORDS.HISTORY[0].HOSTNAME.startswith("host")


def test_vm_info_before_deploy_validates(sim: Sim, one: pyone.OneServer) -> None:
    vmid = one.vm.allocate("CPU=1\nMEMORY=64", True)
    doc = validate(ok(raw(sim, "one.vm.info", vmid)), "vm.xsd", "VM")
    assert doc.findtext("STATE") == "2" and doc.find("HISTORY_RECORDS") is not None
    assert one.vm.info(vmid).NAME == f"one-{vmid}"


def test_vmpool_short_and_extended(sim: Sim, one: pyone.OneServer, running: int) -> None:
    one.vm.allocate("CPU=1\nMEMORY=64\nCARINA_ENVID=7", True)
    short = validate(ok(raw(sim, "one.vmpool.info", -2, -1, -1, -1)), "vm_pool.xsd", "VM_POOL")
    assert [v.findtext("ID") for v in short] == ["0", "1"]
    assert short[0].find("USER_TEMPLATE/CARINA_ENVID") is None  # short bodies keep only scheduler keys
    assert short[0].findtext("USER_TEMPLATE/SCHED_RANK") == "FREE_CPU"
    validate(ok(raw(sim, "one.vmpool.infoextended", -2, -1, -1, -1)), "vm_pool_extended.xsd", "VM_POOL")
    validate(ok(raw(sim, "one.vmpool.infoset", "0,1", True)), "vm_pool_extended.xsd", "VM_POOL")
    validate(ok(raw(sim, "one.vmpool.infoset", "1", False)), "vm_pool.xsd", "VM_POOL")
    pool = one.vmpool.info(-2, -1, -1, -1)
    assert [v.ID for v in pool.VM] == [0, 1] and pool.VM[0].TEMPLATE["NIC"]["IP"].startswith("127.")
    ext = one.vmpool.infoextended(-2, -1, -1, -1)
    assert ext.VM[1].USER_TEMPLATE["CARINA_ENVID"] == "7"


def test_vmpool_filters_range_and_state(sim: Sim, one: pyone.OneServer) -> None:
    ids = [one.vm.allocate("CPU=0.1\nMEMORY=16", False) for _ in range(5)]
    sim.advance()
    one.vm.action("terminate-hard", ids[1])
    held = one.vm.allocate("CPU=0.1\nMEMORY=16", True)
    sim.advance()

    def pool(*args: int) -> list[int]:
        return [vm.ID for vm in one.vmpool.info(*args).VM]

    assert pool(-2, -1, -1, -2) == ids + [held]  # -2: every state, DONE included
    assert pool(-2, -1, -1, -1) == [ids[0]] + ids[2:] + [held]  # -1: all but DONE
    assert pool(-2, -1, -1, 6) == [ids[1]]
    assert pool(-2, -1, -1, 2) == [held]
    assert pool(-2, 2, 3, -2) == [2, 3]
    assert pool(-2, 3, -1, -2) == [3, 4, 5]
    assert pool(-2, 1, -2, -2) == [1, 2]  # end < -1: page of 2 from offset 1
    assert pool(-3, -1, -1, -1) == pool(-2, -1, -1, -1)  # all owned by oneadmin
    assert pool(5, -1, -1, -2) == []  # uid 5 owns nothing
    with pytest.raises(pyone.OneApiException, match="state"):
        one.vmpool.info(-2, -1, -1, 42)
    with pytest.raises(pyone.OneInternalException, match="MySQL"):
        one.vmpool.info(-2, -1, -1, -1, "CARINA_ENVID=1")


def test_monitoring_methods(sim: Sim, one: pyone.OneServer, running: int) -> None:
    validate(ok(raw(sim, "one.vm.monitoring", running)), "monitoring_data.xsd", "MONITORING_DATA")
    records = one.vm.monitoring(running).MONITORING
    assert len(records) >= 2 and all(r.ID == running for r in records)
    assert float(records[-1].CPU) == 37.5 and isinstance(records[-1].MEMORY, int)
    last = validate(ok(raw(sim, "one.vmpool.monitoring", -2, 0)), "monitoring_data.xsd", "MONITORING_DATA")
    assert len(last) == 1
    assert len(one.vmpool.monitoring(-2, -1).MONITORING) == len(records)
    assert len(one.vmpool.monitoring(-2, 5).MONITORING) == 1  # only the record of the last 5 s


def test_hosts(sim: Sim, one: pyone.OneServer, running: int) -> None:
    validate(ok(raw(sim, "one.host.info", 0)), "host.xsd", "HOST")
    validate(ok(raw(sim, "one.hostpool.info")), "host_pool.xsd", "HOST_POOL")
    pool = one.hostpool.info()
    assert [h.NAME for h in pool.HOST] == ["host0", "host1", "host2", "host3"]
    placed = [h for h in pool.HOST if h.HOST_SHARE.RUNNING_VMS == 1][0]
    assert placed.VMS.ID == [running]
    assert placed.HOST_SHARE.CPU_USAGE == 50 and placed.HOST_SHARE.MEM_USAGE == 512 * 1024
    assert placed.MONITORING.CAPACITY.USED_CPU in (37, 38)  # 37.5 % rounded
    assert one.host.info(0).TEMPLATE["PRIORITY"] == "10"
    with pytest.raises(pyone.OneNoExistsException):
        one.host.info(99)


def test_user_info(sim: Sim, one: pyone.OneServer) -> None:
    validate(ok(raw(sim, "one.user.info", -1)), "user.xsd", "USER")
    validate(ok(raw(sim, "one.user.info", 0)), "user.xsd", "USER")
    user = one.user.info(-1)
    assert (user.ID, user.NAME, user.GID) == (0, "oneadmin", 0)
    assert "onesim" not in ok(raw(sim, "one.user.info", 0))  # password only as a hash
    with pytest.raises(pyone.OneNoExistsException):
        one.user.info(7)


def test_templates(sim: Sim, one: pyone.OneServer) -> None:
    tid = one.template.allocate('NAME = "base"\nCPU = 1\nMEMORY = 128\nNIC = [ NETWORK = "loopback" ]\n'
                                'CONTEXT = [ A = "1", B = "2" ]\nROLE = "db"')
    validate(ok(raw(sim, "one.template.info", tid)), "vmtemplate.xsd", "VMTEMPLATE")
    validate(ok(raw(sim, "one.templatepool.info", -2, -1, -1)), "vmtemplate_pool.xsd", "VMTEMPLATE_POOL")
    t = one.template.info(tid)
    assert t.NAME == "base" and t.TEMPLATE["CONTEXT"] == {"A": "1", "B": "2"} and "NAME" not in t.TEMPLATE
    assert [x.ID for x in one.templatepool.info(-2, -1, -1).VMTEMPLATE] == [tid]
    # extra template replaces same-named attributes (no deep merge): CONTEXT becomes just C
    vmid = one.template.instantiate(tid, "", False, {"TEMPLATE": {"CONTEXT": {"C": "3"}, "MEMORY": 256}}, False)
    vm = one.vm.info(vmid)
    assert vm.NAME == f"base-{vmid}" and vm.TEMPLATE["TEMPLATE_ID"] == str(tid) and vm.TEMPLATE["MEMORY"] == "256"
    assert vm.TEMPLATE["CONTEXT"]["C"] == "3" and "A" not in vm.TEMPLATE["CONTEXT"]
    assert vm.USER_TEMPLATE["ROLE"] == "db" and vm.STATE == 1
    named = one.template.instantiate(tid, "given", True)
    assert one.vm.info(named).NAME == "given" and one.vm.info(named).STATE == 2
    assert one.template.update(tid, 'CPU = 2', 1) == tid
    assert one.template.info(tid).TEMPLATE["CPU"] == "2" and one.template.info(tid).TEMPLATE["MEMORY"] == "128"
    with pytest.raises(pyone.OneException, match="already taken"):
        one.template.allocate('NAME = "base"\nCPU=1\nMEMORY=1')
    with pytest.raises(pyone.OneNoExistsException, match="virtual machine template"):
        one.template.instantiate(99, "")
    with pytest.raises(pyone.OneException, match=r"^\[one.template.instantiate\] Error allocating"):
        one.template.instantiate(tid, "", False, "MEMORY = -1")


def test_vm_update_replace_and_merge(sim: Sim, one: pyone.OneServer) -> None:
    vmid = one.vm.allocate("CPU=1\nMEMORY=64\nA=1\nB=2", False)
    assert one.vm.update(vmid, {"READY": "YES", "X": 1}, 1) == vmid
    assert dict(one.vm.info(vmid).USER_TEMPLATE) == {"A": "1", "B": "2", "READY": "YES", "X": "1"}
    one.vm.update(vmid, "ONLY = 1")
    assert dict(one.vm.info(vmid).USER_TEMPLATE) == {"ONLY": "1"}
    with pytest.raises(pyone.OneApiException):
        one.vm.update(vmid, "A=1", 7)
    with pytest.raises(pyone.OneInternalException, match="Parse error"):
        one.vm.update(vmid, "A = [")


def test_answer_arrays_on_the_wire(sim: Sim) -> None:
    proxy = xmlrpc.client.ServerProxy(sim.handle.url)
    answer = proxy.one.vm.info(sim.handle.auth, 12345)
    assert answer == [False, "[one.vm.info] Error getting virtual machine [12345].", 0x400, 12345, 0]
    body = xmlrpc.client.dumps((sim.handle.auth, 12345), "one.vm.info").encode()
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(sim.handle.url, body, {"Content-Type": "text/xml"})) as r:
        text = r.read().decode()
    assert "<i8>0</i8>" in text and "<int>1024</int>" in text and "<boolean>0</boolean>" in text


def test_allocations_lists_when_each_allocate_arrived(sim: Sim, one: pyone.OneServer) -> None:
    before = time.time()
    first = one.vm.allocate(VM_TMPL, False)
    assert raw(sim, "one.vm.allocate", "NAME = ", False)[0] is False         # a refused allocate is not listed
    second = one.vm.allocate(VM_TMPL, True)
    after = time.time()
    seen = ok(raw(sim, "onesim.sim.allocations", before))
    assert [vmid for _, vmid in seen] == [first, second]                      # type: ignore[union-attr]
    assert all(before <= at <= after for at, _ in seen)                       # type: ignore[union-attr]
    assert seen[0][0] <= seen[1][0]                                           # type: ignore[index]
    assert ok(raw(sim, "onesim.sim.allocations", after + 1)) == []
def test_setcpubatch_sets_each_vms_cpu_in_one_call(sim: Sim, one: pyone.OneServer, running: int) -> None:
    assert ok(raw(sim, "onesim.vm.setcpubatch", [running, 987654], [12.5, 50])) == 1     # unknown ids skipped
    last = validate(ok(raw(sim, "one.vmpool.monitoring", -2, 0)), "monitoring_data.xsd", "MONITORING_DATA")
    assert [(m.findtext("ID"), m.findtext("CPU")) for m in last] == [(str(running), "12.5")]
    assert raw(sim, "onesim.vm.setcpubatch", [running], [1, 2])[0] is False               # lengths differ
