"""No guest outlives its simulator: a watchdog process and a sweep of stray guest processes.

Every process guest runs with `MNT=<root>/vm-<id>/mnt` in its environment (onesim.guestlib.guest_env), where
<root> is the simulator's sandbox root (onesim.sandbox; the WORKDIR argument below). `sweep(root)` kills (SIGKILL,
whole process group) every process whose environment says so and that this user may see (all of them for root,
so guests running as the guest user too). `python -S -m onesim.reaper WORKDIR` waits for EOF on its stdin, then
sweeps: the simulator keeps the write end of that pipe open, so however it ends (a clean stop, a crash, SIGKILL),
its guests go with it. Standard library only (the watchdog runs without site-packages).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
GRACE_SECONDS = 0.3


def _marker(workdir: Path) -> bytes:
    return b"\0MNT=" + os.fsencode(str(Path(workdir).resolve())) + b"/vm-"


def _guest_processes(marker: bytes) -> list[tuple[int, int]]:
    """(pid, process group) of every readable process whose environment carries `marker`."""
    found = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                env = b"\0" + fh.read()
            if marker not in env:
                continue
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
            found.append((int(name), int(stat[stat.rindex(b")") + 2:].split()[2])))
        except (OSError, ValueError, IndexError):
            continue  # gone, or not ours
    return found


def sweep(workdir: Path) -> int:
    """SIGKILL every guest process (and its process group) of the simulator using `workdir`.
    Returns how many processes were found. Safe to run twice; touches nothing else."""
    found = _guest_processes(_marker(workdir))
    own_group = os.getpgrp()
    for pid, pgid in found:
        for kill, target in ((os.killpg, pgid), (os.kill, pid)):
            if kill is os.killpg and pgid in (own_group, 0, 1):
                continue
            try:
                kill(target, signal.SIGKILL)
            except OSError:
                pass
    return len(found)


def start_watchdog(workdir: Path) -> subprocess.Popen[bytes] | None:
    """Start `python -S -m onesim.reaper WORKDIR` in its own session; the caller keeps its stdin open for as long
    as guests may run and closes it at stop. None (with a warning) if it cannot start."""
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT))
    try:
        return subprocess.Popen([sys.executable, "-S", "-m", "onesim.reaper", str(workdir)], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, env=env, cwd="/", start_new_session=True)
    except OSError as exc:
        print(f"onesim: no guest watchdog ({exc}): guests may outlive a crashed simulator", file=sys.stderr)
        return None


def main(argv: list[str]) -> int:
    """Block until stdin reaches EOF, then sweep argv[0]'s guests."""
    if len(argv) != 1:
        print("usage: python -m onesim.reaper WORKDIR", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the end of the simulator ends the watchdog
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while sys.stdin.buffer.read(4096):
        pass
    time.sleep(GRACE_SECONDS)  # after a clean stop the simulator's own kills are still landing
    count = sweep(Path(argv[0]))
    if count:
        print(f"onesim reaper: killed {count} guest process(es) left by a stopped simulator", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
