"""The CLI table format of the original `oneenv`, and Accept-header negotiation for it (pure).

A table is a header row, a row of dashes as long as each header, then the data rows. Every column
is right-aligned to its widest cell except the last, which is left-aligned; cells are separated by
single spaces and `None` shows as `-`.
"""

from __future__ import annotations

from collections.abc import Sequence


def _cell(value: object) -> str:
    """One cell as text: None is `-`, line breaks become spaces so a row stays one line."""
    if value is None:
        return "-"
    return str(value).replace("\r", " ").replace("\n", " ")


def _line(cells: list[str], widths: list[int]) -> str:
    """Right-align all cells but the last, which is left as is (no trailing padding)."""
    head = [cell.rjust(width) for cell, width in zip(cells[:-1], widths[:-1], strict=True)]
    return " ".join([*head, cells[-1]])


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """The table text (ending in a newline). Raises ValueError if a row's length differs from the headers'."""
    if not headers:
        raise ValueError("headers: at least one column is needed")
    texts = [[_cell(h) for h in headers]]
    for number, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(f"rows[{number}]: {len(row)} cells for {len(headers)} columns")
        texts.append([_cell(value) for value in row])
    widths = [max(len(row[i]) for row in texts) for i in range(len(headers))]
    dashes = ["-" * len(cell) for cell in texts[0]]
    lines = [_line(texts[0], widths), _line(dashes, widths)]
    lines.extend(_line(row, widths) for row in texts[1:])
    return "\n".join(lines) + "\n"


def _quality(params: list[str]) -> float:
    """The q= value of one Accept entry (1.0 when absent, 0.0 when unreadable)."""
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                return max(0.0, min(1.0, float(value)))
            except ValueError:
                return 0.0
    return 1.0


def wants_text(accept: str | None) -> bool:
    """True when the Accept header names `text/plain` and ranks it above `application/json`.

    `*/*` alone (curl's default) means JSON, the API's default representation.
    """
    best: dict[str, float] = {}
    for entry in (accept or "").split(","):
        media, *params = entry.split(";")
        media = media.strip().lower()
        if media in ("text/plain", "application/json"):
            best[media] = max(best.get(media, 0.0), _quality(params))
    text = best.get("text/plain", 0.0)
    return text > 0.0 and text > best.get("application/json", 0.0)
