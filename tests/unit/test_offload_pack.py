"""The numbers a helper process sends back (functions.cloud.offload.pack / unpack) are the rows it read."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from functions.cloud.fastxml import VmRow
from functions.cloud.offload import pack, unpack

_INT = st.integers(min_value=0, max_value=2**62)
_CPU = st.none() | st.floats(allow_nan=False, allow_infinity=False)


@given(st.dictionaries(_INT, st.tuples(_INT, _INT, _INT, _CPU), max_size=50))
def test_unpack_of_pack_gives_the_rows_back(found: dict[int, tuple[int, int, int, float | None]]) -> None:
    rows = [VmRow(vmid, state, lcm, stime, {}, "", cpu) for vmid, (state, lcm, stime, cpu) in found.items()]
    assert unpack(pack(rows)) == {row.vmid: row for row in rows}
