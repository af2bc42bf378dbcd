"""The simulator as a running service: threaded XML-RPC endpoint at /RPC2, a ticker thread that advances
the model, and a thread that delivers guest start/stop events (outside the model lock)."""

from __future__ import annotations

import logging
import queue
import secrets
import socketserver
import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

from onesim import faults, lifecycle
from onesim import states as S
from onesim.api import I8, Api
from onesim.inventory import load_inventory
from onesim.model import MONITORING_KEEP, Clock, Model
from onesim.persist import Persister, wipe
from onesim.poolcache import Chunks

log = logging.getLogger("onesim")
MAX_REQUEST_BYTES = 32 * 1024 * 1024
SEND_BYTES = 1 << 20
TICK_SECONDS = 0.05
GUEST_MODES = ("process", "synthetic", "none")


class _Marshaller(xmlrpc.client.Marshaller):
    dispatch = dict(xmlrpc.client.Marshaller.dispatch)

    def dump_i8(self, value: int, write: Any) -> None:
        write(f"<value><i8>{int(value)}</i8></value>\n")

    dispatch[I8] = dump_i8


def _marshal(value: Any) -> str:
    body = _Marshaller("utf-8", allow_none=False).dumps((value,))
    return f"<?xml version='1.0'?>\n<methodResponse>\n{body}</methodResponse>\n"


def dump_response(value: Any) -> list[bytes]:
    """A methodResponse for `value` as byte pieces (I8 values become <i8>; a `Chunks` element of a list
    answer goes out as its own pieces, already escaped, instead of being marshalled as a str)."""
    chunks = [v for v in value if isinstance(v, Chunks)] if isinstance(value, list) else []
    if not chunks:
        return [_marshal(value).encode("utf-8")]
    if len(chunks) > 1:
        raise ValueError("answer: at most one Chunks value")
    token = secrets.token_hex(16)  # stands in for the chunks; cannot occur anywhere else in the answer
    before, after = _marshal([token if isinstance(v, Chunks) else v for v in value]).split(token)
    return [before.encode("utf-8"), *chunks[0].parts, after.encode("utf-8")]


def _fault(code: int, message: str) -> list[bytes]:
    return [xmlrpc.client.dumps(xmlrpc.client.Fault(code, message), methodresponse=True).encode("utf-8")]


def _batches(parts: list[bytes]) -> Iterator[bytes]:
    """The pieces joined into writes of about SEND_BYTES (few syscalls, no copy of a whole big answer)."""
    batch: list[bytes] = []
    size = 0
    for part in parts:
        batch.append(part)
        size += len(part)
        if size >= SEND_BYTES:
            yield b"".join(batch)
            batch, size = [], 0
    if batch:
        yield b"".join(batch)


class _Handler(SimpleXMLRPCRequestHandler):
    """POST /RPC2 with a size limit; answers are written in pieces and never gzip-compressed (loopback: the
    compression of a 100 MB pool costs seconds and saves nothing)."""

    rpc_paths = ("/RPC2",)
    encode_threshold = None

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        if not self.is_rpc_path_valid():
            self.report_404()
            return
        try:
            size = int(self.headers.get("content-length", "0"))
        except ValueError:
            size = -1
        if size < 0 or size > MAX_REQUEST_BYTES:
            self._empty(413 if size > 0 else 400)
            return
        data = self.decode_request_content(self.rfile.read(size))
        if data is None:
            return  # decode_request_content answered
        try:
            parts = self.server.answer(data)  # type: ignore[attr-defined]
        except Exception:
            log.exception("cannot answer")
            self._empty(500)
            return
        self.send_response(200)
        self.send_header("Content-type", "text/xml")
        self.send_header("Content-length", str(sum(len(p) for p in parts)))
        self.end_headers()
        for batch in _batches(parts):
            self.wfile.write(batch)

    def _empty(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-length", "0")
        self.end_headers()


class _Server(socketserver.ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, api: Api) -> None:
        self.api = api
        super().__init__((host, port), requestHandler=_Handler, logRequests=False, allow_none=False)

    def answer(self, data: bytes) -> list[bytes]:
        """The methodResponse pieces for one request body: an answer array, or a fault."""
        try:
            params, method = xmlrpc.client.loads(data)
        except Exception as exc:
            return _fault(S.FAULT_PARSE, f"Malformed XML-RPC call: {exc}")
        try:
            return dump_response(self.api.dispatch(method or "", params))
        except xmlrpc.client.Fault as fault:
            return _fault(fault.faultCode, fault.faultString)
        except Exception as exc:
            log.exception("cannot answer %s", method)
            return _fault(-500, f"{type(exc).__name__}: {exc}")


class _Endpoint:
    """Owns the listening server; can go down (refuse connections) for a while and come back."""

    def __init__(self, host: str, port: int, api: Api) -> None:
        self.host, self.api = host, api
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.server: _Server | None = None
        self._start(port)

    def _start(self, port: int) -> None:
        server = _Server(self.host, port, self.api)
        self.port = server.server_address[1]
        self.server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="onesim-rpc",
                         daemon=True).start()

    def _close(self) -> None:
        with self.lock:
            server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def down(self, seconds: float) -> None:
        """Close the listening socket now; reopen it on the same port after `seconds` (unless stopped)."""
        def run() -> None:
            self._close()
            if self.stopped.wait(seconds):
                return
            for _ in range(50):
                try:
                    with self.lock:
                        if self.server is None and not self.stopped.is_set():
                            self._start(self.port)
                    return
                except OSError:
                    time.sleep(0.1)
            log.error("onesim could not re-open port %s", self.port)
        threading.Thread(target=run, name="onesim-down", daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()
        self._close()


class _NullGuests:
    def start(self, vmid: int, ip: str, context: dict[str, str]) -> None:
        pass

    def stop(self, vmid: int) -> None:
        pass

    def close(self) -> None:
        pass


def make_guests(mode: str, ssh_port: int, workdir: Path) -> Any:
    """The guest manager for `mode` (onesim.guests is imported only when a mode other than "none" is asked)."""
    if mode not in GUEST_MODES:
        raise ValueError(f"guests: must be one of {', '.join(GUEST_MODES)}, not {mode!r}")
    if mode == "none":
        return _NullGuests()
    from onesim.guests import GuestManager

    return GuestManager(mode, ssh_port, workdir)


@dataclass
class SimHandle:
    """A running simulator: `url` (…/RPC2), `auth`, `port`, `model`; `stop()` ends every thread it started."""

    url: str
    auth: str
    port: int
    model: Model
    api: Api
    endpoint: _Endpoint
    guests: Any
    persister: Persister | None = None
    stopping: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def stop(self) -> None:
        """Stop serving, ticking and delivering guest events; close the guests. Safe to run twice."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        self.endpoint.stop()
        self.model.guest_events.put(("quit",))
        for thread in self.threads:
            thread.join(5)
        if self.persister is not None:
            self.persister.close(self.model)
        try:
            self.guests.close()
        except Exception:
            log.exception("closing guests")


def _ticker(handle: SimHandle) -> None:
    while not handle.stopping.wait(TICK_SECONDS):
        try:
            with handle.model.lock:
                lifecycle.tick(handle.model)
        except Exception:
            log.exception("tick failed")


def _deliver(handle: SimHandle) -> None:
    events: queue.SimpleQueue = handle.model.guest_events
    while True:
        event = events.get()
        if event[0] == "quit":
            return
        try:
            if event[0] == "start":
                handle.guests.start(event[1], event[2], event[3])
            else:
                handle.guests.stop(event[1])
        except Exception:
            log.exception("guest %s of VM %s failed", event[0], event[1])


def default_workdir() -> Path:
    """$CARINA_HOME/onesim as an absolute path (CARINA_HOME defaults to ./var)."""
    from config.settings import home_from_env

    return home_from_env() / "onesim"


def _persisted(model: Model, workdir: Path, fresh: bool) -> tuple[Persister, list[int]]:
    """Load the saved cloud of `workdir` (after wiping it when `fresh`): (persister, RUNNING vmids)."""
    if fresh:
        wipe(workdir)
    persister = Persister(workdir)
    return persister, persister.load(model)


def start_simulator(port: int = 0, *, auth: str = "oneadmin:onesim", inventory: Path | None = None,
                    guests: str = "none", ssh_port: int = 2222, delays: dict[str, float] | None = None,
                    workdir: Path | None = None, host: str = "127.0.0.1", clock: Clock = time.time,
                    tick: bool = True, guest_manager: Any = None, persist: bool = False,
                    fresh: bool = False, monitoring_keep: int = MONITORING_KEEP) -> SimHandle:
    """Start a simulator in this process (background threads); port 0 picks a free port.

    `delays` override the lifecycle delays (all 0 by default in-process, so tests run fast);
    `tick=False` leaves time to the caller (`lifecycle.tick(handle.model)` under `model.lock`);
    `guest_manager` (an object with start/stop/close) replaces the one `guests` would build;
    `persist` keeps the cloud in `<workdir>/state` (loaded now, saved while running and at stop; RUNNING VMs get
    their guests started again), `fresh` discards what was saved first. Raises persist.StateError for an
    unreadable saved cloud.
    `monitoring_keep` (1..200) bounds the monitoring records kept per VM (memory: ~0.5 KB a record).
    """
    if isinstance(monitoring_keep, bool) or not isinstance(monitoring_keep, int) or \
            not 1 <= monitoring_keep <= MONITORING_KEEP:
        raise ValueError(f"monitoring_keep: must be an integer between 1 and {MONITORING_KEEP}")
    model = Model(load_inventory(inventory, auth), clock=clock, delays=delays)
    model.monitoring_keep = monitoring_keep
    workdir = (workdir or default_workdir()).resolve()
    persister, running = _persisted(model, workdir, fresh) if persist else (None, [])
    if guest_manager is None:
        guest_manager = make_guests(guests, ssh_port, workdir)
    api = Api(model)
    faults.register(api)
    if persister is not None:
        persister.guard(api)
    endpoint = _Endpoint(host, port, api)
    api.hooks["down"] = endpoint.down
    handle = SimHandle(url=f"http://{host}:{endpoint.port}/RPC2", auth=auth, port=endpoint.port, model=model,
                       api=api, endpoint=endpoint, guests=guest_manager, persister=persister)
    with model.lock:
        for vmid in running:  # as a host coming back: the guest boots again and re-runs its context
            vm = model.vms[vmid]
            model.guest_events.put(("start", vmid, vm.ip(), dict(vm.context)))
    if persister is not None:
        persister.start(model)
    workers = [threading.Thread(target=_deliver, args=(handle,), name="onesim-guests", daemon=True)]
    if tick:
        workers.append(threading.Thread(target=_ticker, args=(handle,), name="onesim-tick", daemon=True))
    for thread in workers:
        thread.start()
    handle.threads = workers
    return handle
