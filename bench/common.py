"""Shared helpers of the benchmarks: result rows and their targets, percentiles, process memory, the table."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from dataclasses import fields as dc_fields
from pathlib import Path
from typing import Any

from functions.views.tables import render_table

OPS: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}
_CLAUSE = re.compile(r"^(ratio\s+)?(<=|>=|<|>)\s*(-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)$")


def parse_target(target: str) -> list[tuple[bool, str, float]]:
    """The clauses of a target as (on_ratio, op, limit). A target is clauses joined by "," or " and ", each
    "OP NUMBER" (bounds the value) or "ratio OP NUMBER" (bounds value / baseline); OP is <, <=, >, >= (≤ and ≥
    are read as <= and >=). "" has no clause. Raises ValueError on anything else."""
    text = target.replace("≤", "<=").replace("≥", ">=").strip()
    if not text:
        return []
    out = []
    for clause in re.split(r",|\band\b", text):
        match = _CLAUSE.match(clause.strip())
        if match is None:
            raise ValueError(f"target {target!r}: cannot read {clause.strip()!r} (want e.g. '<= 1.5, ratio <= 5')")
        out.append((match.group(1) is not None, match.group(2), float(match.group(3))))
    return out


@dataclass
class Row:
    """One measured figure. `target` is a bound ("< 30", "<= 1.5", "> 50", ">= 150"), several joined by ","
    ("<= 1.5, ratio <= 5"; see parse_target); empty when no target is set.
    `size` says at what scale it was measured ("1+100 VMs", "10k envs"); `baseline` is the same metric of an
    in-run reference (a bare allocate, a bare Falcon route) in the same unit, so `ratio()` = value / baseline."""

    name: str
    value: float | None
    unit: str
    target: str = ""
    note: str = ""
    size: str = ""
    baseline: float | None = None

    def ratio(self) -> float | None:
        """value / baseline, or None when either is missing or the baseline is zero."""
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    def verdict(self) -> str:
        """OK / SLOW against the target, "-" without one, FAILED when nothing was measured (no value, or a
        ratio clause without a baseline). Raises ValueError when the target cannot be read."""
        clauses = parse_target(self.target)
        if self.value is None:
            return "FAILED"
        if not clauses:
            return "-"
        ratio = self.ratio()
        if any(on_ratio and ratio is None for on_ratio, _, _ in clauses):
            return "FAILED"
        ok = all(OPS[op](ratio if on_ratio else self.value, limit)  # type: ignore[arg-type]
                 for on_ratio, op, limit in clauses)
        return "OK" if ok else "SLOW"

    def to_dict(self) -> dict[str, Any]:
        """The row's fields plus its ratio and verdict (JSON-ready)."""
        return {**asdict(self), "ratio": self.ratio(), "verdict": self.verdict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        """A Row from to_dict()'s output (extra keys such as ratio, verdict, part are ignored)."""
        return cls(**{f.name: data[f.name] for f in dc_fields(cls) if f.name in data})


def percentile(samples: list[float], pct: float) -> float:
    """The pct-th percentile (nearest rank) of samples; raises ValueError when there are none."""
    if not samples:
        raise ValueError("samples: empty")
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def timed_ms(fn: Callable[[], object], runs: int, warmup: int = 5) -> list[float]:
    """Call fn warmup + runs times; the durations of the timed runs in milliseconds."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def latency_rows(name: str, samples: list[float], p50_target: str = "", p95_target: str = "", size: str = "",
                 p99_target: str | None = None) -> list[Row]:
    """p50 and p95 rows (ms) of a latency sample, and a p99 row when p99_target is given ("" for no bound)."""
    n = f"n={len(samples)}, mean {statistics.fmean(samples):.2f}"
    out = [Row(f"{name} p50", percentile(samples, 50), "ms", p50_target, n, size),
           Row(f"{name} p95", percentile(samples, 95), "ms", p95_target, "", size)]
    if p99_target is not None:
        out.append(Row(f"{name} p99", percentile(samples, 99), "ms", p99_target, "", size))
    return out


def rss_mb(pid: int) -> float | None:
    """Resident set size of a process in MiB (from /proc), or None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a process a benchmark started, SIGKILL if it lingers. Safe to run twice."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process and its threads used so far, from /proc; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Direct child pids of a process (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


def wait_until(cond: Callable[[], object], timeout: float, every: float = 0.01) -> float | None:
    """Seconds until cond() is truthy (polling every `every` s), or None after `timeout` s."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if cond():
            return time.perf_counter() - start
        time.sleep(every)
    return None


def fmt(value: float | None) -> str:
    """A figure with about three significant digits ("-" for None)."""
    if value is None:
        return "-"
    size = abs(value)
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 0.1 or size == 0:
        return f"{value:.2f}"
    return f"{value:.2g}"


COLUMNS = ("METRIC", "SIZE", "RESULT", "TARGET", "BASELINE", "RATIO", "VERDICT", "NOTE")


def cells(row: Row) -> list[str]:
    """A row as the text of COLUMNS: the result and baseline with their unit, the ratio as "2.50x"."""
    unit = f" {row.unit}" if row.unit else ""
    ratio = row.ratio()
    return [row.name, row.size or "-", "-" if row.value is None else fmt(row.value) + unit, row.target or "-",
            "-" if row.baseline is None else fmt(row.baseline) + unit, "-" if ratio is None else f"{fmt(ratio)}x",
            row.verdict(), row.note or "-"]


def table(rows: list[Row], parts: list[str] | None = None) -> str:
    """The results as the CLI-style table (COLUMNS), led by a PART column when `parts` (one per row) is given."""
    if parts is None:
        return render_table(COLUMNS, [cells(r) for r in rows])
    return render_table(("PART", *COLUMNS), [[p, *cells(r)] for p, r in zip(parts, rows, strict=True)])


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded to 2 decimals."""
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> str:
    """A one-line description of this machine (cores, CPU model, memory)."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines()
                      if x.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        mem_kb = 0
    return f"{os.cpu_count()} cores, {model}, {mem_kb / 1024 / 1024:.1f} GiB RAM"


def standalone(title: str, prefix: str, keep: bool, measure: Callable[[Path], list[Row]]) -> int:
    """A benchmark script's run: `measure` in a fresh work directory, the table printed under a title line
    (machine, seconds, load), the directory removed unless `keep`. Exit status 1 when it raised or a figure is
    missing, else 0."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    started = time.perf_counter()
    try:
        out = measure(workdir)
    except Exception as exc:
        print(f"bench: {type(exc).__name__}: {exc}\nlogs in {workdir}", file=sys.stderr)
        return 1
    print(f"Carina {title} benchmark, {machine()}, {time.perf_counter() - started:.0f} s, "
          f"load {Path('/proc/loadavg').read_text().split()[0]}\n")
    print(table(out), end="")
    if keep:
        print(f"\nlogs: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if any(r.value is None for r in out) else 0
