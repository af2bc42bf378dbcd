"""The only module that talks to OpenNebula (pyone over XML-RPC).

Errors come out as two kinds: `OneUnavailable` (retry later: refused, timeout, HTTP or transport trouble) and
`OneError` (OpenNebula answered no: auth, bad template, wrong state...). The session string never appears in
an exception or a log line. pyone's own `timeout=` would change the process-wide socket default, so the
timeout is given to the HTTP transport instead.
"""

from __future__ import annotations

import decimal
import logging
import math
import time
import xml.parsers.expat
import xmlrpc.client
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import requests
import urllib3
from lxml import etree
from pyone.bindings.supbind import GDSParseError
from pyone.server_xrpc import OneServerXRPC, RequestsTransport

from config import metrics
from functions.cloud import fastxml

log = logging.getLogger("carina.one")

AUTHENTICATION, AUTHORIZATION, NO_EXISTS, ACTION = 0x100, 0x200, 0x400, 0x800
ALL_USERS, NOT_DONE = -2, -1
INFOSET_SLICE = 10_000     # VM ids per one.vmpool.infoset call of the minute refresh

# STATE and LCM_STATE short codes as `onevm list` prints them (the original parsed these).
_STATE_SHORT = {0: "init", 1: "pend", 2: "hold", 4: "stop", 5: "susp", 6: "done", 7: "fail", 8: "poff",
                9: "unde", 10: "clon", 11: "fail"}
_LCM_SHORT = {0: "init", 1: "prol", 2: "boot", 3: "runn", 4: "migr", 5: "save", 6: "save", 7: "save", 8: "migr",
              9: "prol", 10: "epil", 11: "epil", 12: "shut", 13: "shut", 14: "fail", 15: "clea", 16: "unkn",
              17: "hotp", 18: "shut", 19: "boot", 20: "boot", 21: "boot", 22: "boot", 23: "clea", 24: "snap",
              25: "hotp", 26: "hotp", 27: "hotp", 28: "hotp", 29: "shut", 30: "epil", 31: "prol", 32: "boot",
              33: "hotp", 34: "hotp", 35: "boot", 43: "migr", 45: "migr", 51: "snap", 52: "snap", 53: "snap",
              54: "snap", 56: "snap", 57: "snap", 59: "snap", 60: "migr", 62: "drsz", 63: "drsz", 64: "drsz",
              65: "hotp", 66: "hotp", 67: "hotp", 68: "hotp", 69: "back", 70: "back", 71: "rest"}
FAILURE_LCM = frozenset({14, 36, 37, 38, 39, 40, 41, 42, 44, 46, 47, 48, 49, 50, 61})
STARTING_LCM = frozenset({0, 1, 2, 9, 20, 21, 22, 31, 32})
UNKNOWN_LCM = frozenset({16, 19})


_PARSE_ERRORS = (GDSParseError, etree.XMLSyntaxError, decimal.InvalidOperation, IndexError, ValueError)


class OneUnavailable(Exception):
    """OpenNebula could not be reached or answered garbage; retry later."""


class OneError(Exception):
    """OpenNebula answered with an error (`code` is its error code, -1 for an XML-RPC fault)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"OpenNebula error 0x{code & 0xFFFFFFFF:x}: {message}" if code >= 0
                         else f"OpenNebula fault: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class VmView:
    """What Carina needs to know about one OpenNebula VM."""

    vmid: int
    name: str
    state: int
    lcm_state: int
    ip: str | None
    host: str | None
    cpu: float | None
    user_template: dict[str, str] = field(default_factory=dict)
    stime: int = 0

    @property
    def running(self) -> bool:
        return self.state == 3 and self.lcm_state == 3

    @property
    def starting(self) -> bool:
        return self.state in (0, 1, 2, 10) or (self.state == 3 and self.lcm_state in STARTING_LCM)

    @property
    def failed(self) -> bool:
        return self.state in (7, 11) or (self.state == 3 and self.lcm_state in FAILURE_LCM)

    @property
    def unknown(self) -> bool:
        return self.state == 3 and self.lcm_state in UNKNOWN_LCM

    @property
    def stopped(self) -> bool:
        return self.state in (4, 5, 8, 9)

    @property
    def gone(self) -> bool:
        return self.state == 6

    @property
    def pending(self) -> bool:
        return self.state == 1

    def sched_message(self) -> str:
        """Why OpenNebula's scheduler has not placed this PENDING VM yet (its SCHED_MESSAGE without the time
        stamp oned puts first, e.g. "Cannot dispatch VM: No host with enough capacity..."), or ''."""
        if not self.pending:
            return ""
        msg = self.user_template.get("SCHED_MESSAGE", "").strip()
        return msg.split(" : ", 1)[1].strip() if " : " in msg else msg

    def short_status(self) -> str:
        """The lowercase 4-letter code of `onevm list` (runn, pend, boot, fail, unkn, ...)."""
        if self.state == 3:
            return "fail" if self.lcm_state in FAILURE_LCM else _LCM_SHORT.get(self.lcm_state, "actv")
        return _STATE_SHORT.get(self.state, "unkn")


def _as_list(value: Any) -> list[Any]:
    """xmltodict gives a dict for one element and a list for several: always a list."""
    if value is None or value == "":
        return []
    return value if isinstance(value, list) else [value]


def _first_ip(template: Any) -> str | None:
    """The IP of the first NIC (or NIC_ALIAS) of a TEMPLATE dict, or None."""
    if not isinstance(template, dict):
        return None
    for key in ("NIC", "NIC_ALIAS"):
        for nic in _as_list(template.get(key)):
            if isinstance(nic, dict) and nic.get("IP"):
                return str(nic["IP"])
    return None


def _cpu(value: Any) -> float | None:
    """A monitored CPU figure, or None when absent or not a finite number (OpenNebula may send NaN)."""
    try:
        num = float(value) if value is not None else None
    except (TypeError, ValueError, decimal.InvalidOperation):
        return None
    return num if num is not None and math.isfinite(num) else None


def _last_host(vm: Any) -> str | None:
    records = getattr(vm, "HISTORY_RECORDS", None)
    history = getattr(records, "HISTORY", None) or []
    return str(history[-1].HOSTNAME) if history and history[-1].HOSTNAME else None


def _view(vm: Any, cpu: float | None) -> VmView:
    utmpl = vm.USER_TEMPLATE if isinstance(vm.USER_TEMPLATE, dict) else {}
    return VmView(
        vmid=int(vm.ID), name=str(vm.NAME or ""), state=int(vm.STATE if vm.STATE is not None else -1),
        lcm_state=int(vm.LCM_STATE or 0), ip=_first_ip(vm.TEMPLATE), host=_last_host(vm), cpu=cpu,
        user_template={str(k): str(v) for k, v in utmpl.items() if isinstance(v, str | int | float)},
        stime=int(getattr(vm, "STIME", None) or 0),
    )


def row_view(row: fastxml.VmRow) -> VmView:
    """A pool answer's row as a VmView (no name, host or CPU)."""
    return VmView(row.vmid, "", row.state, row.lcm_state, row.ip or None, None, None, row.user_template, row.stime)


class _TimedTransport(RequestsTransport):
    """pyone's requests transport with a per-request timeout (instead of a global socket default) and one
    requests.Session for the client's calls (building a session per call cost ~1.3 ms; a server that keeps
    connections alive is also spared a connect, and a TLS handshake, per call). No retries: a POST that failed
    may have been acted on (an allocate), so a failure is OneUnavailable as before."""

    def __init__(self, timeout: float, https: bool) -> None:
        super().__init__()
        self.timeout = timeout
        self.set_https(https)
        self.set_https_verify(True)
        self.session = requests.Session()

    def request(self, host: str, handler: str, request_body: bytes, verbose: bool = False) -> Any:
        url = self._build_url(host, handler)
        resp = self.session.post(url, data=request_body, headers=self.headers, verify=self.https_verify,
                                 timeout=self.timeout)
        if resp.status_code >= 400:
            raise xmlrpc.client.ProtocolError(url, resp.status_code, resp.reason, {})
        return self.parse_response(resp)


class _Server(OneServerXRPC):
    """OneServerXRPC with our transport and errors raised from the raw answer (keeping OpenNebula's code)."""

    def __init__(self, uri: str, session: str, timeout: float) -> None:
        super().__init__(uri, session)  # no timeout here: pyone would call socket.setdefaulttimeout()
        # Re-run the base ServerProxy setup with our transport; pyone's session and helpers stay as they are.
        xmlrpc.client.ServerProxy.__init__(self, uri, transport=_TimedTransport(timeout, uri.startswith("https")))

    def raw_request(self, method: str, params: tuple[Any, ...]) -> bytes:
        """POST one XML-RPC call; the HTTP answer's bytes (not parsed), read in one go (requests' `content` reads
        10 KB at a time: ~2.5 ms of CPU per MB of a pool answer). Transport trouble -> OneUnavailable."""
        transport: _TimedTransport = self._ServerProxy__transport  # type: ignore[attr-defined]
        url = transport._build_url(self._ServerProxy__host, self._ServerProxy__handler)  # type: ignore[attr-defined]
        try:
            with requests.post(url, data=xmlrpc.client.dumps(params, method).encode(), headers=transport.headers,
                               verify=transport.https_verify, timeout=transport.timeout, stream=True) as resp:
                if resp.status_code >= 400:
                    raise OneUnavailable(f"[{method}] HTTP {resp.status_code} {resp.reason}")
                return bytes(resp.raw.read(decode_content=True))
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise OneUnavailable(f"[{method}] {type(exc).__name__}: {exc}") from None

    def _do_request(self, method: str, params: Any) -> Any:
        try:
            raw = xmlrpc.client.ServerProxy._ServerProxy__request(self, method, params)  # type: ignore[attr-defined]
        except xmlrpc.client.Fault as exc:
            raise OneError(-1, f"[{method}] {exc.faultString}") from None
        except (requests.RequestException, xmlrpc.client.ProtocolError, OSError,
                xml.parsers.expat.ExpatError) as exc:
            raise OneUnavailable(f"[{method}] {type(exc).__name__}: {exc}") from None
        if not isinstance(raw, list | tuple) or len(raw) < 2:
            raise OneUnavailable(f"[{method}] malformed answer")
        if not raw[0]:
            code = int(raw[2]) if len(raw) > 2 and isinstance(raw[2], int) else -1
            raise OneError(code, str(raw[1]))
        if raw[1] == "":
            raise OneUnavailable(f"[{method}] empty answer")
        return raw


class OneClient:
    """A client for one OpenNebula endpoint. Cheap to build; each call is one HTTP request (or two)."""

    def __init__(self, proxy: str, session: str, timeout: float = 15.0) -> None:
        if not proxy.startswith(("http://", "https://")):
            raise ValueError("proxy: expected an http:// or https:// XML-RPC URL")
        if not session or ":" not in session:
            raise ValueError("oneauth: expected 'user:password'")
        if timeout <= 0:
            raise ValueError("timeout: must be positive")
        self.proxy = proxy
        self._endpoint = metrics.endpoint_label(proxy)
        self._session = session
        self._server = _Server(proxy, session, timeout)

    def __repr__(self) -> str:
        return f"OneClient({self.proxy!r})"

    def _call(self, method: str, *args: Any) -> Any:
        """Call `one.<method>`; parsing trouble becomes OneUnavailable; the session is scrubbed from errors.
        Each call's duration and failure kind go to the metrics (config/metrics.py)."""
        func = self._server
        for part in method.split("."):
            func = getattr(func, part)
        started, failed = time.monotonic(), None
        try:
            return func(*args)
        except (OneError, OneUnavailable) as exc:
            failed = "refused" if isinstance(exc, OneError) else "unavailable"
            raise self._scrub(exc) from None
        except _PARSE_ERRORS as exc:
            failed = "unparseable"
            log.warning("unparseable answer to one.%s: %s", method, type(exc).__name__)
            raise OneUnavailable(f"[one.{method}] unparseable answer: {type(exc).__name__}") from None
        finally:
            metrics.rpc_call(self._endpoint, method, time.monotonic() - started, failed)

    def _scrub(self, exc: OneError | OneUnavailable) -> OneError | OneUnavailable:
        if self._session not in str(exc):
            return exc
        if isinstance(exc, OneError):
            return OneError(exc.code, exc.message.replace(self._session, "***"))
        return OneUnavailable(str(exc).replace(self._session, "***"))

    def version(self) -> str:
        """OpenNebula's version string. Read-only."""
        return str(self._call("system.version"))

    def allocate(self, template: str) -> int:
        """Create a VM from template text (pending, not on hold); returns its id. NOT idempotent: tag VMs."""
        return int(self._call("vm.allocate", template, False))

    def info(self, vmid: int) -> VmView | None:
        """The VM, or None if OpenNebula has no such VM. Read-only."""
        try:
            vm = self._call("vm.info", int(vmid))
        except OneError as exc:
            if exc.code == NO_EXISTS:
                return None
            raise
        return _view(vm, _cpu(getattr(vm.MONITORING, "CPU", None) if vm.MONITORING is not None else None))

    def terminate(self, vmid: int, hard: bool = False) -> str | None:
        """Ask OpenNebula to terminate the VM. Safe to run twice: an absent VM is no error (None). A refusal in
        the VM's state (e.g. already shutting down) is returned as OpenNebula's message, not raised: the caller
        re-checks with info() and surfaces it."""
        try:
            self._call("vm.action", "terminate-hard" if hard else "terminate", int(vmid))
        except OneError as exc:
            if exc.code == NO_EXISTS:
                return None
            if exc.code == ACTION:
                log.info("terminate vm %s refused: %s", vmid, exc.message)
                return exc.message
            raise
        return None

    def pool(self) -> list[VmView]:
        """Every VM that is not DONE, all users, with the last monitored CPU. Read-only."""
        vms = self._call("vmpool.infoextended", ALL_USERS, -1, -1, NOT_DONE)
        mon = self._call("vmpool.monitoring", ALL_USERS, 0)
        cpu: dict[int, float] = {}
        for rec in getattr(mon, "MONITORING", None) or []:
            if rec.ID is not None and (value := _cpu(rec.CPU)) is not None:
                cpu[int(rec.ID)] = value
        return [_view(vm, cpu.get(int(vm.ID))) for vm in getattr(vms, "VM", None) or []]

    def views(self, vmids: Iterable[int]) -> dict[int, VmView]:
        """vmid -> VmView of these VMs, in one call (one.vmpool.infoset, full bodies with USER_TEMPLATE, no
        CPU); DONE VMs included, ids OpenNebula does not know absent. An OpenNebula without infoset (an
        XML-RPC fault) is asked for its whole extended pool instead. Read-only."""
        ids = sorted({int(v) for v in vmids})
        if not ids:
            return {}
        try:
            vms = self._call("vmpool.infoset", ",".join(map(str, ids)), True)
        except OneError as exc:
            if exc.code != -1:
                raise
            vms = self._call("vmpool.infoextended", ALL_USERS, -1, -1, NOT_DONE)
        wanted = set(ids)
        return {v.vmid: v for v in (_view(vm, None) for vm in getattr(vms, "VM", None) or []) if v.vmid in wanted}

    def observe(self, vmids: Iterable[int]) -> tuple[dict[int, VmView], dict[int, float]]:
        """`observe_rows` as (vmid -> view, vmid -> CPU of the VMs that have a figure). Read-only."""
        rows = self.observe_rows(vmids)
        return ({vmid: row_view(row) for vmid, row in rows.items()},
                {vmid: row.cpu for vmid, row in rows.items() if row.cpu is not None})

    def observe_rows(self, vmids: Iterable[int]) -> dict[int, fastxml.VmRow]:
        """What the minute tick needs of Carina's own VMs, from one.vmpool.infoset of exactly these ids with
        short bodies (ID, STATE, LCM_STATE, STIME and MONITORING/CPU of the last monitoring record; DONE VMs
        included, ids OpenNebula does not know absent), INFOSET_SLICE ids a call (an answer of 10,000 short
        bodies is ~19 MB: this bounds the memory a call takes): vmid -> row (`row_view` makes it a VmView).
        Read from the raw bytes (fastxml.short_rows), else lxml; not pyone (100k bodies a minute). No tags: see
        `owners`. Read-only."""
        ids = sorted({int(v) for v in vmids})
        out: dict[int, fastxml.VmRow] = {}
        for start in range(0, len(ids), INFOSET_SLICE):
            part = ids[start:start + INFOSET_SLICE]
            got = self._raw("vmpool.infoset", ",".join(map(str, part)), False,
                            quick=lambda body, ids=part: fastxml.short_rows(body, ids))
            rows = got if isinstance(got, list) else fastxml.vm_rows(got, part)
            out.update((row.vmid, row) for row in rows)
        return out

    def owners(self, vmids: Iterable[int]) -> dict[int, VmView]:
        """vmid -> VmView with USER_TEMPLATE (the ownership tags) and STIME of these VMs, one infoset call with
        full bodies parsed by lxml (no CPU); ids OpenNebula does not know absent. Read-only."""
        ids = sorted({int(v) for v in vmids})
        if not ids:
            return {}
        pool = self._raw("vmpool.infoset", ",".join(map(str, ids)), True)
        return {row.vmid: row_view(row) for row in fastxml.vm_rows(pool, ids, tags=True)}

    def _raw(self, method: str, *args: Any, quick: Callable[[bytes], Any] | None = None) -> Any:
        """Call `one.<method>` without pyone's bindings: the answer's XML as an lxml element, or what `quick`
        made of the answer's bytes when it made something (not None). Errors as `_call`."""
        started, failed = time.monotonic(), None
        try:
            body = self._server.raw_request(f"one.{method}", (self._session, *args))
            made = quick(body) if quick is not None else None
            if made is not None:
                return made
            fast = fastxml.ok_xml(body)
            if fast is not None:
                return fastxml.document(fast)
            ok, value, code = fastxml.envelope(body)
            if not ok:
                failed = "refused"
                raise self._scrub(OneError(code, value))
            return fastxml.document(value)
        except OneUnavailable as exc:
            failed = "unavailable"
            raise self._scrub(exc) from None
        except fastxml.ParseError as exc:
            failed = "unparseable"
            log.warning("unparseable answer to one.%s: %s", method, exc)
            raise OneUnavailable(f"[one.{method}] unparseable answer: {exc}") from None
        finally:
            metrics.rpc_call(self._endpoint, method, time.monotonic() - started, failed)

    def tagged(self, envid: str) -> list[VmView]:
        """Every non-DONE VM whose USER_TEMPLATE has CARINA_ENVID == envid (no CPU: one call, not two).

        Read-only. The extended pool is needed: short pool bodies drop custom USER_TEMPLATE attributes.
        """
        vms = self._call("vmpool.infoextended", ALL_USERS, -1, -1, NOT_DONE)
        views = [_view(vm, None) for vm in getattr(vms, "VM", None) or []]
        return [v for v in views if v.user_template.get("CARINA_ENVID") == str(envid)]
