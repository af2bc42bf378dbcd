"""functions.cloud.one.OneClient against the real simulator (XML-RPC over HTTP) and against broken endpoints."""

from __future__ import annotations

import http.server
import socket
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from functions.cloud.one import AUTHENTICATION, OneClient, OneError, OneUnavailable, VmView
from onesim.server import start_simulator
from tests.harness import free_port

TEMPLATE = """NAME = "{name}"
CPU = 0.1
MEMORY = 64
NIC = [ NETWORK_ID = 0 ]
CONTEXT = [ CARINA_TOKEN = "t", NOTE = "a \\"quoted\\" ] value" ]
CARINA_SERVICE = "svc"
CARINA_ENVID = "{envid}"
CARINA_SLOT = "{slot}"
"""


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    handle = start_simulator(0, workdir=Path(tmp_path_factory.mktemp("onesim")))  # delays 0 in-process
    yield handle
    handle.stop()


@pytest.fixture
def one(sim: object) -> OneClient:
    return OneClient(sim.url, sim.auth, timeout=5)  # type: ignore[attr-defined]


def _fault(sim: object, method: str, *args: object) -> object:
    proxy = xmlrpc.client.ServerProxy(sim.url)  # type: ignore[attr-defined]
    func = proxy
    for part in method.split("."):
        func = getattr(func, part)
    return func(sim.auth, *args)  # type: ignore[attr-defined,operator]


def _wait(check: Callable[[], VmView | None | bool], what: str, timeout: float = 20.0) -> VmView:
    """Poll the simulator's state machine (it advances in its own thread) until `check` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got  # type: ignore[return-value]
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _allocate(one: OneClient, envid: str, slot: str = "m") -> int:
    return one.allocate(TEMPLATE.format(name=f"env{envid}-{slot}", envid=envid, slot=slot))


# --- against the simulator -------------------------------------------------------------------------------

def test_version(one: OneClient) -> None:
    assert one.version()[:1].isdigit()


def test_allocate_info_running(one: OneClient) -> None:
    vmid = _allocate(one, "101")
    first = one.info(vmid)
    assert first is not None and first.vmid == vmid and first.name == "env101-m"
    assert not first.gone and not first.failed
    vm = _wait(lambda: (v := one.info(vmid)) is not None and v.running and v, "RUNNING")
    assert vm.short_status() == "runn"
    assert vm.ip and vm.host
    assert vm.user_template["CARINA_ENVID"] == "101" and vm.user_template["CARINA_SLOT"] == "m"


def test_info_of_missing_vm_is_none(one: OneClient) -> None:
    assert one.info(987654) is None


def test_tagged_finds_only_this_environment(one: OneClient) -> None:
    mine = {_allocate(one, "202", "m"), _allocate(one, "202", "s0")}
    other = _allocate(one, "203", "m")
    assert {v.vmid for v in one.tagged("202")} == mine
    assert [v.vmid for v in one.tagged("203")] == [other]
    assert one.tagged("nope") == []


def test_views_asks_once_for_exactly_these_vms(sim: object, one: OneClient) -> None:
    first, second, other = _allocate(one, "251"), _allocate(one, "251", "s0"), _allocate(one, "252")
    _wait(lambda: (v := one.info(second)) is not None and v.running and v, "RUNNING")
    one.terminate(first, hard=True)
    _wait(lambda: (v := one.info(first)) is None or v.gone, "DONE")
    views = one.views([first, second, 987654])
    assert sorted(views) == [first, second] and other not in views     # unknown ids absent, others not asked
    assert views[first].gone and views[second].running
    assert views[second].user_template["CARINA_ENVID"] == "251"          # full bodies (tags, SCHED_MESSAGE)
    assert one.views([]) == {}
    methods = sim.api.methods  # type: ignore[attr-defined]
    infoset = methods.pop("one.vmpool.infoset")                        # an OpenNebula without infoset
    try:
        fallback = one.views([first, second, 987654])
    finally:
        methods["one.vmpool.infoset"] = infoset
    assert sorted(fallback) == [second]                                # the extended pool (not DONE), filtered


def test_terminate_twice_and_absent_is_fine(one: OneClient) -> None:
    vmid = _allocate(one, "301")
    _wait(lambda: (v := one.info(vmid)) is not None and v.running and v, "RUNNING")
    one.terminate(vmid)
    one.terminate(vmid)                      # already shutting down or DONE: no error
    _wait(lambda: (v := one.info(vmid)) is None or v.gone, "DONE")
    one.terminate(vmid)                      # DONE
    one.terminate(vmid, hard=True)
    one.terminate(987654)                    # never existed
    assert vmid not in {v.vmid for v in one.tagged("301")}
    assert vmid not in {v.vmid for v in one.pool()}


def test_pool_carries_monitored_cpu(sim: object, one: OneClient) -> None:
    vmid = _allocate(one, "401")
    _wait(lambda: (v := one.info(vmid)) is not None and v.running and v, "RUNNING")
    _fault(sim, "onesim.vm.setcpu", vmid, 42.5)
    vm = _wait(lambda: next((v for v in one.pool() if v.vmid == vmid and v.cpu == 42.5), None), "CPU 42.5")
    assert vm.running and vm.ip


def test_observe_reads_states_and_cpu_from_short_bodies_alone(sim: object) -> None:
    calls: list[str] = []

    class Counted(OneClient):
        def _raw(self, method: str, *args: Any, **kw: Any) -> Any:
            calls.append(method)
            return super()._raw(method, *args, **kw)

    one = Counted(sim.url, sim.auth, timeout=5)  # type: ignore[attr-defined]
    vmid = _allocate(one, "451")
    _wait(lambda: (v := one.info(vmid)) is not None and v.running and v, "RUNNING")
    _fault(sim, "onesim.vm.setcpu", vmid, 42.5)
    held = int(one._call("vm.allocate", TEMPLATE.format(name="held", envid="452", slot="m"), True))
    views, cpu = one.observe([vmid, held, 987654])
    assert sorted(views) == [vmid, held] and views[vmid].running and views[held].state == 2   # HOLD
    assert cpu == {vmid: 42.5}                         # a VM without a monitoring record has no figure
    assert calls == ["vmpool.infoset"] and one.observe([]) == ({}, {})


@pytest.mark.parametrize("kind, prop, short", [("BOOT_FAILURE", "failed", "fail"), ("UNKNOWN", "unknown", "unkn")])
def test_faults_are_classified(sim: object, one: OneClient, kind: str, prop: str, short: str) -> None:
    vmid = _allocate(one, "501")
    _wait(lambda: (v := one.info(vmid)) is not None and v.running and v, "RUNNING")
    _fault(sim, "onesim.vm.fail", vmid, kind)
    vm = _wait(lambda: (v := one.info(vmid)) is not None and getattr(v, prop) and v, kind)
    assert vm.short_status() == short and not vm.running


def test_wrong_session_is_oneerror_without_the_secret(sim: object) -> None:
    secret = "oneadmin:not-the-password-S3CRET"
    client = OneClient(sim.url, secret)  # type: ignore[attr-defined]
    with pytest.raises(OneError) as err:
        client.allocate(TEMPLATE.format(name="x", envid="1", slot="m"))
    assert err.value.code == AUTHENTICATION
    assert "S3CRET" not in str(err.value) and "S3CRET" not in repr(client)
    with pytest.raises(OneError):
        client.tagged("1")


def test_bad_template_is_oneerror(one: OneClient) -> None:
    with pytest.raises(OneError) as err:
        one.allocate('NAME = "x"\nCPU = 0.1\nMEMORY = lots\n')
    assert "MEMORY" in err.value.message
    with pytest.raises(OneError):
        one.allocate('NAME = "x\n')


def test_endpoint_down_is_unavailable(sim: object, one: OneClient) -> None:
    _fault(sim, "onesim.sim.down", 1.0)
    with pytest.raises(OneUnavailable):
        one.version()
    assert _wait(lambda: _answers(one), "endpoint back", timeout=10)


def _answers(one: OneClient) -> bool:
    try:
        one.version()
        return True
    except OneUnavailable:
        return False


# --- broken endpoints (real sockets, no simulator needed) -----------------------------------------------

def test_nothing_listening_is_unavailable() -> None:
    client = OneClient(f"http://127.0.0.1:{free_port()}/RPC2", "u:p", timeout=2)
    with pytest.raises(OneUnavailable):
        client.version()
    with pytest.raises(OneUnavailable):
        client.pool()


def test_timeout_does_not_touch_the_global_socket_default() -> None:
    before = socket.getdefaulttimeout()
    OneClient(f"http://127.0.0.1:{free_port()}/RPC2", "u:p", timeout=3.5)
    assert socket.getdefaulttimeout() == before


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        mode = self.server.mode  # type: ignore[attr-defined]
        if mode == "hang":                   # answers only once the test let it go (or after 30 s)
            self.server.release.wait(30)  # type: ignore[attr-defined]
            self.server.answered.set()  # type: ignore[attr-defined]
        status, body = {"500": (500, b"boom"), "garbage": (200, b"<html>not xml-rpc"),
                        "hang": (200, b"")}.get(mode, (200, b""))
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout test)

    def log_message(self, *args: object) -> None:
        pass


_SERVED: dict[str, http.server.ThreadingHTTPServer] = {}


def _served(url: str) -> Any:
    """The test HTTP server behind `url` (with its `release` / `answered` events)."""
    return _SERVED[url]


@pytest.fixture
def http_endpoint() -> Iterator[Callable[[str], str]]:
    servers = []

    def start(mode: str) -> str:
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        srv.mode = mode  # type: ignore[attr-defined]
        srv.release, srv.answered = threading.Event(), threading.Event()  # type: ignore[attr-defined]
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        url = f"http://127.0.0.1:{srv.server_address[1]}/RPC2"
        _SERVED[url] = srv
        return url

    yield start
    for srv in servers:
        srv.release.set()  # type: ignore[attr-defined]
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("mode", ["500", "garbage"])
def test_http_errors_are_unavailable(http_endpoint: Callable[[str], str], mode: str) -> None:
    client = OneClient(http_endpoint(mode), "u:secret-pw", timeout=2)
    with pytest.raises(OneUnavailable) as err:
        client.info(1)
    assert "secret-pw" not in str(err.value)


def test_slow_endpoint_times_out(http_endpoint: Callable[[str], str]) -> None:
    """The client gives up on its own: its call fails while the endpoint has still not answered."""
    url = http_endpoint("hang")
    client = OneClient(url, "u:p", timeout=0.5)
    with pytest.raises(OneUnavailable, match="(?i)timed? ?out"):
        client.version()
    assert not _served(url).answered.is_set()


def test_bad_arguments_name_the_field() -> None:
    with pytest.raises(ValueError, match="proxy"):
        OneClient("127.0.0.1:2633", "u:p")
    with pytest.raises(ValueError, match="oneauth"):
        OneClient("http://127.0.0.1:2633/RPC2", "nocolon")
    with pytest.raises(ValueError, match="timeout"):
        OneClient("http://127.0.0.1:2633/RPC2", "u:p", timeout=0)


# --- VmView classification (pure) ----------------------------------------------------------------------

def _vm(state: int, lcm: int = 0) -> VmView:
    return VmView(vmid=1, name="n", state=state, lcm_state=lcm, ip=None, host=None, cpu=None, user_template={})


@pytest.mark.parametrize("state, lcm, prop, short", [
    (3, 3, "running", "runn"), (1, 0, "starting", "pend"), (3, 1, "starting", "prol"), (3, 2, "starting", "boot"),
    (3, 36, "failed", "fail"), (3, 39, "failed", "fail"), (11, 0, "failed", "fail"), (3, 16, "unknown", "unkn"),
    (3, 19, "unknown", "boot"), (8, 0, "stopped", "poff"), (4, 0, "stopped", "stop"), (6, 0, "gone", "done"),
    (3, 12, None, "shut"), (3, 11, None, "epil"), (2, 0, "starting", "hold"),
])
def test_vmview_classification(state: int, lcm: int, prop: str | None, short: str) -> None:
    vm = _vm(state, lcm)
    props = {p for p in ("running", "starting", "failed", "unknown", "stopped", "gone") if getattr(vm, p)}
    assert props == ({prop} if prop else set())
    assert vm.short_status() == short


def test_sched_message_is_only_for_a_pending_vm_and_loses_oneds_time_stamp() -> None:
    def vm(state: int, msg: str) -> VmView:
        return VmView(vmid=1, name="n", state=state, lcm_state=0, ip=None, host=None, cpu=None,
                      user_template={"SCHED_MESSAGE": msg})

    stamped = "Mon Nov 30 10:00:00 2026 : Cannot dispatch VM to any Host. Possible reasons: Not enough capacity"
    assert vm(1, stamped).sched_message() == "Cannot dispatch VM to any Host. Possible reasons: Not enough capacity"
    assert vm(1, "Cannot dispatch VM: No host meets SCHED_REQUIREMENTS").sched_message().endswith("REQUIREMENTS")
    assert vm(3, stamped).sched_message() == ""                          # placed: an old message means nothing
    assert _vm(1).sched_message() == ""
