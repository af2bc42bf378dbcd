"""The Carina RQ worker: `python worker.py [--burst] [--name NAME]`.

JSON serializer only (no pickle in Redis), RQ's scheduler on (delayed drives and retries), logging to
stderr. At start it re-drives every in-flight environment (reconcile.recover_all), so work interrupted by a
killed worker or a Redis restart resumes.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rq import Worker
from rq.serializers import JSONSerializer

from config.settings import Settings
from functions.reconcile import recover_all
from functions.runtime import JsonJob, connect

log = logging.getLogger("carina.worker")

# RQ's delayed jobs are moved by the scheduler of the one worker holding `rq:scheduler-lock:<queue>` (TTL 61 s).
# If that worker is killed, the others try to take the lock at each maintenance pass: keep it short so
# delayed drives resume about a minute after a crash instead of ten.
MAINTENANCE_INTERVAL = 10


def main(argv: list[str] | None = None) -> int:
    """Run a worker until stopped (or, with --burst, until the queue is empty)."""
    parser = argparse.ArgumentParser(description="Carina RQ worker")
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--name", default=None, help="worker name (default: RQ's)")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    rt = connect(settings)
    recovered = recover_all(rt.text, rt.queue)
    log.info("worker starting on queue %r (%d environment(s) re-driven)", settings.queue_name, len(recovered))
    worker = Worker([rt.queue], connection=rt.raw, serializer=JSONSerializer, job_class=JsonJob, name=args.name,
                    maintenance_interval=MAINTENANCE_INTERVAL)
    worker.work(with_scheduler=True, burst=args.burst, logging_level="INFO")
    return 0


if __name__ == "__main__":
    sys.exit(main())
