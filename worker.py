"""The Carina RQ worker: `python worker.py [--burst] [--name NAME]`.

JSON serializer only (no pickle in Redis), RQ's scheduler on (delayed jobs of other modules), a pump
thread for Carina's delayed drives (lifecycle.pump), logging to stderr. At start it re-drives every
in-flight environment (reconcile.recover_all), so work interrupted by a killed worker or a Redis
restart resumes.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

import redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from config.settings import Settings
from functions.callbacks import pump_retries
from functions.lifecycle import pump
from functions.reconcile import recover_all
from functions.runtime import JsonJob, connect

log = logging.getLogger("carina.worker")

MAINTENANCE_INTERVAL = 30   # RQ registry cleanup (abandoned jobs of killed workers) and scheduler lock retries
PUMP_EVERY = 0.25           # seconds between pumps of Carina's delayed drives (lifecycle.pump)


def start_pump(queue: Queue, stop: threading.Event) -> threading.Thread:
    """A daemon thread moving due delayed drives and callback retries onto the queue until `stop` is set
    (every worker runs one, so a killed worker never stalls them)."""
    def loop() -> None:
        while not stop.wait(PUMP_EVERY):
            try:
                pump(queue)
                pump_retries(queue)
            except redis.RedisError as exc:
                log.warning("pump: %s", exc)

    thread = threading.Thread(target=loop, name="carina-pump", daemon=True)
    thread.start()
    return thread


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
    stop = threading.Event()
    start_pump(connect(settings).queue, stop)
    try:
        worker.work(with_scheduler=True, burst=args.burst, logging_level="INFO")
    finally:
        stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
