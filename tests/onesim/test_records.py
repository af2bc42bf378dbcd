"""onesim.records: a VM's JSON record round-trips exactly (hypothesis), whatever its templates and history."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from onesim import xmlout as X
from onesim.model import History, Vm
from onesim.records import MONITORING_SAVED, vm_from_record, vm_record

names = st.from_regex(r"[A-Z][A-Z0-9_]{0,8}", fullmatch=True)
texts = st.text(max_size=20)
values = st.one_of(texts, st.dictionaries(names, texts, max_size=3))
templates = st.lists(st.tuples(names, values), max_size=6)
ints = st.integers(min_value=0, max_value=2**31)


@st.composite
def vms(draw: st.DrawFn) -> Vm:
    vm = Vm(id=draw(ints), uid=draw(ints), gid=0, uname=draw(texts), gname="oneadmin", name=draw(texts),
            template=draw(templates), user_template=draw(templates),
            cpu=draw(st.floats(min_value=0.01, max_value=64)), memory_mb=draw(ints), vcpu=draw(ints),
            context=draw(st.dictionaries(names, texts, max_size=4)), stime=draw(ints))
    vm.state, vm.lcm, vm.host_id = draw(st.integers(0, 11)), draw(st.integers(0, 61)), draw(st.none() | ints)
    vm.history = [History(seq=i, host_id=h, hostname=f"host{h}", stime=s, etime=0)
                  for i, (h, s) in enumerate(draw(st.lists(st.tuples(ints, ints), max_size=3)))]
    vm.plan = draw(st.lists(st.tuples(st.sampled_from(["prolog", "boot"]), st.integers(0, 11), st.integers(0, 61)),
                            max_size=2))
    vm.leases = draw(st.lists(st.tuples(st.integers(0, 3), st.ip_addresses(v=4).map(str)), max_size=2))
    for seq in range(draw(st.integers(0, MONITORING_SAVED + 5))):
        vm.monitoring.append({"ID": vm.id, "TIMESTAMP": seq, "CPU": 1.5, "MEMORY": 1024})
    return vm


@settings(max_examples=60, deadline=None)
@given(vms())
def test_a_vm_record_round_trips_through_json(vm: Vm) -> None:
    record = json.loads(json.dumps(vm_record(vm)))
    copy = vm_from_record(record)
    assert vm_record(copy) == record
    assert X.vm_xml(copy) == X.vm_xml(vm)
    assert list(copy.monitoring) == list(vm.monitoring)[-MONITORING_SAVED:]
