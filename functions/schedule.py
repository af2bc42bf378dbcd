"""The scheduler process: `python -m functions.schedule [--burst] [--interval S] [--tick-every S]`.

Registers the periodic tick (functions.tasks.minute_tick, every TICK_EVERY seconds; the tick itself acts
once per minute) with rq-scheduler, using JSON jobs on Carina's high-priority queue (store.runtime.HIGH:
workers serve it before callbacks and drives, so the tick never waits behind a backlog), then runs the
scheduler loop. Several
scheduler processes are safe: the registration is idempotent (fixed job id), rq-scheduler's lock lets one
enqueue at a time, and the tick deduplicates per minute.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import UTC, datetime

import redis
from rq import Queue
from rq_scheduler import Scheduler

from config import logs
from config.settings import Settings
from functions.store.runtime import HIGH, JsonJob, JsonQueue, connect, sibling

log = logging.getLogger("carina.schedule")

TICK_FUNC = "functions.tasks.minute_tick"
TICK_ID = "carina-minute-tick"
TICK_EVERY = 10          # seconds between tick jobs; the tick acts once per minute
TICK_TIMEOUT = 50        # seconds a tick may run
RECONNECT_EVERY = 1.0    # seconds between attempts while Redis is away


def scheduler_for(raw: redis.Redis, queue: Queue, interval: float = 2.0) -> Scheduler:
    """An rq-scheduler Scheduler that creates JSON jobs on the high-priority queue next to the base `queue`."""
    return Scheduler(queue=sibling(queue, HIGH), connection=raw, interval=interval, job_class=JsonJob,
                     queue_class=JsonQueue)


def register(scheduler: Scheduler, every: int = TICK_EVERY) -> bool:
    """Register the periodic tick unless it is registered as wanted. Returns True if (re)registered.

    Safe to run twice and from several processes (fixed job id).
    """
    for job in scheduler.get_jobs():
        if job.id == TICK_ID:
            if job.func_name == TICK_FUNC and job.meta.get("interval") == every and job.origin == scheduler.queue_name:
                return False
            scheduler.cancel(job)
    scheduler.schedule(scheduled_time=datetime.now(UTC).replace(tzinfo=None), func=TICK_FUNC, interval=every,
                       repeat=None, id=TICK_ID, timeout=TICK_TIMEOUT, result_ttl=max(every * 6, 120),
                       description="Carina minute tick")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Carina scheduler (rq-scheduler with the minute tick)")
    parser.add_argument("--burst", action="store_true", help="enqueue what is due once, then exit")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between scheduler polls")
    parser.add_argument("--tick-every", type=int, default=TICK_EVERY,
                        help=f"seconds between tick jobs (default {TICK_EVERY}; the tick acts once per minute)")
    args = parser.parse_args(argv)
    if args.tick_every < 1:
        parser.error("--tick-every: must be at least 1 second")
    logs.setup("scheduler")
    rt = connect(Settings.from_env())
    while True:                      # a Redis restart ends rq-scheduler's loop: start a fresh scheduler
        try:
            scheduler = scheduler_for(rt.raw, rt.queue, args.interval)
            if register(scheduler, args.tick_every):
                log.info("registered %s every %ss", TICK_FUNC, args.tick_every)
            scheduler.run(burst=args.burst)
            return 0
        except redis.ConnectionError as exc:
            log.warning("scheduler: %s; reconnecting in %ss", exc, RECONNECT_EVERY)
            time.sleep(RECONNECT_EVERY)


if __name__ == "__main__":
    sys.exit(main())
