"""Carina benchmarks: `python bench/run.py [--quick] [--only sim,rq]` prints one table and writes its JSON record.

Each part is a module of bench/ exposing `rows(workdir: Path, quick: bool) -> list[Row]`; it starts the real
processes it needs (redis-server, `python -m onesim`, gunicorn, `worker.py`) on free loopback ports in its own
directory and stops them. A part that raises gives one FAILED row naming it and the error, and the run goes on.
The record goes to bench/results/<date>-<mode>.json and bench/results/latest-<mode>.json (see bench/record.py).
Exit status 0 when every figure was measured (SLOW verdicts included: timings on a shared machine vary), 1 when
a part failed or a figure could not be measured, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import record  # noqa: E402
from bench.common import Row, load_average, machine, table  # noqa: E402

# The parts, in the order they run: modules of bench/ with rows(workdir, quick). Adding one is adding its name.
PARTS = (
    "sim_bench",
    "rq_bench",
    "stack_bench",
    "creates_bench",
    "sim_pool_bench",
    "callbacks_bench",
    "create_bench",
    "policy_tick_bench",
    "policy_start_bench",
)


def part_name(module: str) -> str:
    """The short name of a part (its module without `_bench`), as --only takes it."""
    return module.removesuffix("_bench")


def select(only: str) -> list[str]:
    """The modules of PARTS named in `only` (comma-separated short or module names; "" = all), in PARTS order.
    Raises ValueError naming any unknown one."""
    wanted = {w.strip() for w in only.split(",") if w.strip()}
    if not wanted:
        return list(PARTS)
    unknown = wanted - {part_name(m) for m in PARTS} - set(PARTS)
    if unknown:
        raise ValueError(f"unknown part(s) {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(part_name(m) for m in PARTS)}")
    return [m for m in PARTS if m in wanted or part_name(m) in wanted]


class PartTimeout(BaseException):
    """Raised in a part that ran past its time limit (by SIGALRM, so its `finally` blocks stop its processes). A
    BaseException: a part's `except Exception` (a call it retries or skips) does not swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise PartTimeout in this (main) thread after `seconds` (0: no limit); the previous handler is restored."""
    if seconds <= 0:
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise PartTimeout(f"still running after {seconds:.0f} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_part(module: str, workdir: Path, quick: bool, limit: float = 0) -> record.PartResult:
    """Import bench.<module> and run its rows() (within `limit` seconds, 0: none); never raises: an error
    becomes one FAILED row. A part that returns no rows, or a row whose target cannot be read, counts as failed
    too."""
    name = part_name(module)
    result = record.PartResult(name)
    started = time.perf_counter()
    try:
        (workdir / name).mkdir(parents=True, exist_ok=True)         # each part's own directory, made here
        with time_limit(limit):
            rows = importlib.import_module(f"bench.{module}").rows(workdir / name, quick)
        if not rows:
            raise RuntimeError("returned no rows")
        for row in rows:
            if not isinstance(row, Row):
                raise TypeError(f"returned {type(row).__name__}, not a Row")
            row.verdict()  # raises ValueError on an unreadable target
        result.rows = list(rows)
    except (Exception, PartTimeout) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        result.rows = [Row(f"{name} FAILED", None, "", note=result.error)]
        traceback.print_exc(file=sys.stderr)
    result.seconds = time.perf_counter() - started
    return result


def header(rec: dict[str, Any], seconds: float) -> str:
    """The line above the table: mode, date, machine, commit, load."""
    commit = (rec["commit"] or "?")[:10] + (" (dirty)" if rec["dirty"] else "")
    start, end = rec["load"]["start"], rec["load"]["end"]
    return (f"Carina benchmarks ({rec['mode']}), {rec['date']}, {rec['machine']}, commit {commit}, "
            f"load average {start[0]:.2f} at start / {end[0]:.2f} at end, {seconds:.0f} s")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (what CI runs; a few minutes)")
    parser.add_argument("--only", default="", help="comma-separated parts to run (default all): "
                        + ",".join(part_name(m) for m in PARTS))
    parser.add_argument("--results", type=Path, default=record.RESULTS, help="directory of the JSON records")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (process logs) afterwards")
    parser.add_argument("--part-timeout", type=float, default=None, metavar="S",
                        help="seconds a part may run before it is stopped as FAILED (default 600 quick, 3600 full)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the selected parts, print the table, write the record; the exit status (see the module doc)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        modules = select(args.only)
    except ValueError as exc:
        parser.error(str(exc))
    mode = "quick" if args.quick else "full"
    limit = args.part_timeout if args.part_timeout is not None else (600 if args.quick else 3600)
    date, load_start, started = datetime.now(UTC), load_average(), time.perf_counter()
    commit, dirty = record.git_commit()   # the code about to run
    workdir = Path(tempfile.mkdtemp(prefix="carina-bench-"))
    parts = []
    for i, module in enumerate(modules, 1):
        print(f"bench [{i}/{len(modules)}] {part_name(module)} ...", file=sys.stderr, flush=True)
        parts.append(run_part(module, workdir, args.quick, limit))
        print(f"bench [{i}/{len(modules)}] {part_name(module)}: {parts[-1].seconds:.0f} s"
              + (f", FAILED: {parts[-1].error}" if parts[-1].error else ""), file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    rec = record.build(mode, parts, date=date, machine=machine(), commit=commit, dirty=dirty,
                       load_start=load_start, load_end=load_average(), seconds=seconds)
    print(header(rec, seconds) + "\n")
    print(table([r for p in parts for r in p.rows], [p.name for p in parts for _ in p.rows]), end="")
    own, latest = record.write(rec, args.results)
    print(f"\nrecord: {own} (and {latest.name})")
    if args.keep or rec["failed"]:
        print(f"logs: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if rec["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
