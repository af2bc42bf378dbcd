"""Prometheus instruments of every Carina process (prometheus-client), and how /metrics gathers them.

Each process entry point (the gateway's `get_app`, `worker.py`, `functions.schedule`) calls `init_process`
first: counters and histograms then live in memory-mapped files under PROMETHEUS_MULTIPROC_DIR (default
`$CARINA_HOME/metrics`), one file set per process, and any gateway process sums them all on a scrape
(prometheus-client's multiprocess mode). RQ runs each job in a forked work horse; a worker's horses run one
after another, so they share one file set (`<worker pid>h`) instead of leaving one per job. Without
`init_process` (tests calling functions in-process) the instruments count in this process only.

Recording never raises: a metrics failure (e.g. the directory removed) is logged once and the operation goes on.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.multiprocess import MultiProcessCollector

log = logging.getLogger("carina.metrics")

DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
RPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SSH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0)
TICK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class Instruments:
    """The instruments every process may record into (`registry` is None in multiprocess mode)."""

    registry: CollectorRegistry | None
    callbacks: Counter
    rpc_seconds: Histogram
    rpc_errors: Counter
    ssh_seconds: Histogram
    ssh_failures: Counter
    tick_seconds: Histogram


_lock = threading.Lock()
_current: Instruments | None = None
_warned = False


def multiprocess_dir() -> Path | None:
    """The multiprocess directory in use, or None (single-process mode)."""
    path = os.environ.get(DIR_ENV)
    return Path(path) if path and Path(path).is_dir() else None


def _build() -> Instruments:
    reg = None if multiprocess_dir() else CollectorRegistry()
    return Instruments(
        registry=reg,
        callbacks=Counter("carina_callbacks", "VM callbacks answered by the gateway, by outcome "
                          "(accepted, refused, throttled = refused without an event, invalid)", ["outcome"],
                          registry=reg),
        rpc_seconds=Histogram("carina_xmlrpc_request_seconds", "OpenNebula XML-RPC calls, by endpoint and method",
                              ["endpoint", "method"], buckets=RPC_BUCKETS, registry=reg),
        rpc_errors=Counter("carina_xmlrpc_errors", "OpenNebula XML-RPC calls that failed, by endpoint, method and "
                           "kind (unavailable, refused, unparseable)", ["endpoint", "method", "kind"], registry=reg),
        ssh_seconds=Histogram("carina_ssh_command_seconds", "SSH commands on masters (announce add/remove), "
                              "by outcome (ok, exit = non-zero exit, failed, hostkey)", ["outcome"],
                              buckets=SSH_BUCKETS, registry=reg),
        ssh_failures=Counter("carina_ssh_failures", "SSH commands on masters that failed, by reason "
                             "(exit, failed, hostkey)", ["reason"], registry=reg),
        tick_seconds=Histogram("carina_tick_seconds", "Duration of the minute tick (the runs that acted)",
                               buckets=TICK_BUCKETS, registry=reg),
    )


def instruments() -> Instruments:
    """This process's instruments, built on first use."""
    global _current
    with _lock:
        if _current is None:
            _current = _build()
        return _current


def init_process(home: Path, forking: bool = False) -> Path:
    """Record this process's metrics under PROMETHEUS_MULTIPROC_DIR (created; default `home/metrics`, and
    exported so every later use agrees). With `forking` (the RQ worker), forked children share one
    `<pid>h` file set: they must run one at a time. Call once at process start, before recording."""
    global _current
    path = Path(os.environ.get(DIR_ENV) or home / "metrics")
    path.mkdir(parents=True, exist_ok=True)
    os.environ[DIR_ENV] = str(path)
    owner = os.getpid()

    def identity() -> str:
        pid = os.getpid()
        return f"{owner}h" if forking and pid != owner else str(pid)

    with _lock:
        values.ValueClass = values.MultiProcessValue(process_identifier=identity)
        _current = None
    return path


def registry_for_scrape(*collectors: Any) -> CollectorRegistry:
    """A fresh registry with every process's instruments (or this process's) and `collectors`."""
    reg = CollectorRegistry()
    path = multiprocess_dir()
    if path is not None:
        MultiProcessCollector(reg, path=str(path))
    else:
        reg.register(_Own(instruments()))
    for collector in collectors:
        reg.register(collector)
    return reg


class _Own:
    """A collector re-exposing this process's own registry (single-process mode)."""

    def __init__(self, inst: Instruments) -> None:
        self.inst = inst

    def collect(self) -> Iterator[Any]:
        if self.inst.registry is not None:
            yield from self.inst.registry.collect()


def _safely(what: str, record: Any, *args: Any) -> None:
    global _warned
    try:
        record(*args)
    except Exception as exc:   # noqa: BLE001 - metrics must never break an operation
        if not _warned:
            _warned = True
            log.warning("metrics: could not record %s: %s", what, exc)


def endpoint_label(proxy: str) -> str:
    """The host:port of an XML-RPC URL (never its user info or path). Pure."""
    parts = urlsplit(proxy)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


_callback_children: dict[str, tuple[Instruments, Any]] = {}


def _count_callback(outcome: str) -> None:
    inst = _current or instruments()
    got = _callback_children.get(outcome)
    if got is None or got[0] is not inst:         # first use, or the instruments were built again
        got = _callback_children[outcome] = (inst, inst.callbacks.labels(outcome))
    got[1].inc()


def callback(outcome: str) -> None:
    """Count one VM callback answered with `outcome` (its labelled counter looked up once per instruments)."""
    _safely("a callback", _count_callback, outcome)


def rpc_call(endpoint: str, method: str, seconds: float, error_kind: str | None = None) -> None:
    """Record one XML-RPC call (and its failure kind, if it failed)."""
    def record() -> None:
        inst = instruments()
        inst.rpc_seconds.labels(endpoint, method).observe(seconds)
        if error_kind is not None:
            inst.rpc_errors.labels(endpoint, method, error_kind).inc()
    _safely("an XML-RPC call", record)


def ssh_command(seconds: float, outcome: str) -> None:
    """Record one SSH command on a master; any outcome but `ok` counts as a failure too."""
    def record() -> None:
        inst = instruments()
        inst.ssh_seconds.labels(outcome).observe(seconds)
        if outcome != "ok":
            inst.ssh_failures.labels(outcome).inc()
    _safely("an SSH command", record)


def tick(seconds: float) -> None:
    """Record the duration of a minute tick that acted."""
    _safely("a tick", lambda: instruments().tick_seconds.observe(seconds))
