"""model.observation: what the minute's refresh writes into a VM record from what OpenNebula says of its VM."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from functions.cloud.one import VmView
from functions.model.observation import cpu_figure, judgeable, observation
from functions.store.observed import FIELDS, Seen


def seen(**kw: object) -> Seen:
    base: dict[str, object] = dict(slot="s0", vmid="7", state="running", created="100.0", checked="7@50",
                                   one_state="runn", cpu="12.5", vm_state="3", lcm_state="3", one_ip="10.0.0.7")
    return Seen(**{**base, **kw})  # type: ignore[arg-type]


def view(state: int = 3, lcm: int = 3, ip: str | None = None, cpu: float | None = None) -> VmView:
    return VmView(vmid=7, name="vm", state=state, lcm_state=lcm, ip=ip, host=None, cpu=cpu, stime=50)


def test_an_unchanged_vm_writes_nothing() -> None:
    assert observation(seen(), view()) is None


def test_a_changed_state_is_written_with_the_address_kept_from_a_short_body() -> None:
    assert observation(seen(), view(state=8, lcm=0)) == ("7", "poff", "8", "0", "7@50", "10.0.0.7")


def test_a_full_body_brings_its_address_and_a_new_ownership_mark() -> None:
    assert observation(seen(one_ip=""), view(ip="10.0.0.9"), "7@60") == ("7", "runn", "3", "3", "7@60", "10.0.0.9")


def test_a_missing_or_done_vm_is_missing_and_keeps_its_numbers_and_address() -> None:
    for gone in (None, view(state=6, lcm=0)):
        assert observation(seen(), gone) == ("7", "missing", "3", "3", "7@50", "10.0.0.7")
        assert observation(seen(one_state="missing"), gone) is None


def test_a_failed_lcm_state_reads_fail() -> None:
    assert observation(seen(), view(lcm=14)) == ("7", "fail", "3", "14", "7@50", "10.0.0.7")


def test_the_cpu_figure_is_new_only_when_it_changed() -> None:
    assert cpu_figure(seen(), view(), 12.5) is None                     # the figure read
    assert cpu_figure(seen(), view(), 40) == 40.0
    assert cpu_figure(seen(doc={"cpu": 40.0}), view(), 40) is None      # the decoded record's figure wins
    assert cpu_figure(seen(cpu=""), view(), 3.0) == 3.0                 # no figure yet
    for no_figure in ((None, 5.0), (view(state=6, lcm=0), 5.0), (view(), None)):
        assert cpu_figure(seen(), *no_figure) is None                   # missing, DONE, or none reported


def test_only_records_with_a_vm_allocated_before_the_snapshot_are_judged() -> None:
    assert judgeable(seen(), 100.0)
    assert judgeable(seen(created=""), 0.0)                             # an old record without `created`
    assert not judgeable(seen(created="100.5"), 100.0)                  # allocated after the snapshot was taken
    assert not judgeable(seen(vmid=""), 200.0)
    assert not judgeable(seen(state="allocating"), 200.0)
    assert not judgeable(seen(created="soon"), 200.0)


texts = st.text(alphabet="0123456789.abc@", max_size=6)
ips = st.none() | st.sampled_from(["10.0.0.1", "10.0.0.2"])


@given(texts, texts, texts, texts, ips, st.integers(0, 11), st.integers(0, 72), ips, st.none() | texts)
def test_writing_what_observation_says_makes_it_say_nothing_more(
        one_state: str, vm_state: str, lcm_state: str, checked: str, one_ip: str | None, state: int, lcm: int,
        ip: str | None, mark: str | None) -> None:
    """Idempotence: once the record holds what it was told (the next minute's read), the same view changes nothing;
    and the VM id is never rewritten."""
    before = seen(one_state=one_state, vm_state=vm_state, lcm_state=lcm_state, checked=checked, one_ip=one_ip or "")
    new = observation(before, view(state, lcm, ip), mark)
    if new is None:
        return
    assert new[0] == before.vmid and new != before.written()
    after = before._replace(**dict(zip(FIELDS, new, strict=True)))
    assert observation(after, view(state, lcm, ip), mark) is None
