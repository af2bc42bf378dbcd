"""The Carina RQ worker: `python worker.py [--burst] [--name NAME] [--fork]`.

Listens on three queues in priority order (store.runtime.worker_queues): `<queue>-high` (the minute tick, the
watcher), `<queue>-callbacks`, then `<queue>` (drives); RQ always takes from the first non-empty one, so
periodic work never waits behind a backlog. Runs each job in the worker process (CarinaWorker, RQ's
SimpleWorker: Carina's jobs are short, stateless functions; a fork per job cost 15-20 ms); a job's timeout is
still enforced (RQ's SIGALRM death penalty: the worker loop runs in the main thread). `--fork` runs RQ's
forking Worker instead.
JSON serializer only (no pickle in Redis), RQ's scheduler on (delayed jobs of other modules), a pump
thread for Carina's delayed drives (lifecycle.pump), callback retries, callback inbox drains whose lease ran out
(ops.cbinbox.pump_drains) and watcher passes, JSON log lines on stderr (config/logs.py), metrics for /metrics
(config/metrics.py). At start it re-drives every in-flight environment (reconcile.recover_all), so work
interrupted by a killed worker or a Redis restart resumes.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import threading
import time
from typing import Any

import redis
from rq import Queue, SimpleWorker, Worker
from rq.serializers import JSONSerializer

from config import logs, metrics
from config.settings import Settings
from functions.engine import watch
from functions.engine.kick import pump
from functions.ops.callbacks import pump_retries
from functions.store.runtime import HIGH, JsonJob, Runtime, connect, sibling, worker_queues
from functions.upkeep.reconcile import recover_all

log = logging.getLogger("carina.worker")

MAINTENANCE_INTERVAL = 30   # RQ registry cleanup (abandoned jobs of killed workers) and scheduler lock retries
RECONNECT_EVERY = 0.5       # seconds between Redis pings after the worker loop quit on a connection error
PUMP_EVERY = 0.25           # seconds between pumps of Carina's delayed drives (lifecycle.pump)
HEARTBEAT_EVERY = 5.0       # seconds between the worker's own heartbeats outside a job's bookkeeping


class CarinaWorker(SimpleWorker):
    """RQ's SimpleWorker (each job in the worker process) with fewer Redis round trips per job: the worker's
    own heartbeat (3 commands) is sent at most every HEARTBEAT_EVERY seconds outside a pipeline (RQ sends it
    4-5 times per job; the worker's TTL is minutes), and an unchanged state is not written again. Everything a
    job's own bookkeeping needs (its heartbeat, registries, result) is left as RQ does it."""

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is None and self._beat_at and time.monotonic() - self._beat_at < HEARTBEAT_EVERY:
            return
        super().heartbeat(timeout, pipeline)
        self._beat_at = time.monotonic()

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is None and state == self._state:
            return
        super().set_state(state, pipeline)

    _beat_at = 0.0


def start_pump(queue: Queue, stop: threading.Event, text: redis.Redis | None = None) -> threading.Thread:
    """A daemon thread moving due delayed drives, callback retries and watcher passes onto their queues until
    `stop` is set (every worker runs one, so a killed worker never stalls them). With `text` (a
    decode_responses client), the first pump that works after a Redis outage re-drives every in-flight
    environment (a drive that ran when Redis went away failed, and would otherwise wait for the minute tick)."""
    high = sibling(queue, HIGH)

    def loop() -> None:
        outage = False
        while not stop.wait(PUMP_EVERY):
            try:
                pump(queue)
                pump_retries(queue)
                watch.schedule(high)
                if outage and text is not None:
                    log.info("Redis is back: re-driving %d environment(s)", len(recover_all(text, queue)))
                outage = False
            except redis.RedisError as exc:
                outage = True
                log.warning("pump: %s", exc)

    thread = threading.Thread(target=loop, name="carina-pump", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    """Run a worker until stopped (or, with --burst, until the queue is empty)."""
    parser = argparse.ArgumentParser(description="Carina RQ worker")
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--name", default=None, help="worker name (default: RQ's)")
    parser.add_argument("--fork", action="store_true", help="fork a process per job (RQ's Worker)")
    args = parser.parse_args(argv)
    logs.setup("worker")
    settings = Settings.from_env()
    metrics.init_process(settings.home, forking=True)    # RQ's work horses are forks, one at a time
    rt = connect(settings)
    recovered = recover_all(rt.text, rt.queue)
    log.info("worker starting on queue %r (%d environment(s) re-driven)", settings.queue_name, len(recovered))
    stop = threading.Event()
    pumping = connect(settings)
    start_pump(pumping.queue, stop, pumping.text)
    try:
        run(rt, args.name, args.burst, fork=args.fork)
    finally:
        stop.set()
    return 0


def run(rt: Runtime, name: str | None, burst: bool, fork: bool = False) -> None:
    """Run RQ's worker loop on the priority-ordered queues. RQ quits on some Redis connection errors (a Redis
    restart); then wait for Redis, re-drive in-flight environments and start again (fresh name: the old
    registration may linger). Returns on a requested stop (SIGTERM/SIGINT) or, with `burst`, once the
    queues are empty."""
    worker_class = Worker if fork else CarinaWorker
    for attempt in itertools.count():
        worker = worker_class(worker_queues(rt.queue), connection=rt.raw, serializer=JSONSerializer,
                              job_class=JsonJob, name=name if attempt == 0 or name is None else f"{name}-r{attempt}",
                              maintenance_interval=MAINTENANCE_INTERVAL)
        try:
            worker.work(with_scheduler=True, burst=burst, logging_level="INFO")
        except redis.ConnectionError as exc:          # raised from RQ's teardown while Redis is away
            log.warning("worker: %s", exc)
        # RQ (pinned) records a requested stop in these attributes; a plain return without one is an error exit
        if burst or worker._stop_requested or worker._shutdown_requested_date is not None:
            return
        log.warning("worker quit on an error (Redis restarting?): reconnecting")
        while True:
            try:
                rt.raw.ping()
                log.info("Redis is back: %d environment(s) re-driven", len(recover_all(rt.text, rt.queue)))
                break
            except redis.RedisError:
                time.sleep(RECONNECT_EVERY)


if __name__ == "__main__":
    sys.exit(main())
