"""Carina benchmarks: `python bench/run.py [--quick]` prints one table (never a timed test).

Parts: (c) simulator scale with synthetic guests, (b) RQ latency and throughput with one real worker,
(d) create → ACTIVE end to end, (a) gateway latency under gunicorn, (e) memory of the processes.
Everything runs on free loopback ports in a temporary directory, with real processes
(redis-server, `python -m onesim`, gunicorn, `worker.py`). --quick keeps it under about a minute.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import rq_bench, sim_bench, stack_bench  # noqa: E402
from bench.common import Row, machine, rss_mb, table  # noqa: E402


def _stop(proc) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM a process we started, SIGKILL if it lingers. Safe to run twice."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except Exception:
            proc.kill()
            proc.wait(5)


def sim_part(workdir: Path, quick: bool) -> list[Row]:
    rows, proc = sim_bench.run(workdir, quick)
    try:
        n = 300 if quick else 1000
        rows.append(Row(f"RSS simulator ({n} VMs, synthetic)", rss_mb(proc.pid), "MiB"))
    finally:
        _stop(proc)
    return rows


def rq_part(workdir: Path, quick: bool):  # type: ignore[no-untyped-def]
    def run(redis_url: str) -> list[Row]:
        rows, worker = rq_bench.run(redis_url, workdir, quick)
        _stop(worker)
        return rows
    return run


PARTS = ("gateway", "rq", "sim", "e2e", "RSS")


def _part(row: Row) -> int:
    """Table order: (a) gateway, (b) RQ, (c) simulator, (d) end to end, (e) memory (stable within a part)."""
    return next((i for i, word in enumerate(PARTS) if row.name.startswith(word)), len(PARTS))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and VMs (about a minute)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) afterwards")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="carina-bench-"))
    started = time.perf_counter()
    try:
        rows = sim_part(workdir, args.quick)
        early, stack_rows = stack_bench.run(workdir, args.quick, [rq_part(workdir, args.quick)])
        rows = sorted(early + rows + stack_rows, key=_part)
    except Exception as exc:
        print(f"bench: {type(exc).__name__}: {exc}\nlogs in {workdir}", file=sys.stderr)
        return 1
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = "quick" if args.quick else "full"
    print(f"Carina benchmarks ({mode}), {stamp}, {machine()}, {time.perf_counter() - started:.0f} s\n")
    print(table(rows), end="")
    if args.keep:
        print(f"\nlogs: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if any(r.value is None for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
