"""Carina's Redis password: generated once into $CARINA_HOME/redis.pass (mode 0600, CARINA_HOME mode 0700).

Whoever needs it first creates it (the Procfile's redis line, the gateway, a worker, the scheduler,
carina-admin): the file is written under a unique temporary name (O_CREAT|O_EXCL) and then hard-linked into
place, so it appears complete or not at all and exactly one writer wins a race; everybody then reads the
winner's password. `python -m config.redisauth CARINA_HOME` (the Procfile's redis line) also writes
$CARINA_HOME/redis-auth.conf (`requirepass ...`, mode 0600) for redis-server to include, so the password is
never on a command line, and prints that file's absolute path. Standard library only.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import time
from pathlib import Path

PASSWORD_FILE = "redis.pass"  # noqa: S105 (a file name)
AUTH_CONF = "redis-auth.conf"
READ_ATTEMPTS = 40           # x READ_PAUSE: how long a reader waits for a password file that is still empty
READ_PAUSE = 0.05
PASSWORD = re.compile(r"[A-Za-z0-9._~+/=-]{16,512}\Z")   # no spaces, quotes or backslashes: safe in redis.conf


def ensure_private_dir(path: Path) -> Path:
    """Create a directory (CARINA_HOME, the simulator's workdir) and its parents with mode 0700; an existing one
    owned by this user loses any group/other access. Returns `path`. Safe to run twice, from several processes."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        path.chmod(0o700)
    return path


def create_once(path: Path, data: bytes) -> bool:
    """Write `data` to `path` (mode 0600) unless `path` exists. True if this call created it.

    The data goes to a unique temporary file first (O_CREAT|O_EXCL, fsynced), which is then hard-linked to
    `path`: a reader never sees a partial file, and of several concurrent callers exactly one wins."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
    finally:
        tmp.unlink(missing_ok=True)


def _tighten(path: Path) -> None:
    """A secret file of ours readable by others (copied in by hand, say) is made 0600."""
    st = path.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        path.chmod(0o600)


def redis_password(home: Path) -> str:
    """The password in `home`/redis.pass, created (64 hex digits) if missing, with `home` made 0700.

    Safe to run twice and concurrently. Raises ValueError naming the file when it holds no usable password."""
    path = home / PASSWORD_FILE
    for _ in range(READ_ATTEMPTS):
        try:
            text = path.read_text(encoding="ascii", errors="replace").strip()
        except FileNotFoundError:
            ensure_private_dir(home)
            create_once(path, (secrets.token_hex(32) + "\n").encode("ascii"))
            continue
        if text:
            if not PASSWORD.match(text):
                raise ValueError(f"{path}: not a usable Redis password (16-512 characters, no spaces, quotes "
                                 "or backslashes)")
            _tighten(path)
            return text
        time.sleep(READ_PAUSE)  # written by hand and still empty: give its writer a moment
    raise ValueError(f"{path}: empty; delete it and a new password is generated")


def auth_conf(home: Path) -> Path:
    """Write `home`/redis-auth.conf (`requirepass <password>`, mode 0600) from redis.pass (created if missing)
    unless it already says so. Returns its path. Safe to run twice; concurrent writers write the same text."""
    password = redis_password(home)
    path = home / AUTH_CONF
    text = f"# generated from {PASSWORD_FILE}; rewritten at each start of redis\nrequirepass {password}\n"
    try:
        if path.read_text(encoding="ascii", errors="replace") == text:
            _tighten(path)
            return path
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def main(argv: list[str]) -> int:
    """`python -m config.redisauth CARINA_HOME`: make sure the password and redis-auth.conf exist in CARINA_HOME
    (created, mode 0700, if missing); print the conf's absolute path."""
    if len(argv) != 1 or not argv[0]:
        print("usage: python -m config.redisauth CARINA_HOME", file=sys.stderr)
        return 2
    try:
        print(auth_conf(Path(argv[0]).resolve()))
    except (OSError, ValueError) as exc:
        print(f"carina: Redis password: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
