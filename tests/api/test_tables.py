"""render_table and wants_text: the original CLI table format, Accept negotiation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from functions.views.tables import render_table, wants_text


def test_table_layout_matches_the_original():
    text = render_table(["ID", "NAME", "URL"], [[7, "tomcat", None], [12, "db", "http://x/"]])
    assert text == (
        "ID   NAME URL\n"
        "--   ---- ---\n"
        " 7 tomcat -\n"
        "12     db http://x/\n"
    )


def test_single_column_and_empty_rows():
    assert render_table(["NAME"], []) == "NAME\n----\n"
    assert render_table(["A", "B"], [["x\ny", 1]]) == "  A B\n  - -\nx y 1\n"


def test_row_length_mismatch_names_the_row():
    with pytest.raises(ValueError, match=r"rows\[1\]"):
        render_table(["A", "B"], [[1, 2], [3]])
    with pytest.raises(ValueError, match="headers"):
        render_table([], [])


cells = st.one_of(st.none(), st.integers(), st.text(alphabet=st.characters(codec="ascii", exclude_characters="\r\n"),
                                                     max_size=12))


@given(st.integers(min_value=1, max_value=5).flatmap(
    lambda n: st.tuples(st.lists(st.text(alphabet="ABCDEFG_", min_size=1, max_size=8), min_size=n, max_size=n),
                        st.lists(st.lists(cells, min_size=n, max_size=n), max_size=6))))
def test_every_column_but_the_last_is_right_aligned(case):
    headers, rows = case
    text = render_table(headers, rows)
    assert text.endswith("\n")
    lines = text[:-1].split("\n")
    assert len(lines) == len(rows) + 2
    texts = [headers, ["-" * len(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(t[i]) for t in texts) for i in range(len(headers))]
    for line, cells_ in zip(lines, texts, strict=True):
        expected = " ".join([c.rjust(w) for c, w in zip(cells_[:-1], widths[:-1], strict=True)] + [cells_[-1]])
        assert line == expected
        assert line.endswith(cells_[-1])


@pytest.mark.parametrize(("accept", "text"), [
    (None, False), ("*/*", False), ("application/json", False), ("text/plain", True),
    ("text/plain, application/json;q=0.9", True), ("application/json, text/plain", False),
    ("text/plain;q=0.5, application/json;q=0.4", True), ("text/plain;q=0", False), ("text/plain;q=x", False),
])
def test_wants_text(accept, text):
    assert wants_text(accept) is text
