"""model.ownership: a VM is a record's only when every tag it carries names that record's incarnation."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from functions.model.ownership import TAGS, mismatch, vm_tags

MINE = vm_tags("acme", "inst1", "1", "m", "nonce1", "master")


def test_the_same_incarnation_matches() -> None:
    assert mismatch(dict(MINE), MINE) is None


def test_another_environment_slot_service_installation_or_incarnation_is_not_mine() -> None:
    for key, other in (("CARINA_ENVID", "2"), ("CARINA_SLOT", "s0"), ("CARINA_SERVICE", "other"),
                       ("CARINA_INSTALL", "inst2"), ("CARINA_NONCE", "nonce2")):
        why = mismatch({**MINE, key: other}, MINE)
        assert why is not None and key in why


def test_an_untagged_vm_is_not_mine() -> None:
    assert mismatch({}, MINE) is not None


def test_a_vm_made_before_install_and_nonce_tags_is_judged_by_the_tags_it_has() -> None:
    legacy = {k: v for k, v in MINE.items() if k not in ("CARINA_INSTALL", "CARINA_NONCE")}
    assert mismatch(legacy, MINE) is None
    assert mismatch({**legacy, "CARINA_ENVID": "2"}, MINE) is not None


def test_without_a_known_installation_the_install_tag_is_not_required() -> None:
    assert "CARINA_INSTALL" not in vm_tags("acme", None, "1", "m", "n", "master")
    assert mismatch({**MINE, "CARINA_INSTALL": "whatever"}, vm_tags("acme", None, "1", "m", "nonce1", "master")) is None


@given(st.sampled_from(TAGS), st.text(min_size=1, max_size=8))
def test_any_differing_tag_value_is_a_mismatch(key: str, value: str) -> None:
    if value != MINE[key]:
        assert mismatch({**MINE, key: value}, MINE) is not None
