"""The simulator keeps its cloud across restarts (in-process, real XML-RPC through pyone, a fake clock)."""

from __future__ import annotations

import json
from pathlib import Path

import pyone
import pytest

from functions.model.clock import FakeClock
from onesim import lifecycle
from onesim import xmlout as X
from onesim.persist import ID_BLOCK, IDS_FILE, POOL_FILE, STATE_DIR, StateError
from onesim.records import vm_from_record, vm_record
from onesim.server import SimHandle, start_simulator
from tests.onesim.conftest import GuestRecorder

VM = """NAME = "web"
CPU = 1
MEMORY = 128
NIC = [ NETWORK_ID = 0 ]
CONTEXT = [ HOSTNAME = "$NAME", IP = "$NIC[IP]", FILES = "http://127.0.0.1:9/x.sh" ]
"""


class Cloud:
    """One in-process simulator with persistence on `workdir`; `restart()` stops it cleanly and starts another."""

    def __init__(self, workdir: Path, clock: FakeClock) -> None:
        self.workdir, self.clock = workdir, clock
        self.handle: SimHandle | None = None
        self.guests = GuestRecorder()

    def start(self, fresh: bool = False) -> Cloud:
        self.guests = GuestRecorder()
        self.handle = start_simulator(clock=self.clock, tick=False, guest_manager=self.guests, workdir=self.workdir,
                                      persist=True, fresh=fresh)
        return self

    @property
    def one(self) -> pyone.OneServer:
        assert self.handle is not None
        return pyone.OneServer(self.handle.url, session=self.handle.auth)

    def tick(self, seconds: float = 0.0) -> None:
        assert self.handle is not None
        self.clock.advance(seconds)
        with self.handle.model.lock:
            lifecycle.tick(self.handle.model)

    def snapshot(self) -> dict[str, str]:
        """Everything a client can see, as oned's XML."""
        assert self.handle is not None
        m = self.handle.model
        with m.lock:
            out = {f"vm{vid}": X.vm_xml(vm) for vid, vm in m.vms.items()}
            out["hosts"] = X.host_pool_xml(m)
            out["templates"] = X.template_pool_xml(m.templates.values())
            out["pool"] = X.vm_pool_xml(list(m.vms.values()), extended=True)
        return out

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop()
            self.handle = None


@pytest.fixture
def cloud(tmp_path: Path) -> Cloud:
    c = Cloud(tmp_path / "onesim", FakeClock()).start()
    yield c
    c.stop()


def test_a_restart_keeps_vms_templates_hosts_and_the_id_sequences(cloud: Cloud) -> None:
    one = cloud.one
    running, held, gone = one.vm.allocate(VM), one.vm.allocate(VM, True), one.vm.allocate(VM)
    cloud.tick()
    one.vm.action("terminate", gone)
    cloud.tick()
    one.vm.update(running, 'LABELS = "blue"', 1)
    one.vm.action("poweroff", running)
    cloud.tick()
    one.vm.action("resume", running)
    cloud.tick()
    one.host.status(3, 1)
    tid = one.template.allocate('NAME = "small"\nCPU = 1\nMEMORY = 64')
    assert cloud.one.vm.info(running).LCM_STATE == 3 and cloud.one.vm.info(gone).STATE == 6
    cloud.tick(30)  # a monitoring sample
    before = cloud.snapshot()

    cloud.stop()
    cloud.start()

    assert cloud.snapshot() == before
    ip = cloud.one.vm.info(running).TEMPLATE["NIC"]["IP"]
    started = cloud.guests.wait_for(1)
    assert started[0][:3] == ("start", running, ip) and started[0][3]["IP"] == ip
    assert cloud.one.vm.allocate(VM) == gone + 1  # a clean stop skips no id
    assert cloud.one.template.allocate('NAME = "other"\nCPU = 1\nMEMORY = 64') == tid + 1
    assert cloud.one.vm.info(held).STATE == 2
    assert cloud.one.vm.info(gone + 1).TEMPLATE["NIC"]["IP"] not in (ip, "")  # restored leases are taken


def test_an_id_is_reserved_on_disk_before_the_allocate_answers(cloud: Cloud) -> None:
    ids = cloud.workdir / STATE_DIR / IDS_FILE
    for _ in range(ID_BLOCK + 3):
        vmid = cloud.one.vm.allocate("CPU = 1\nMEMORY = 8")
        assert json.loads(ids.read_text())["vm"] > vmid
    tid = cloud.one.template.allocate('NAME = "t"\nCPU = 1\nMEMORY = 8')
    assert json.loads(ids.read_text())["template"] > tid


def test_unsaved_changes_after_a_crash_never_reuse_an_id(cloud: Cloud) -> None:
    assert cloud.one.vm.allocate(VM) == 0
    assert cloud.handle is not None and cloud.handle.persister is not None
    assert cloud.handle.persister.flush(cloud.handle.model)
    assert cloud.one.vm.allocate(VM) == 1  # never saved: the "crash" below loses it
    _crash(cloud)
    cloud.start()
    assert sorted(cloud.handle.model.vms) == [0]  # type: ignore[union-attr]
    assert cloud.one.vm.allocate(VM) > 1


def _crash(cloud: Cloud) -> None:
    """Stop the in-process simulator without its final save (what SIGKILL leaves on disk)."""
    assert cloud.handle is not None and cloud.handle.persister is not None
    persister, cloud.handle.persister = cloud.handle.persister, None
    persister._stop.set()
    cloud.stop()


def test_changes_are_journaled_and_a_torn_last_line_is_ignored(cloud: Cloud) -> None:
    state = cloud.workdir / STATE_DIR
    snapshot = (state / POOL_FILE).read_bytes()
    gen = json.loads(snapshot)["generation"]
    vmid = cloud.one.vm.allocate(VM)
    cloud.tick()
    assert cloud.handle is not None and cloud.handle.persister is not None
    assert cloud.handle.persister.flush(cloud.handle.model)
    assert not cloud.handle.persister.flush(cloud.handle.model)  # nothing changed: nothing written
    journal = state / f"journal-{gen}.jsonl"
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    assert (state / POOL_FILE).read_bytes() == snapshot and entries[0]["vm"]["id"] == vmid
    with open(journal, "a") as fh:
        fh.write('{"vm":{"id":7,"na')  # the simulator died in the middle of an append
    _crash(cloud)
    cloud.start()
    assert cloud.handle is not None and list(cloud.handle.model.vms) == [vmid]
    assert cloud.one.vm.info(vmid).LCM_STATE == 3
    assert json.loads((state / POOL_FILE).read_text())["generation"] == gen + 1 and not journal.exists()


def test_a_journal_larger_than_its_snapshot_is_compacted(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    from onesim import persist

    monkeypatch.setattr(persist, "COMPACT_MIN_BYTES", 0)
    assert cloud.handle is not None and cloud.handle.persister is not None
    state = cloud.workdir / STATE_DIR
    gen = json.loads((state / POOL_FILE).read_text())["generation"]
    for _ in range(3):
        cloud.one.vm.allocate(VM)
        cloud.handle.persister.flush(cloud.handle.model)
    pool = json.loads((state / POOL_FILE).read_text())
    assert pool["generation"] > gen and [v["id"] for v in pool["vms"]][:1] == [0]
    assert sorted(p.name for p in state.glob("journal-*")) == [f"journal-{pool['generation']}.jsonl"]


def test_a_bad_line_inside_the_journal_is_refused(cloud: Cloud) -> None:
    state = cloud.workdir / STATE_DIR
    cloud.stop()
    gen = json.loads((state / POOL_FILE).read_text())["generation"]
    (state / f"journal-{gen}.jsonl").write_text('{"gone": 1}\n{oops\n{"gone": 2}\n')
    with pytest.raises(StateError, match="line 2 is not JSON"):
        cloud.start()


def test_fresh_starts_an_empty_cloud_and_drops_the_sandboxes(cloud: Cloud) -> None:
    cloud.one.vm.allocate(VM)
    sandbox = cloud.workdir / "vm-0"
    sandbox.mkdir(parents=True)
    cloud.stop()
    cloud.start(fresh=True)
    assert cloud.handle is not None and not cloud.handle.model.vms and not sandbox.exists()
    assert cloud.one.vm.allocate(VM) == 0


def test_an_unreadable_state_file_is_refused_and_kept(tmp_path: Path) -> None:
    pool = tmp_path / STATE_DIR / POOL_FILE
    pool.parent.mkdir(parents=True)
    pool.write_text('{"format": 1, "generation": 1, "vms": [{"id": 0}]}')
    with pytest.raises(StateError, match=r"pool\.json: bad record .*--fresh"):
        start_simulator(workdir=tmp_path, persist=True)
    pool.write_text("{not json")
    with pytest.raises(StateError, match="cannot read the saved cloud"):
        start_simulator(workdir=tmp_path, persist=True)
    assert pool.read_text() == "{not json"


def test_a_vm_record_round_trips(cloud: Cloud) -> None:
    vmid = cloud.one.vm.allocate(VM)
    cloud.tick()
    cloud.tick(10)
    assert cloud.handle is not None
    vm = cloud.handle.model.vms[vmid]
    record = json.loads(json.dumps(vm_record(vm)))
    copy = vm_from_record(record)
    assert X.vm_xml(copy) == X.vm_xml(vm) and vm_record(copy) == record
