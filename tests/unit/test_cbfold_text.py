"""The texts a callback is stored as: a report's canonical text (compared with the VM's last report of its kind)
and an inbox entry (parsed back by the drain)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from functions.model.cbfold import Entry, report_text

_text = st.text(max_size=40)


@given(st.sampled_from(["net", "status"]) | _text, st.dictionaries(_text, _text, max_size=5))
def test_report_text_is_json_dumps_sorted(kind: str, fields: dict[str, str]) -> None:
    assert report_text(kind, fields) == json.dumps([kind, fields], sort_keys=True)


def test_report_text_of_the_usual_reports() -> None:
    assert report_text("status", {"status": "APP_SVC_START"}) == '["status", {"status": "APP_SVC_START"}]'
    assert report_text("net", {"newip": "10.0.0.2", "name": "vm-1", "hostkey": "ssh-ed25519 AAAA"}) == (
        '["net", {"hostkey": "ssh-ed25519 AAAA", "name": "vm-1", "newip": "10.0.0.2"}]')
    assert report_text("net", {}) == '["net", {}]'


@given(st.integers(0, 10**10), st.sampled_from(["net", "status"]), st.dictionaries(_text, _text, max_size=4),
       _text, st.floats(0, 4e9))
def test_entry_text_reads_back_as_its_wire_form(vmid: int, kind: str, fields: dict[str, str], slot: str,
                                                at: float) -> None:
    entry = Entry(vmid, kind, fields, slot, at)
    assert json.loads(entry.to_text()) == entry.to_wire()


def test_entry_text_of_text_orjson_refuses() -> None:
    entry = Entry(8, "status", {"status": "\ud800"}, "s0", 1.5)
    assert json.loads(entry.to_text()) == entry.to_wire()
