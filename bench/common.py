"""Shared helpers of the benchmarks: result rows, percentiles, process memory, the final table."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from functions.views.tables import render_table


@dataclass
class Row:
    """One measured figure. `target` is a bound ("< 30", "<= 1.5", "> 50", ">= 150"); empty when no target is set.
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
        """OK / SLOW against the target, "-" without one, FAILED when nothing was measured."""
        if self.value is None:
            return "FAILED"
        if not self.target:
            return "-"
        op, bound = self.target.split()
        limit = float(bound)
        ok = {"<": self.value < limit, "<=": self.value <= limit,
              ">": self.value > limit, ">=": self.value >= limit}[op]
        return "OK" if ok else "SLOW"


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


def latency_rows(name: str, samples: list[float], p50_target: str = "", p95_target: str = "") -> list[Row]:
    """p50 and p95 rows (ms) of a latency sample."""
    n = f"n={len(samples)}, mean {statistics.fmean(samples):.2f}"
    return [Row(f"{name} p50", percentile(samples, 50), "ms", p50_target, n),
            Row(f"{name} p95", percentile(samples, 95), "ms", p95_target)]


def rss_mb(pid: int) -> float | None:
    """Resident set size of a process in MiB (from /proc), or None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


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
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def table(rows: list[Row]) -> str:
    """The results as the CLI-style table: name, value, unit, target, verdict, note."""
    cells = [[r.name, fmt(r.value), r.unit, r.target or "-", r.verdict(), r.note or "-"] for r in rows]
    return render_table(["BENCHMARK", "VALUE", "UNIT", "TARGET", "VERDICT", "NOTE"], cells)


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
