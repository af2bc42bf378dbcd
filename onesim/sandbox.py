"""Where process guests live and as whom they run: kept out of the controller's state.

A tenant's context script runs as a local process. So that it can reach neither Redis' files nor the simulator's
own state, guests run as a separate unprivileged user (`carina-guest`, ONESIM_GUEST_USER; `make setup` creates
it when run as root) and live OUTSIDE CARINA_HOME, under a sandbox root:
- ONESIM_GUEST_ROOT when set (vm-<id>/ directly under it), else
- /var/tmp/onesim-guests-<uid>/<cloud id>, where the cloud id is a random name kept in <workdir>/guests.id:
  the same workdir finds its sandboxes again after a restart, a new or wiped workdir (--fresh, a deleted
  CARINA_HOME) gets fresh ones. A sandbox root whose cloud.id names another cloud has its vm-* dirs removed.
When the simulator is not root, or the user does not exist, guests run as the simulator's own user (a log warning
says so): then the sandbox is a directory, not a security boundary. Standard library only.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("onesim.guests")

GUEST_USER = "carina-guest"
ID_FILE = "guests.id"          # in the simulator's workdir: names this cloud's sandbox root
MARKER = "cloud.id"            # in the sandbox root: whose sandboxes these are
BASE = Path("/var/tmp")  # noqa: S108 (our own per-uid directory, checked: owner, mode, no symlink)
_ID = re.compile(r"[0-9a-f]{16}\Z")
_VM_DIR = re.compile(r"vm-[0-9]+\Z")


class SandboxError(ValueError):
    """The sandbox root cannot be used safely (someone else's directory, writable by others, a symlink)."""


@dataclass(frozen=True)
class GuestUser:
    """Who guest processes run as: `uid`/`gid` set when isolated, else None and `reason` says why not."""

    name: str
    uid: int | None = None
    gid: int | None = None
    reason: str = ""

    @property
    def isolated(self) -> bool:
        return self.uid is not None

    def popen_kwargs(self) -> dict[str, Any]:
        """subprocess.Popen arguments that start a process as this user, with no supplementary groups."""
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def guest_user(env: dict[str, str] | None = None) -> GuestUser:
    """The guest user (ONESIM_GUEST_USER, default carina-guest) if this process can switch to it."""
    env = os.environ if env is None else env
    name = env.get("ONESIM_GUEST_USER") or GUEST_USER
    if os.geteuid() != 0:
        return GuestUser(name, reason=f"the simulator is not root, so it cannot run guests as {name}")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return GuestUser(name, reason=f"user {name} does not exist (`make setup` as root creates it)")
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        return GuestUser(name, reason=f"user {name} is root or in group root")
    return GuestUser(name, entry.pw_uid, entry.pw_gid)


def cloud_id(workdir: Path) -> str:
    """The random id of the cloud kept in `workdir` (created once in <workdir>/guests.id). Safe to run twice."""
    path = Path(workdir) / ID_FILE
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
        if _ID.match(text):
            return text
    except FileNotFoundError:
        pass
    new = secrets.token_hex(8)
    tmp = path.with_name(f".{ID_FILE}.{os.getpid()}.tmp")
    tmp.write_text(new + "\n", encoding="ascii")
    tmp.replace(path)
    return new


def sandbox_root(workdir: Path, env: dict[str, str] | None = None) -> Path:
    """The directory holding the vm-<id> sandboxes of the cloud in `workdir` (absolute; nothing is created but
    guests.id)."""
    env = os.environ if env is None else env
    if env.get("ONESIM_GUEST_ROOT"):
        return Path(env["ONESIM_GUEST_ROOT"]).resolve()
    return BASE / f"onesim-guests-{os.geteuid()}" / cloud_id(workdir)


def _own_dir(path: Path, mode: int) -> None:
    """Create `path` with `mode`, or check an existing one: a real directory of this user, not writable by
    others (else SandboxError); its mode is then set to `mode`."""
    try:
        path.mkdir(mode=mode)
    except FileExistsError:
        pass
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise SandboxError(f"{path}: not a directory of uid {os.geteuid()} closed to others; refusing to put "
                           "guest sandboxes there (remove it, or set ONESIM_GUEST_ROOT)")
    if stat.S_IMODE(st.st_mode) != mode:
        path.chmod(mode)


def _untraversable(root: Path) -> list[str]:
    return [str(p) for p in root.parents if p.exists() and not p.stat().st_mode & 0o001]


def prepare_root(workdir: Path, root: Path, user: GuestUser) -> list[str]:
    """Create the sandbox root (mode 0711 when guests run as another user, else 0700), drop the sandboxes of
    another cloud, move sandboxes of the old layout (<workdir>/vm-*) in. Returns warnings (the guest user cannot
    reach the root). Raises SandboxError (unsafe directory). Safe to run twice."""
    mode = 0o711 if user.isolated else 0o700
    if root.parent == BASE / f"onesim-guests-{os.geteuid()}":
        _own_dir(root.parent, mode)
    else:
        root.parent.mkdir(parents=True, exist_ok=True)
    _own_dir(root, mode)
    me = cloud_id(workdir)
    marker = root / MARKER
    owner = marker.read_text(encoding="ascii", errors="replace").strip() if marker.is_file() else None
    if owner != me:
        for path in root.iterdir():
            if _VM_DIR.match(path.name) and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
        for path in Path(workdir).iterdir():      # sandboxes kept inside CARINA_HOME before guests moved out
            if _VM_DIR.match(path.name) and path.is_dir() and not path.is_symlink():
                shutil.move(str(path), str(root / path.name))
        marker.write_text(me + "\n", encoding="ascii")
    return [f"guest user {user.name} cannot traverse {p}" for p in _untraversable(root)] if user.isolated else []


def forget(workdir: Path, env: dict[str, str] | None = None) -> None:
    """Remove the sandboxes of the cloud in `workdir` (what --fresh discards): the whole default root, or the
    vm-* dirs of ONESIM_GUEST_ROOT. Safe to run twice."""
    env = os.environ if env is None else env
    if not (Path(workdir) / ID_FILE).is_file() and not env.get("ONESIM_GUEST_ROOT"):
        return
    root = sandbox_root(workdir, env)
    if env.get("ONESIM_GUEST_ROOT"):
        for path in root.glob("vm-*"):
            if _VM_DIR.match(path.name) and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
        (root / MARKER).unlink(missing_ok=True)
    else:
        shutil.rmtree(root, ignore_errors=True)


def hand_over(home: Path, user: GuestUser) -> None:
    """Give a guest's home directory (and what is in it) to the guest user, mode 0700; the sandbox directories
    above it stay the simulator's, readable by the guest (0755). No-op when guests are not isolated. Safe to run
    twice; symlinks are never followed."""
    if user.uid is None or user.gid is None:
        return
    for directory in (home.parent.parent, home.parent, home.parent.parent / "mnt"):
        directory.chmod(0o755)
    st = home.lstat()
    if st.st_uid != user.uid:                  # first isolated boot of this sandbox: hand over what is inside
        for parent, dirs, files in os.walk(home):
            for name in dirs + files:
                os.chown(os.path.join(parent, name), user.uid, user.gid, follow_symlinks=False)
        os.chown(home, user.uid, user.gid, follow_symlinks=False)
    home.chmod(0o700)


def open_sandboxes(workdir: Path, guest_root: Path | None = None) -> tuple[GuestUser, Path]:
    """At start in process mode: find the guest user and the sandbox root (`guest_root`, else sandbox_root), kill
    guests an earlier run left there, prepare the root, say (log) whether guests are isolated. Raises
    SandboxError (a ValueError) for an unsafe root. Safe to run twice."""
    from onesim.reaper import sweep

    runas = guest_user()
    root = Path(guest_root).resolve() if guest_root else sandbox_root(workdir)
    left = sweep(root)  # guests of an earlier run whose watchdog did not get to them
    if left:
        log.warning("killed %d guest process(es) left by an earlier run in %s", left, root)
    for problem in prepare_root(workdir, root, runas):
        log.warning("guests: %s", problem)
    if runas.isolated:
        log.info("guests run as %s (uid %s) in %s", runas.name, runas.uid, root)
    else:
        log.warning("guests are NOT isolated: %s; their context scripts run as this simulator's user and can "
                    "read what it reads (CARINA_HOME, Redis' password); sandboxes in %s", runas.reason, root)
    return runas, root
