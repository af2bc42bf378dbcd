"""`GET /cgi-bin/...`: status callbacks made by `wget` inside VMs (no bearer token: a per-VM token instead).

Accepted forms (any parameter order; parameters may sit in the path after `&` and in the query string):
  /cgi-bin/updatevmstatus.sh?service=S&vmid=V&envid=E&newip=IP&name=H[&hostkey=K][&token=T]
  /cgi-bin/updateappstatus.sh?service=S&vmid=V&envid=E&status=ST[&token=T]
  /cgi-bin/S&vmid=V&envid=E&status=ST   and   /cgi-bin/S&vmid=V&envid=E&newip=IP&name=H   (the guide's form)
The route validates, authorizes (functions.ops.callbacks.find_caller), throttles (a token bucket per VM:
settings.callback_rate a minute, callback_burst at once; beyond it 429 JSON with Retry-After and nothing queued),
appends the callback to the environment's inbox (queueing a drain job, functions.tasks.drain_callbacks, only when
none is pending: functions.ops.cbinbox) and answers "OK". A report with the same values as the VM's last queued
report of its kind is answered "OK (duplicate: not queued again)" and not queued: the in-VM wget scripts only need
a 2xx. Redis round trips per accepted callback: one (callbacks.ingest) for a VM whose record this gateway process
read before (functions.ops.cbroster; ingest re-checks that record), else two (cbroster.lookup first), plus the
enqueue of a drain when none was pending.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from urllib.parse import unquote, unquote_plus

import falcon

from config import logs, metrics
from functions.model import hostkeys
from functions.ops import callbacks, cbinbox, cbroster
from handlers.deps import Deps

SCRIPTS = {"updatevmstatus.sh": "net", "updateappstatus.sh": "status"}
KNOWN = frozenset({"service", "vmid", "envid", "status", "newip", "name", "hostkey", "token"})
_PATTERNS = {
    "vmid": re.compile(r"[0-9]{1,10}"),
    "envid": re.compile(r"[0-9]{1,18}"),
    "service": re.compile(r"[A-Za-z0-9_-]{1,64}"),
    "status": re.compile(r"[A-Za-z0-9_:.@-]{1,128}"),
    "token": re.compile(r"[A-Za-z0-9_-]{1,128}"),
    # A host name; `_` is allowed because OpenNebula VM names (<env>-m) may carry it.
    "name": re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                       r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"),
}
# Dotted-quad IPv4 (each octet 0-255 without a leading zero): a subset of what ipaddress.ip_address accepts, checked
# first because it is ~10x cheaper; anything else goes to ipaddress.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")
_HINTS = {"vmid": "digits", "envid": "digits", "service": "A-Z a-z 0-9 _ -",
          "status": "1-128 characters of A-Z a-z 0-9 _ : . @ -", "token": "the VM's CARINA_TOKEN (base64url)",
          "name": "a host name"}


def _bad(field_name: str, what: str) -> falcon.HTTPBadRequest:
    return falcon.HTTPBadRequest(title="Invalid callback", description=f"{field_name}: {what}")


@dataclass
class CallbackRequest:
    """A parsed, validated callback."""

    kind: str
    envid: str
    vmid: int
    params: dict[str, str] = field(default_factory=dict)

    @property
    def fields(self) -> dict[str, str]:
        """What apply_callback records: newip (+ name, hostkey) or status."""
        keys = ("newip", "name", "hostkey") if self.kind == "net" else ("status",)
        return {k: self.params[k] for k in keys if k in self.params}


def _pairs(text: str, params: dict[str, str], query: bool = False) -> None:
    """Merge `k=v&k=v` pieces into params (values %-decoded; in the query string `+` is a space, as forms and
    HTTP clients encode it); a key repeated with another value is a 400."""
    decode = unquote_plus if query else unquote
    encoded = "%" in text or (query and "+" in text)      # else decoding changes nothing
    for piece in text.split("&"):
        if not piece:
            continue
        key, sep, value = piece.partition("=")
        if encoded:
            key, value = decode(key), decode(value)
        if not sep:
            raise _bad(key[:32], "expected key=value")
        if key in params and params[key] != value:
            raise _bad(key[:32], "given twice with different values")
        params[key] = value


def _kind(head: str, params: dict[str, str]) -> str:
    if head in SCRIPTS:
        return SCRIPTS[head]
    if head.endswith(".sh"):
        raise falcon.HTTPNotFound(title="Not found", description=f"no callback script {head[:64]!r}")
    if not _PATTERNS["service"].fullmatch(head):
        raise _bad("service", f"must be {_HINTS['service']}")
    if params.setdefault("service", head) != head:
        raise _bad("service", "given twice with different values")
    if "status" in params:
        return "status"
    if "newip" in params:
        return "net"
    raise _bad("status", "missing (or newip and name)")


def _validate(kind: str, params: dict[str, str]) -> None:
    required = ["vmid", "envid", "status" if kind == "status" else "newip"]
    for name in required:
        if not params.get(name):
            raise _bad(name, "missing")
    for name, pattern in _PATTERNS.items():
        if name in params and not pattern.fullmatch(params[name]):
            raise _bad(name, f"must be {_HINTS[name]}")
    if kind == "net" and not _IPV4.fullmatch(params["newip"]):
        try:
            ipaddress.ip_address(params["newip"])
        except ValueError:
            raise _bad("newip", "must be an IPv4 or IPv6 address") from None
    if "hostkey" in params:
        try:
            params["hostkey"] = hostkeys.normalise(params["hostkey"])
        except hostkeys.BadHostKey as exc:
            raise _bad("hostkey", f"{exc} (the VM's /etc/ssh/ssh_host_ed25519_key.pub line)") from None


def parse_callback(script: str, query: str) -> CallbackRequest:
    """Parse and validate a callback from the path segment after /cgi-bin/ and the raw query string.

    Raises HTTPBadRequest naming the field, or HTTPNotFound for an unknown `*.sh` script.
    """
    head, _, rest = script.partition("&")
    params: dict[str, str] = {}
    _pairs(rest, params)
    _pairs(query or "", params, query=True)
    # An empty name= or token= counts as not given (a VM whose context lacks the variable sends it empty).
    params = {k: v for k, v in params.items() if k in KNOWN and (v or k not in ("name", "token", "hostkey"))}
    kind = _kind(unquote(head), params)
    _validate(kind, params)
    return CallbackRequest(kind=kind, envid=params["envid"], vmid=int(params["vmid"]), params=params)


class Callback:
    """GET /cgi-bin/{script}: validate, authorize, append to the env's callback inbox, answer "OK"."""

    auth_exempt = True

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response, script: str) -> None:
        try:
            cb = parse_callback(script, req.query_string)
        except falcon.HTTPError:
            metrics.callback("invalid")
            raise
        resp.content_type = falcon.MEDIA_TEXT
        token = cb.params.get("token")
        known = callbacks.known_caller(self.deps.redis, cb.envid, cb.vmid, token) if token else None
        if known is not None and self._fits(cb, *known):           # a VM this process knows: one round trip
            logs.bind(envid=cb.envid, service=known[0])
            answer = self._queue({"envid": cb.envid, "service": known[0]}, cb, known[1], recheck=True)
            if answer is not None:
                resp.text = answer
                return
            cbroster.forget(cb.envid, cb.vmid)
        env, caller = self._authorize(req, cb)
        resp.text = self._queue(env, cb, caller) or ""

    @staticmethod
    def _fits(cb: CallbackRequest, service: str, caller: callbacks.Caller) -> bool:
        """The remembered caller may send this callback as it is (else the full check says why not)."""
        status = cb.params.get("status") or ""
        return cb.params.get("service", service) == service and not (
            status.startswith("MASTER_INIT") and caller.role != "master")

    def _authorize(self, req: falcon.Request, cb: CallbackRequest) -> tuple[dict, callbacks.Caller]:
        """The environment ({envid, service}) and the caller, or the 404/403 (recorded as a refusal)."""
        r = self.deps.redis
        found = cbroster.lookup(r, cb.envid, cb.vmid)
        if found.service is None:
            metrics.callback("invalid")
            raise falcon.HTTPNotFound(title="Not found", description=f"envid: no environment {cb.envid}")
        env = {"envid": cb.envid, "service": found.service}
        logs.bind(envid=cb.envid, service=found.service)
        try:
            if cb.params.get("service", found.service) != found.service:
                raise callbacks.CallbackRefused(404, f"envid: no environment {cb.envid} for that service")
            return env, callbacks.find_caller(r, env, cb.vmid, cb.params.get("token"), cb.params.get("status"),
                                              self.deps.settings.legacy_callbacks, req.remote_addr, found.records)
        except callbacks.CallbackRefused as exc:
            recorded = callbacks.record_refused(r, env, cb.params, exc.message, self.deps.clock)
            metrics.callback("refused" if recorded else "throttled")
            if exc.http_status == 404:
                raise falcon.HTTPNotFound(title="Not found", description=exc.message) from None
            raise falcon.HTTPForbidden(title="Callback refused", description=exc.message) from None

    def _queue(self, env: dict, cb: CallbackRequest, caller: callbacks.Caller, recheck: bool = False) -> str | None:
        """Append the callback to the env's inbox unless the VM is throttled (429) or repeats itself (and queue a
        drain if none is pending); the answer's text. None (only with `recheck`): the caller's record changed,
        nothing was done."""
        r, settings = self.deps.redis, self.deps.settings
        rate, burst = settings.callback_rate, settings.callback_burst
        fields = cb.fields
        if not caller.by_token:
            fields.pop("hostkey", None)            # only a token-proven VM may name its host key
        gate = callbacks.ingest(r, cb.envid, caller, cb.vmid, cb.kind, fields, self.deps.clock(), rate, burst,
                                recheck=recheck)
        if gate.verdict == "recheck":
            return None
        if gate.verdict == "throttled":
            if gate.note:
                callbacks.record_throttled(r, env, cb.vmid, caller, rate, burst, self.deps.clock)
            wait = max(1, math.ceil(gate.retry_after))
            metrics.callback("throttled")
            raise falcon.HTTPTooManyRequests(
                title="Too many callbacks", retry_after=wait,
                description=f"vmid: VM {cb.vmid} sends more than {rate} callbacks a minute (burst {burst}); "
                            f"nothing was queued, retry in {wait} s")
        if gate.verdict == "duplicate":
            return "OK (duplicate: not queued again)"
        if gate.drain:
            cbinbox.enqueue_drain(self.deps.queue, cb.envid)
        metrics.callback("accepted")
        return "OK"


def add_routes(app: falcon.App, deps: Deps) -> None:
    """Register GET /cgi-bin/{script}."""
    app.add_route("/cgi-bin/{script}", Callback(deps))
