"""Run worker.py under cProfile with a CPU clock (time.process_time), writing the stats to argv[1] at exit:
`python bench/profile_worker.py OUT.prof [worker.py options]` (used by creates_bench.py --profile)."""

from __future__ import annotations

import cProfile
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import worker  # noqa: E402


def main() -> int:
    out, args = sys.argv[1], sys.argv[2:]
    prof = cProfile.Profile(time.process_time)
    try:
        return prof.runcall(worker.main, args)
    finally:
        prof.dump_stats(out)


if __name__ == "__main__":
    sys.exit(main())
