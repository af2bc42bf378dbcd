"""functions.cloud.fastxml: OpenNebula pool answers read by lxml (envelope, short and full VM bodies with
their MONITORING/CPU), the wire reader of short bodies and the envelope shortcut agreeing with the full parse."""

from __future__ import annotations

import xmlrpc.client

import pytest
from hypothesis import given
from hypothesis import strategies as st

from functions.cloud import fastxml

FAKE = "<VM><ID>5</ID><STATE>3</STATE><LCM_STATE>3</LCM_STATE><STIME>1</STIME></VM>"


def _short(vmid: int, state: int, lcm: int, name: str = "web-m", label: str = "x", mon: str = "<MONITORING/>",
           graphics: str = "") -> str:
    return (f"<VM><ID>{vmid}</ID><UID>0</UID><GID>0</GID><UNAME>oneadmin</UNAME><GNAME>oneadmin</GNAME>"
            f"<NAME>{xmlrpc.client.escape(name)}</NAME><LAST_POLL>0</LAST_POLL><STATE>{state}</STATE>"
            f"<LCM_STATE>{lcm}</LCM_STATE><RESCHED>0</RESCHED><STIME>{1000 + vmid}</STIME><ETIME>0</ETIME>"
            f"<DEPLOY_ID></DEPLOY_ID><TEMPLATE><CPU><![CDATA[0.1]]></CPU>{graphics}</TEMPLATE>{mon}"
            f"<USER_TEMPLATE><LABELS><![CDATA[{label}]]></LABELS></USER_TEMPLATE><HISTORY_RECORDS/></VM>")


def _mon(cpu: str) -> str:
    """A short body's MONITORING as oned writes it (the last record's CPU, MEMORY and STATE, escaped)."""
    return (f"<MONITORING><CPU>{xmlrpc.client.escape(cpu)}</CPU><MEMORY>32768</MEMORY><STATE>RUNNING</STATE>"
            "</MONITORING>")


def _answer(value: str, ok: bool = True, code: int = 0) -> bytes:
    return xmlrpc.client.dumps(([ok, value, code],), methodresponse=True).encode("utf-8")


def _rows(text: str, wanted: list[int] | None = None, tags: bool = False) -> list[fastxml.VmRow]:
    return fastxml.vm_rows(fastxml.document(text), wanted, tags)


def test_short_bodies_give_id_state_lcm_and_stime_of_the_wanted_ids() -> None:
    pool = "<VM_POOL>" + _short(1, 3, 3) + _short(2, 3, 16) + _short(7, 6, 0) + "</VM_POOL>"
    assert [(r.vmid, r.state, r.lcm_state, r.stime) for r in _rows(pool, [1, 2, 7])] == \
        [(1, 3, 3, 1001), (2, 3, 16, 1002), (7, 6, 0, 1007)]
    assert [r.vmid for r in _rows(pool, [2])] == [2]
    assert _rows("<VM_POOL/>", [1]) == []


def test_xml_inside_a_template_value_is_never_taken_for_a_vm() -> None:
    pool = "<VM_POOL>" + _short(1, 3, 3, label=FAKE) + "</VM_POOL>"
    assert [(r.vmid, r.lcm_state) for r in _rows(pool)] == [(1, 3)]
    assert [(r.vmid, r.user_template["LABELS"]) for r in _rows(pool, tags=True)] == [(1, FAKE)]


def test_full_bodies_carry_the_user_template() -> None:
    pool = ("<VM_POOL><VM><ID>3</ID><STATE>3</STATE><LCM_STATE>3</LCM_STATE><STIME>9</STIME><TEMPLATE/>"
            "<USER_TEMPLATE><CARINA_ENVID><![CDATA[12]]></CARINA_ENVID><CARINA_SLOT>m</CARINA_SLOT>"
            "<SCHED_ACTION><ID>0</ID></SCHED_ACTION></USER_TEMPLATE></VM></VM_POOL>")
    (row,) = _rows(pool, [3], tags=True)
    assert row.user_template == {"CARINA_ENVID": "12", "CARINA_SLOT": "m"} and row.stime == 9


def test_bad_answers_raise_parse_error() -> None:
    with pytest.raises(fastxml.ParseError):
        _rows("<VM_POOL><VM><ID>x</ID><STATE>3</STATE><LCM_STATE>3</LCM_STATE><STIME>1</STIME></VM></VM_POOL>")
    with pytest.raises(fastxml.ParseError):
        _rows("<HOST_POOL/>")
    with pytest.raises(fastxml.ParseError):
        fastxml.document("<VM_POOL><VM>")
    with pytest.raises(fastxml.ParseError):
        fastxml.envelope(b"not xml")


def test_short_bodies_carry_the_cpu_of_the_last_monitoring_record() -> None:
    pool = ("<VM_POOL>" + _short(1, 3, 3, mon=_mon("12.5")) + _short(2, 1, 0) + _short(3, 3, 3, mon=_mon(""))
            + _short(4, 3, 3, mon=_mon("nan")) + _short(5, 3, 3, mon=_mon("lots")) + _short(6, 3, 3, mon=_mon(" 7 "))
            + "</VM_POOL>")
    expected = [(1, 12.5), (2, None), (3, None), (4, None), (5, None), (6, 7.0)]
    assert [(r.vmid, r.cpu) for r in _rows(pool)] == expected
    assert [(r.vmid, r.cpu) for r in _rows(pool, tags=True)] == expected            # VM by VM: the same
    assert [(r.vmid, r.cpu) for r in fastxml.short_rows(_answer(pool)) or []] == expected
    assert [(r.vmid, r.cpu) for r in fastxml.short_rows(_answer(pool), [6, 2]) or []] == [(2, None), (6, 7.0)]


def test_a_cpu_inside_a_template_or_a_cdata_is_never_taken() -> None:
    forged = "</LABELS></USER_TEMPLATE></TEMPLATE>" + _mon("99") + "<USER_TEMPLATE><LABELS>"
    in_cdata = "<VM_POOL>" + _short(1, 3, 3, label=forged) + _short(2, 3, 3, label=forged, mon=_mon("5")) + "</VM_POOL>"
    assert [(r.vmid, r.cpu) for r in fastxml.short_rows(_answer(in_cdata)) or []] == [(1, None), (2, 5.0)]
    assert fastxml.short_rows(_answer(in_cdata)) == _rows(in_cdata)
    nested = "<GRAPHICS><TEMPLATE>x</TEMPLATE>" + _mon("99") + "</GRAPHICS>"   # an element, not the VM's own
    pool = "<VM_POOL>" + _short(1, 3, 3, graphics=nested) + "</VM_POOL>"
    assert fastxml.short_rows(_answer(pool)) is None                   # two MONITORING in one VM: lxml reads it
    assert [(r.vmid, r.cpu) for r in _rows(pool)] == [(1, None)]
    cdata_cpu = "<VM_POOL>" + _short(1, 3, 3, mon="<MONITORING><CPU><![CDATA[7]]></CPU></MONITORING>") + "</VM_POOL>"
    assert fastxml.short_rows(_answer(cdata_cpu)) is None              # not oned's shape: lxml reads 7
    assert [(r.vmid, r.cpu) for r in _rows(cdata_cpu)] == [(1, 7.0)]


def test_short_rows_read_cdata_holding_markup_and_gt_sent_unescaped() -> None:
    pool = "<VM_POOL>" + _short(1, 3, 3, label="a<b>c", mon=_mon("4.5")) + _short(2, 3, 16, name="x>y") + "</VM_POOL>"
    fast = fastxml.short_rows(_answer(pool))                   # CDATA cut out: the slower path
    assert fast == _rows(pool) and [(r.vmid, r.cpu) for r in fast] == [(1, 4.5), (2, None)]
    assert fastxml.short_rows(_answer(pool).replace(b"&gt;", b">")) == fast
    cdata_cpu = pool.replace(_mon("4.5"), "<MONITORING><CPU><![CDATA[4.5]]></CPU></MONITORING>")
    assert fastxml.short_rows(_answer(cdata_cpu)) is None     # its CDATA cut out: never read as no figure


def test_a_vm_with_two_monitoring_elements_is_read_vm_by_vm() -> None:
    two = "<VM_POOL>" + _short(1, 3, 3, mon=_mon("1") + _mon("2")) + _short(2, 3, 3, mon=_mon("3")) + "</VM_POOL>"
    assert [(r.vmid, r.cpu) for r in _rows(two)] == [(1, 1.0), (2, 3.0)]
    assert fastxml.short_rows(_answer(two)) is None


def test_errors_and_faults_come_out_of_the_envelope() -> None:
    assert fastxml.ok_xml(_answer("[one.vmpool.infoset] denied", ok=False, code=512)) is None
    assert fastxml.envelope(_answer("[one.vmpool.infoset] denied", ok=False, code=512)) == \
        (False, "[one.vmpool.infoset] denied", 512)
    fault = xmlrpc.client.dumps(xmlrpc.client.Fault(1, "no such method"), methodresponse=True).encode()
    ok, message, code = fastxml.envelope(fault)
    assert not ok and "no such method" in message and code == -1


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=12), max_size=4))
def test_the_envelope_shortcut_reads_what_the_full_parse_reads(names: list[str]) -> None:
    pool = "<VM_POOL>" + "".join(_short(i, 3, 3, name=n, label=n.replace("]]>", "")) for i, n in enumerate(names)) \
        + "</VM_POOL>"
    body = _answer(pool)
    fast = fastxml.ok_xml(body)
    ok, text, _ = fastxml.envelope(body)
    assert ok and text == pool
    assert fast is not None and fast.decode("utf-8") == pool
    assert fastxml.vm_rows(fastxml.document(fast), tags=True) == fastxml.vm_rows(fastxml.document(text), tags=True)


def test_a_pool_whose_columns_do_not_line_up_is_read_vm_by_vm() -> None:
    odd = ("<VM_POOL><VM><ID>1</ID><STATE>3</STATE><LCM_STATE>3</LCM_STATE></VM>"
           "<VM><ID>2</ID><STATE>3</STATE><LCM_STATE>16</LCM_STATE><STIME>5</STIME><STIME>6</STIME></VM></VM_POOL>")
    assert [(r.vmid, r.lcm_state, r.stime) for r in _rows(odd)] == [(1, 3, 0), (2, 16, 5)]


names = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)


figures = st.one_of(st.floats().map(repr), st.sampled_from(["", " 7 ", "1e3", "-0", "inf", "1_0", "12,5", "x"]))
mons = st.one_of(st.just("<MONITORING/>"), figures.map(_mon))


@given(st.lists(st.tuples(names, names, st.sampled_from([(3, 3), (3, 16), (6, 0), (1, 0)]), mons), max_size=5))
def test_short_rows_from_the_wire_read_what_lxml_reads(vms: list[tuple[str, str, tuple[int, int], str]]) -> None:
    pool = "<VM_POOL>" + "".join(_short(i, s, lcm, name=n, label=lab.replace("]]>", ""), mon=mon)
                                 for i, (n, lab, (s, lcm), mon) in enumerate(vms)) + "</VM_POOL>"
    fast = fastxml.short_rows(_answer(pool))
    assert fast is not None and fast == _rows(pool)
    assert [r._replace(user_template={}) for r in _rows(pool, tags=True)] == fast        # columns = VM by VM


odd_cpus = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=8)
odd_mons = st.one_of(mons, odd_cpus.map(_mon), st.just(""), st.just(_mon("1") + _mon("2")),
                     odd_cpus.map(lambda c: f"<MONITORING><CPU><![CDATA[{c.replace(']]>', '')}]]></CPU></MONITORING>"))


forged = st.lists(st.sampled_from(["</TEMPLATE>", "<MONITORING>", "<MONITORING/>", "<CPU>9</CPU>", "</MONITORING>",
                                   "<VM>", "</VM>", "<ID>5</ID>", "<STATE>3</STATE>", "]]", ">", "<", "&", "<!--",
                                   "-->", "<?x?>", "<![CDATA[", "&#60;", "&lt;"]), max_size=8).map("".join)


@given(st.lists(st.tuples(odd_mons, names | forged, st.sampled_from(["", "<GRAPHICS><MONITORING/></GRAPHICS>",
                                                             "<GRAPHICS><TEMPLATE/>" + _mon("9") + "</GRAPHICS>"])),
                max_size=4))
def test_short_rows_never_read_other_than_lxml(vms: list[tuple[str, str, str]]) -> None:
    pool = "<VM_POOL>" + "".join(_short(i, 3, 3, label=lab.replace("]]>", ""), mon=mon, graphics=graphics)
                                 for i, (mon, lab, graphics) in enumerate(vms)) + "</VM_POOL>"
    fast = fastxml.short_rows(_answer(pool))
    assert fast is None or fast == _rows(pool)


def test_a_vm_head_inside_a_cdata_value_is_not_a_vm() -> None:
    forged = "<VM><ID>9</ID><UID>0</UID><STATE>3</STATE><LCM_STATE>3</LCM_STATE><STIME>1</STIME></VM>"
    pool = "<VM_POOL>" + _short(1, 3, 16, label=forged) + _short(2, 3, 3, label="</VM>" + forged) + "</VM_POOL>"
    assert [(r.vmid, r.lcm_state) for r in fastxml.short_rows(_answer(pool)) or []] == [(1, 16), (2, 3)]
    assert fastxml.short_rows(_answer(pool), [2]) == [r for r in _rows(pool) if r.vmid == 2]


def test_short_rows_leave_odd_answers_to_lxml() -> None:
    good = "<VM_POOL>" + _short(1, 3, 3) + "</VM_POOL>"
    assert fastxml.short_rows(_answer(good)) == _rows(good)
    assert fastxml.short_rows(_answer("<VM_POOL/>")) == []
    assert fastxml.short_rows(_answer("[one.vmpool.infoset] denied", ok=False, code=512)) is None
    assert fastxml.short_rows(_answer("<VM_POOL>" + _short(1, 3, 3) * 2 + "</VM_POOL>")) is None    # id twice
    no_stime = good.replace("<STIME>1001</STIME>", "")
    assert fastxml.short_rows(_answer(no_stime)) is None
    assert fastxml.short_rows(_answer(good).replace(b"&lt;LCM_STATE&gt;", b"&#60;LCM_STATE&gt;")) is None
    assert fastxml.short_rows(_answer("<HOST_POOL/>")) is None
    assert fastxml.short_rows(_answer(good.replace("<VM_POOL>", "<VM_POOL><!-- <VM> -->"))) is None
