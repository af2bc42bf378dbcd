"""What keeps big pools fast: pool filters (owner, id range or page, state), the answer transport, batch
allocation, the tick's work sets and the bounded monitoring history."""

from __future__ import annotations

import http.client
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onesim import lifecycle
from onesim import states as S
from onesim import xmlout as X
from onesim.poolcache import Chunks, encode, window
from onesim.server import SEND_BYTES, dump_response, start_simulator
from tests.onesim.conftest import Sim

INVENTORY = """
hosts:
  - {name: h0, cores: 64, memory_mb: 65536}
networks:
  - {id: 0, name: lo, ip_start: 127.0.1.1, size: 1000}
images:
  - {id: 0, name: img, size_mb: 10}
users:
  - {id: 1, name: alice, password: pw}
"""
SMALL = "CPU = 0.1\nMEMORY = 16\n"


@given(ids=st.lists(st.integers(0, 40), unique=True).map(sorted), kept=st.sets(st.integers(0, 40)),
       start=st.integers(-3, 45), end=st.integers(-8, 45))
def test_window_is_oned_range_and_page(ids: list[int], kept: set[int], start: int, end: int) -> None:
    wanted = [i for i in ids if i in kept]
    if end < -1:
        offset = max(start, 0)
        expected = wanted[offset:offset - end]
    else:
        expected = [i for i in wanted if (start < 0 or i >= start) and (end < 0 or i <= end)]
    assert window(ids, start, end, kept.__contains__) == expected


@pytest.fixture
def two_users(make_sim: Callable[..., Sim], tmp_path: Path) -> Sim:
    path = tmp_path / "inventory.yaml"
    path.write_text(INVENTORY)
    return make_sim(inventory=path)


def test_pool_filters_match_the_definition(two_users: Sim) -> None:
    sim = two_users
    proxy = xmlrpc.client.ServerProxy(sim.handle.url)
    admin, alice = sim.handle.auth, "alice:pw"
    for session in (admin, alice, admin, alice, admin, alice):
        proxy.one.vm.allocate(session, SMALL, False)
    sim.advance()
    proxy.one.vm.action(admin, "terminate-hard", 2)
    proxy.one.vm.allocate(alice, SMALL, True)
    sim.advance()
    with sim.model.lock:
        vms = {i: (vm.uid, vm.state) for i, vm in sim.model.vms.items()}
    owners = {-4: lambda uid: True, -3: lambda uid: uid == 1, -2: lambda uid: True, -1: lambda uid: True,
              0: lambda uid: uid == 0, 1: lambda uid: uid == 1, 5: lambda uid: False}
    found = 0
    for flag, owned in owners.items():
        for start, end in ((-1, -1), (2, 4), (3, -1), (-1, 2), (1, -2), (0, -3), (4, 2), (9, -1)):
            for state in (-2, -1, 1, 2, 3, 6):
                keep = [i for i, (uid, vstate) in sorted(vms.items()) if owned(uid)
                        and (state == -2 or (state == -1 and vstate != S.DONE) or vstate == state)]
                expected = window(keep, start, end, lambda i: True)
                method = proxy.one.vmpool.info if (start + end + state) % 2 else proxy.one.vmpool.infoextended
                body = method(alice, flag, start, end, state)[1]
                got = [int(part.split("</ID>")[0]) for part in body.split("<VM><ID>")[1:]]
                assert got == expected, (flag, start, end, state)
                found += len(got)
    assert found > 300 and vms[2][1] == S.DONE and vms[6][1] == S.HOLD
    assert proxy.one.vmpool.info(alice, -5, -1, -1, -1)[2] == S.RPC_API


def test_big_answers_are_plain_pieces_with_the_right_length(sim: Sim) -> None:
    proxy = xmlrpc.client.ServerProxy(sim.handle.url)
    auth = sim.handle.auth
    tmpl = SMALL + 'CONTEXT = [ BLOB = "' + "x<&>" * 500 + '" ]\nNAME = "é-{}"\n'
    ids = proxy.onesim.vm.allocatebatch(auth, [tmpl] * 300, True)[1]
    assert ids == list(range(300))
    body = xmlrpc.client.dumps((auth, -2, -1, -1, -1), "one.vmpool.infoextended").encode()
    conn = http.client.HTTPConnection("127.0.0.1", sim.handle.port, timeout=30)
    conn.request("POST", "/RPC2", body, {"Content-Type": "text/xml", "Accept-Encoding": "gzip"})
    answer = conn.getresponse()
    raw = answer.read()
    conn.close()
    assert answer.getheader("Content-Encoding") is None and int(answer.getheader("Content-Length")) == len(raw)
    assert len(raw) > 2 * SEND_BYTES  # written in several batches
    (result,), _ = xmlrpc.client.loads(raw)
    with sim.model.lock:
        fresh = "<VM_POOL>" + "".join(X.vm_xml(sim.model.vms[i]) for i in ids) + "</VM_POOL>"
    assert result == [True, fresh, 0]


def test_dump_response_writes_chunks_as_marshalled_strings() -> None:
    text = "<VM_POOL><NAME>é & ]]> \"q\"</NAME></VM_POOL>"
    as_chunks = b"".join(dump_response([True, Chunks([encode(text[:9]), encode(text[9:])]), 0]))
    assert as_chunks == b"".join(dump_response([True, text, 0]))
    assert xmlrpc.client.loads(as_chunks)[0] == ([True, text, 0],)
    assert Chunks([encode(text)]).text() == text


def test_allocatebatch_answers_like_allocate(sim: Sim) -> None:
    proxy = xmlrpc.client.ServerProxy(sim.handle.url)
    auth = sim.handle.auth
    assert proxy.onesim.vm.allocatebatch(auth, [SMALL, SMALL + "NAME = b"], False) == [True, [0, 1], 0]
    bad = proxy.onesim.vm.allocatebatch(auth, [SMALL, "CPU = 1\nMEMORY = -5"], False)
    assert bad[:3] == [False, "[onesim.vm.allocatebatch] template 1: MEMORY attribute must be a positive "
                              "integer value.", S.INTERNAL]
    assert proxy.onesim.vm.allocatebatch(auth, [SMALL, 5], False)[2] == S.RPC_API
    assert proxy.onesim.vm.allocatebatch(auth, ["A = ["], False)[1].startswith(
        "[onesim.vm.allocatebatch] template 0: Parse error")
    assert proxy.onesim.vm.allocatebatch(auth, ["x"] * 10001, False)[2] == S.RPC_API
    with sim.model.lock:
        assert sorted(sim.model.vms) == [0, 1, 2, 3]  # the good template before a bad one stays (documented)
        assert sim.model.vms[1].name == "b" and sim.model.pending == {0, 1, 2, 3}


def test_tick_rebuilds_its_work_sets_when_vms_changed_behind_its_back(sim: Sim) -> None:
    proxy = xmlrpc.client.ServerProxy(sim.handle.url)
    auth = sim.handle.auth
    running = proxy.one.vm.allocate(auth, SMALL, False)[1]
    held = proxy.one.vm.allocate(auth, SMALL, True)[1]
    sim.advance()
    with sim.model.lock:  # as a loader would do: a new table, VMs set directly, work sets empty
        model = sim.model
        model.vms = dict(model.vms)
        model.vms[held].state = S.PENDING
        model.planned, model.pending, model.monitor_due = set(), set(), []
    sim.advance(10)
    with sim.model.lock:
        assert (model.vms[held].state, model.vms[held].lcm) == lifecycle.RUNNING
        assert len(model.vms[running].monitoring) == 2 and model.pending == set()
        assert {vmid for _, vmid in model.monitor_due} == {running, held}


def test_monitoring_samples_per_tick_are_capped(sim: Sim, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = xmlrpc.client.ServerProxy(sim.handle.url)
    ids = proxy.onesim.vm.allocatebatch(sim.handle.auth, [SMALL] * 5, False)[1]
    sim.advance()
    monkeypatch.setattr(lifecycle, "MAX_SAMPLES", 2)
    counts = []
    for seconds in (10, 0, 0, 0):
        sim.advance(seconds)
        with sim.model.lock:
            counts.append([len(sim.model.vms[i].monitoring) for i in ids])
    assert counts == [[2, 2, 1, 1, 1], [2, 2, 2, 2, 1], [2, 2, 2, 2, 2], [2, 2, 2, 2, 2]]


def test_monitoring_history_is_bounded(make_sim: Callable[..., Sim]) -> None:
    sim = make_sim(monitoring_keep=3)
    proxy = xmlrpc.client.ServerProxy(sim.handle.url)
    vmid = proxy.one.vm.allocate(sim.handle.auth, SMALL, False)[1]
    sim.advance()
    for pct in range(6):
        proxy.onesim.vm.setcpu(sim.handle.auth, vmid, pct)
    assert sim.client().vm.monitoring(vmid).MONITORING[-1].CPU == 5
    assert len(sim.client().vm.monitoring(vmid).MONITORING) == 3
    with pytest.raises(ValueError, match="monitoring_keep"):
        start_simulator(monitoring_keep=0)
