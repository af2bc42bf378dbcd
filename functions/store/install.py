"""This installation's identity and secrets: the HMAC key of VM callback tokens, the installation id (carried
by every VM it creates) and the SSH host keys pinned per VM incarnation. Key names from functions/store/keys.py;
`r` is always a decode_responses client.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import redis

from functions.store import keys


def pinned_hostkey(r: redis.Redis, pin: str) -> str | None:
    """The host key pinned for VM incarnation `pin` (vmops.pin_id), or None. Read-only."""
    return r.hget(keys.hostkeys(), pin)


def pin_hostkey(r: redis.Redis, pin: str, key: str) -> str:
    """Pin `key` for the VM incarnation unless one is pinned already; returns the key now pinned."""
    r.hsetnx(keys.hostkeys(), pin, key)
    return r.hget(keys.hostkeys(), pin) or key


def forget_hostkey(r: redis.Redis, pin: str) -> None:
    r.hdel(keys.hostkeys(), pin)


def callback_secret(r: redis.Redis) -> bytes:
    """The HMAC key for VM callback tokens, created on first use (same for every process)."""
    r.set(keys.callback_secret(), secrets.token_hex(32), nx=True)
    return bytes.fromhex(r.get(keys.callback_secret()) or "")


INSTALL_FILE = "install.id"


def known_installation_id(r: redis.Redis) -> str | None:
    """The installation id if one was made (every VM created since carries it), else None. Read-only."""
    value = r.get(keys.install_id())
    return str(value) if value else None


def installation_id(r: redis.Redis, home: Path) -> str:
    """This installation's id, made once and kept in Redis and in `home`/install.id (so a Redis reset keeps
    it, and a new CARINA_HOME with the old Redis too). Safe to run twice, from any process."""
    stored = r.get(keys.install_id())
    if stored:
        return str(stored)
    path = Path(home) / INSTALL_FILE
    try:
        candidate = path.read_text().strip()
    except OSError:
        candidate = ""
    r.set(keys.install_id(), candidate or secrets.token_hex(8), nx=True)
    chosen = str(r.get(keys.install_id()))
    if candidate != chosen:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(chosen + "\n")
        tmp.replace(path)
    return chosen
