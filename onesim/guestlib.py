"""Helpers for simulated guests: fetching context files, names, environment, the standard callbacks.

Plain functions (no processes, no sockets besides HTTP GETs), used by onesim.guests.
"""

from __future__ import annotations

import os
import re
import secrets
import urllib.request
from pathlib import Path
from urllib.parse import quote, unquote, urlencode, urlsplit

MODES = ("process", "synthetic", "none")
FETCH_TIMEOUT = 10.0
FETCH_MAX_BYTES = 16 * 1024 * 1024
EXEC_TIMEOUT = 600.0
CALLBACK_ATTEMPTS = 3
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*\Z")
USER_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}\Z")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # guests talk to the gateway directly


class GuestError(Exception):
    """Bad guest content (a URL, a file name, a user name); logged, never raised out of the manager."""


def http_get(url: str, timeout: float = FETCH_TIMEOUT, limit: int = FETCH_MAX_BYTES) -> bytes:
    """GET an http(s) URL and return the body. Raises GuestError (bad URL) or OSError (network, HTTP status)."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise GuestError(f"only http and https URLs are fetched, not {url!r}")
    with _OPENER.open(url, timeout=timeout) as resp:  # noqa: S310 (scheme checked above)
        data = resp.read(limit + 1)
    if len(data) > limit:
        raise GuestError(f"{url} is larger than {limit} bytes")
    return data


def file_name(url: str) -> str | None:
    """The context-CD file name of a FILES URL (its last path segment); None for a URL ending in `/`.

    Raises GuestError for a name that is not a plain file name.
    """
    path = urlsplit(url).path
    if not path or path.endswith("/"):
        return None
    name = unquote(path.rsplit("/", 1)[-1])
    if not SAFE_NAME.match(name):
        raise GuestError(f"FILES: {url!r} does not end in a plain file name")
    return name


def guest_user(context: dict[str, str]) -> str:
    """CONTEXT DEFUSER (else root). Raises GuestError for a name that is not a plain user name."""
    user = context.get("DEFUSER") or "root"
    if not USER_NAME.match(user):
        raise GuestError(f"DEFUSER: {user!r} is not a valid user name")
    return user


def guest_env(context: dict[str, str], home: Path, mnt: Path, user: str) -> dict[str, str]:
    """The guest's environment: every CONTEXT attribute with a valid name, plus HOME, PATH, MNT, USER, SHELL."""
    env = {k: v for k, v in context.items() if ENV_NAME.match(k) and "\0" not in v}
    env.update(HOME=str(home), PATH="/usr/bin:/bin", MNT=str(mnt), USER=user, LOGNAME=user, SHELL="/bin/sh")
    return env


def is_master(context: dict[str, str]) -> bool:
    """CARINA_ROLE decides when present; without it a VM with no SLAVE_ID is the master (as the guide's scripts)."""
    role = context.get("CARINA_ROLE", "")
    return role == "master" if role else "SLAVE_ID" not in context


def callback_urls(context: dict[str, str], vmid: int, ip: str, hostkey: str = "") -> list[str]:
    """The two standard callbacks a healthy guest makes: updatevmstatus (with its SSH host key, if given), then
    updateappstatus *_INIT_DONE.

    Raises GuestError when CONTEXT has no CARINA_IP.
    """
    host = context.get("CARINA_IP", "")
    if not host:
        raise GuestError("CARINA_IP: missing from CONTEXT, no callbacks possible")
    status = "MASTER_INIT_DONE" if is_master(context) else f"SLAVE_{context.get('SLAVE_ID', '')}_INIT_DONE"
    common = [("service", context.get("SERVICE_NAME", "")), ("vmid", context.get("VMID") or str(vmid)),
              ("envid", context.get("ENVID", ""))]
    token = [("token", context.get("CARINA_TOKEN", ""))]
    net = common + [("newip", context.get("IP") or ip), ("name", context.get("HOSTNAME", ""))]
    net += ([("hostkey", hostkey)] if hostkey else []) + token
    app = common + [("status", status)] + token
    base = f"http://{host}/cgi-bin"
    return [f"{base}/updatevmstatus.sh?{urlencode(net, quote_via=quote)}",
            f"{base}/updateappstatus.sh?{urlencode(app, quote_via=quote)}"]


def authorized_key_url(context: dict[str, str]) -> str | None:
    for url in context.get("FILES", "").split():
        if urlsplit(url).path.rsplit("/", 1)[-1] == "authorized_keys":
            return url
    return None


def exit_status(code: int) -> int:
    """A Popen return code as a shell reports it (killed by signal N -> 128 + N)."""
    return 128 - code if code < 0 else code


def host_key_seed(path: Path) -> bytes:
    """A 32-byte secret kept in `path` (created once, mode 0600): synthetic host keys derive from it, so they
    survive a simulator restart. Safe to run twice."""
    try:
        seed = path.read_bytes()
        if len(seed) == 32:
            return seed
    except FileNotFoundError:
        pass
    seed = secrets.token_bytes(32)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
        fh.write(seed)
    tmp.replace(path)
    return seed
