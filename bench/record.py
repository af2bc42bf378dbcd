"""The JSON record of one benchmark run: what bench/run.py writes under bench/results/ and bench/report.py reads.

Shape (SCHEMA 1):
    {"schema": 1, "mode": "quick" | "full", "date": "2026-11-30T09:12:03Z", "machine": "2 cores, ...",
     "commit": "<sha>" | null, "dirty": bool, "load": {"start": [1m, 5m, 15m], "end": [...]}, "seconds": 81.2,
     "parts": [{"name": "sim", "seconds": 12.3, "error": null | "RuntimeError: ..."}],
     "rows": [{"part": "sim", "name": ..., "value": ..., "unit": ..., "target": ..., "note": ..., "size": ...,
               "baseline": ..., "ratio": ..., "verdict": "OK" | "SLOW" | "FAILED" | "-"}],
     "failed": 0}
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import Row

SCHEMA = 1
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


@dataclass
class PartResult:
    """What one part gave: its rows, how long it took, and the error that ended it (None if it finished)."""

    name: str
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


def git_commit(root: Path = ROOT) -> tuple[str | None, bool]:
    """(HEAD's sha, whether the work tree has uncommitted changes); (None, False) outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10,
                             check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, False
    return sha or None, bool(status.strip())


def build(mode: str, parts: list[PartResult], *, date: datetime, machine: str, commit: str | None, dirty: bool,
          load_start: list[float], load_end: list[float], seconds: float) -> dict[str, Any]:
    """The record (pure: every input is given). Every row carries its part's name; `failed` counts FAILED rows."""
    rows = [{"part": p.name, **r.to_dict()} for p in parts for r in p.rows]
    return {"schema": SCHEMA, "mode": mode, "date": date.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": machine, "commit": commit, "dirty": dirty,
            "load": {"start": list(load_start), "end": list(load_end)}, "seconds": round(seconds, 1),
            "parts": [{"name": p.name, "seconds": round(p.seconds, 1), "error": p.error} for p in parts],
            "rows": rows, "failed": sum(r["verdict"] == "FAILED" for r in rows)}


def file_name(record: dict[str, Any]) -> str:
    """The run's own file name: date and mode, e.g. 2026-11-30T091203Z-quick.json."""
    return f"{record['date'].replace(':', '')}-{record['mode']}.json"


def write(record: dict[str, Any], directory: Path = RESULTS) -> tuple[Path, Path]:
    """Write the run's file and replace latest-<mode>.json with the same content (atomically: a reader never sees
    half a file). Returns (run file, latest file). Running it twice rewrites the same two files."""
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=1, sort_keys=False) + "\n"
    own = directory / file_name(record)
    latest = directory / f"latest-{record['mode']}.json"
    for path in (own, latest):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return own, latest


def load(path: Path) -> dict[str, Any]:
    """A record read back; raises ValueError if it is not one (wrong schema, missing keys)."""
    data = json.loads(path.read_text())
    missing = {"schema", "mode", "date", "machine", "commit", "load", "rows"} - set(data)
    if missing or data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a benchmark record of schema {SCHEMA} (missing {sorted(missing)})")
    return data


def rows_of(record: dict[str, Any]) -> list[tuple[str, Row]]:
    """(part, Row) for each row of a record."""
    return [(r.get("part", ""), Row.from_dict(r)) for r in record["rows"]]
