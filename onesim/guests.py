"""Guests of the simulated cloud: what runs "inside" a VM once it reaches RUNNING.

Modes (one per simulator run):
- `process`: the VM really runs as a sandboxed local process tree: CONTEXT `FILES` are fetched over HTTP into
  `<sandbox root>/vm-<id>/mnt`, CONTEXT attributes become environment variables, `INIT_SCRIPTS` run with /bin/sh,
  and the guest answers SSH on (its IP, ssh_port) by running commands in its sandbox.
- `synthetic`: no processes; the manager makes the standard callbacks itself and answers SSH with exit 0.
- `none`: nothing.
Guest processes (init scripts and SSH commands alike) run as the unprivileged guest user with a clean environment,
in sandboxes outside CARINA_HOME (onesim.sandbox); a simulator that cannot switch users says so at start.
Each guest process runs in its own process group and is killed when its VM leaves RUNNING or the simulator
stops; a watchdog process (onesim.reaper) kills what is left if the simulator dies without stopping them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paramiko

from onesim.guestlib import (
    CALLBACK_ATTEMPTS,
    EXEC_TIMEOUT,
    MODES,
    SAFE_NAME,
    GuestError,
    authorized_key_url,
    callback_urls,
    exit_status,
    file_name,
    guest_env,
    guest_user,
    host_key_seed,
    http_get,
)
from onesim.reaper import start_watchdog
from onesim.sandbox import GuestUser, hand_over, open_sandboxes
from onesim.sshd import (
    Endpoint,
    ExecResult,
    SshServer,
    generate_host_key,
    key_in_authorized_keys,
    load_host_key,
    public_line,
)

log = logging.getLogger(__name__)
HOST_KEY_SEED_FILE = "synthetic-hostkey.seed"


class _ProcessGuest:
    """One VM running for real: sandbox, context files, init scripts, SSH. All methods are thread-safe."""

    def __init__(self, vmid: int, ip: str, context: dict[str, str], root: Path, ssh_port: int,
                 server: SshServer, runas: GuestUser) -> None:
        self.vmid, self.ip, self.context, self.ssh_port, self.server = vmid, ip, dict(context), ssh_port, server
        self.runas = runas
        self.sandbox = root / f"vm-{vmid}"
        self.mnt = self.sandbox / "mnt"
        self.user = "root"
        self.home = self.sandbox / "home" / self.user
        self.env: dict[str, str] = {}
        self.host_key: paramiko.PKey | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self._pgids: set[int] = set()

    def note(self, message: str) -> None:
        """Log a line to the simulator log and to the guest's own guest.log."""
        log.info("vm %s: %s", self.vmid, message)
        try:
            with open(self.sandbox / "guest.log", "a", encoding="utf-8") as fh:
                fh.write(f"[onesim {time.strftime('%H:%M:%S')}] {message}\n")
        except OSError:
            pass

    def boot(self) -> None:
        """Thread body: prepare the sandbox, open SSH, fetch FILES, run INIT_SCRIPTS. Never raises."""
        try:
            self._prepare()
            self._listen()
            self._fetch_files()
            self._run_init_scripts()
        except GuestError as exc:
            self.note(f"guest not started: {exc}")
        except Exception as exc:  # a guest must never take the simulator down
            log.exception("vm %s: guest failed", self.vmid)
            self.note(f"guest failed: {exc!r}")

    def _prepare(self) -> None:
        """Create mnt/ and home/<user>/ (the home owned by the guest user) and load (or create once) the guest's
        host key. Safe to run twice."""
        self.sandbox.mkdir(parents=True, exist_ok=True)
        self.user = guest_user(self.context)
        self.home = self.sandbox / "home" / self.user
        self.mnt.mkdir(exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        hand_over(self.home, self.runas)
        self.env = {**guest_env(self.context, self.home, self.mnt, self.user), "LANG": "C.UTF-8"}
        key_file = self.sandbox / "ssh_host_ed25519_key"
        if not key_file.exists():
            key_file.write_text(generate_host_key(), encoding="ascii")
            key_file.chmod(0o600)
        self.host_key = load_host_key(key_file.read_text(encoding="ascii"))
        (self.sandbox / "ssh_host_ed25519_key.pub").write_text(public_line(self.host_key) + "\n", encoding="ascii")
        self.env["ONESIM_HOSTKEY_PUB"] = str(self.sandbox / "ssh_host_ed25519_key.pub")   # carina-lib.sh host_key

    def _listen(self) -> None:
        assert self.host_key is not None
        with self._lock:
            if self._stopped:
                return
            try:
                self.server.listen(self.vmid, self.ip, self.ssh_port,
                                   Endpoint(self.host_key, self._authorize, self._run_command))
            except OSError as exc:
                self.note(f"ssh: cannot listen on {self.ip}:{self.ssh_port}: {exc}")

    def _fetch_files(self) -> None:
        """Download every FILES URL into mnt/ (overwriting); failures are logged and skipped."""
        for url in self.context.get("FILES", "").split():
            try:
                name = file_name(url)
                if name is None:
                    continue
                data = http_get(url)
            except (GuestError, OSError, ValueError) as exc:
                self.note(f"fetch {url}: {exc}")
                continue
            tmp = self.mnt / f".{name}.part"
            tmp.write_bytes(data)
            tmp.chmod(0o755 if name.endswith(".sh") else 0o644)
            tmp.replace(self.mnt / name)

    def _run_init_scripts(self) -> None:
        """Run each INIT_SCRIPTS entry from mnt/ with /bin/sh, one after the other, output to guest.log."""
        for name in (self.context.get("INIT_SCRIPTS") or "init.sh").split():
            if not SAFE_NAME.match(name) or not (self.mnt / name).is_file():
                self.note(f"INIT_SCRIPTS: {name!r} is not a file on the context CD")
                continue
            with open(self.sandbox / "guest.log", "ab") as out:
                proc = self._spawn(["/bin/sh", str(self.mnt / name)], stdout=out, stderr=subprocess.STDOUT)
            if proc is None:
                return
            code = proc.wait()
            self.note(f"{name} exited with status {exit_status(code)}")

    def _spawn(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes] | None:
        """Start a process in its own process group in the guest's sandbox; None once the guest is stopped."""
        with self._lock:
            if self._stopped:
                return None
            self._prune_groups()
            proc = subprocess.Popen(argv, env=self.env, cwd=self.home, stdin=subprocess.DEVNULL,
                                    start_new_session=True, close_fds=True, **self.runas.popen_kwargs(), **kwargs)
            self._pgids.add(proc.pid)
            return proc

    def _prune_groups(self) -> None:
        for pgid in list(self._pgids):
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                self._pgids.discard(pgid)
            except PermissionError:
                pass

    def _authorize(self, username: str, key: paramiko.PKey) -> bool:
        """Public-key auth as sshd does it: the user's ~/.ssh/authorized_keys (else the context CD's copy)."""
        if self._stopped or username != self.user:
            return False
        for path in (self.home / ".ssh" / "authorized_keys", self.mnt / "authorized_keys"):
            if path.is_file():
                return key_in_authorized_keys(path.read_text(encoding="utf-8", errors="replace"), key)
        return False

    def _run_command(self, command: str) -> ExecResult:
        """`/bin/sh -c command` with the guest's environment, cwd = home."""
        proc = self._spawn(["/bin/sh", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if proc is None:
            return ExecResult(b"", b"onesim: the VM is not running\n", 255)
        try:
            out, err = proc.communicate(timeout=EXEC_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._kill_group(proc.pid)
            out, err = proc.communicate()
            err += f"onesim: command killed after {EXEC_TIMEOUT:.0f}s\n".encode()
        self.note(f"ssh exec {command!r}: exit status {exit_status(proc.returncode)}")
        return ExecResult(out, err, exit_status(proc.returncode))

    @staticmethod
    def _kill_group(pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self) -> None:
        """Kill every process group of the guest and close its SSH listener. Safe to run twice."""
        with self._lock:
            self._stopped = True
            pgids, self._pgids = self._pgids, set()
        self.server.unlisten(self.vmid)
        for pgid in pgids:
            self._kill_group(pgid)


class _SyntheticGuests:
    """Callbacks and SSH for many VMs without processes: a small thread pool and the shared accept loop.

    Host keys derive from a secret kept in the workdir and the vmid: a VM keeps its key across power cycles and
    simulator restarts.
    """

    def __init__(self, workdir: Path, ssh_port: int, server: SshServer) -> None:
        self.workdir, self.ssh_port, self.server = workdir, ssh_port, server
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="onesim-synth")
        self._lock = threading.Lock()
        self._live: dict[int, dict[str, str]] = {}
        self._keys: dict[str, str] = {}
        self._host_keys: dict[int, paramiko.PKey] = {}
        self._host_key_secret = host_key_seed(workdir / HOST_KEY_SEED_FILE)  # kept: same keys after a restart
        self._log_lock = threading.Lock()

    def start(self, vmid: int, ip: str, context: dict[str, str]) -> None:
        with self._lock:
            if vmid in self._live:
                return
            self._live[vmid] = dict(context)
        self.pool.submit(self._boot, vmid, ip, dict(context))

    def stop(self, vmid: int) -> None:
        with self._lock:
            self._live.pop(vmid, None)
            self._host_keys.pop(vmid, None)
        self.server.unlisten(vmid)

    def host_key(self, vmid: int) -> paramiko.PKey | None:
        with self._lock:
            return self._host_keys.get(vmid)

    def _alive(self, vmid: int) -> bool:
        with self._lock:
            return vmid in self._live

    def _boot(self, vmid: int, ip: str, context: dict[str, str]) -> None:
        """Pool task: fetch the controller key (once per URL), open SSH, make the two callbacks. Never raises."""
        try:
            self._controller_keys(context)
            user = guest_user(context)
            seed = hmac.new(self._host_key_secret, str(vmid).encode(), hashlib.sha256).digest()
            host_key = load_host_key(generate_host_key(seed))
            with self._lock:
                if vmid not in self._live:
                    return
                self._host_keys[vmid] = host_key
                try:
                    self.server.listen(vmid, ip, self.ssh_port, Endpoint(
                        host_key, lambda u, k: self._authorize(context, user, u, k),
                        lambda cmd: self._record(vmid, ip, user, cmd)))
                except OSError as exc:
                    log.warning("vm %s: ssh: cannot listen on %s:%s: %s", vmid, ip, self.ssh_port, exc)
            for url in callback_urls(context, vmid, ip, public_line(host_key)):
                if not self._alive(vmid) or not self._call(url):
                    return
        except GuestError as exc:
            log.warning("vm %s: synthetic guest: %s", vmid, exc)
        except Exception:
            log.exception("vm %s: synthetic guest failed", vmid)

    def _call(self, url: str) -> bool:
        for attempt in range(CALLBACK_ATTEMPTS):
            try:
                http_get(url, limit=65536)
                return True
            except (OSError, GuestError) as exc:
                log.warning("callback %s failed (attempt %d): %s", url.split("?")[0], attempt + 1, exc)
                time.sleep(0.5 * (attempt + 1))
        return False

    def _controller_keys(self, context: dict[str, str]) -> str:
        """The authorized_keys text named in FILES, fetched once per URL ('' if none or unreachable)."""
        url = authorized_key_url(context)
        if url is None:
            return ""
        with self._lock:
            if url in self._keys:
                return self._keys[url]
        try:
            text = http_get(url, limit=65536).decode("utf-8", "replace")
        except (OSError, GuestError) as exc:
            log.warning("synthetic guests: cannot fetch %s: %s", url, exc)
            return ""
        with self._lock:
            self._keys[url] = text
        return text

    def _authorize(self, context: dict[str, str], user: str, username: str, key: paramiko.PKey) -> bool:
        return username == user and key_in_authorized_keys(self._controller_keys(context), key)

    def _record(self, vmid: int, ip: str, user: str, command: str) -> ExecResult:
        line = f"{time.time():.3f} vmid={vmid} ip={ip} user={user} command={json.dumps(command)}\n"
        with self._log_lock, open(self.workdir / "synthetic-ssh.log", "a", encoding="utf-8") as fh:
            fh.write(line)
        return ExecResult(b"", b"", 0)

    def close(self) -> None:
        with self._lock:
            vmids = list(self._live)
        for vmid in vmids:
            self.stop(vmid)
        self.pool.shutdown(wait=False, cancel_futures=True)


class GuestManager:
    """Starts and stops the guests of RUNNING VMs. start() returns at once and never raises for guest content.

    Process guests live in `guest_root` (default: onesim.sandbox.sandbox_root(workdir)); raises ValueError when
    that directory is unsafe."""

    def __init__(self, mode: str, ssh_port: int, workdir: Path, guest_root: Path | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
        if not 0 <= ssh_port <= 65535:
            raise ValueError(f"ssh_port: must be 0..65535, got {ssh_port}")
        self.mode, self.ssh_port, self.workdir = mode, ssh_port, Path(workdir).resolve()
        self._lock = threading.Lock()
        self._guests: dict[int, _ProcessGuest] = {}
        self._server: SshServer | None = None
        self._synthetic: _SyntheticGuests | None = None
        self._reaper: subprocess.Popen[bytes] | None = None
        self.runas = GuestUser("")
        self.root: Path | None = None
        if mode != "none":
            self.workdir.mkdir(parents=True, exist_ok=True)
        if mode == "process":
            self.runas, self.root = open_sandboxes(self.workdir, guest_root)
            self._reaper = start_watchdog(self.root)
        if mode != "none":
            self._server = SshServer()
        if mode == "synthetic":
            assert self._server is not None
            self._synthetic = _SyntheticGuests(self.workdir, ssh_port, self._server)

    def start(self, vmid: int, ip: str, context: dict[str, str]) -> None:
        """Boot the guest of a VM that reached RUNNING. Safe to call twice: a live guest is left alone."""
        if self._synthetic is not None:
            self._synthetic.start(vmid, ip, context)
            return
        if self._server is None:
            return
        with self._lock:
            if vmid in self._guests:
                return
            assert self.root is not None
            guest = _ProcessGuest(vmid, ip, context, self.root, self.ssh_port, self._server, self.runas)
            self._guests[vmid] = guest
        threading.Thread(target=guest.boot, name=f"onesim-guest-{vmid}", daemon=True).start()

    def stop(self, vmid: int) -> None:
        """The VM left RUNNING: kill its processes, close its SSH listener, keep its sandbox. Safe to call twice."""
        if self._synthetic is not None:
            self._synthetic.stop(vmid)
            return
        with self._lock:
            guest = self._guests.pop(vmid, None)
        if guest is not None:
            guest.stop()

    def host_key(self, vmid: int) -> str | None:
        """The public host key (`ssh-ed25519 AAAA...`) of a live guest, once it has one; else None."""
        if self._synthetic is not None:
            key = self._synthetic.host_key(vmid)
        else:
            with self._lock:
                guest = self._guests.get(vmid)
            key = guest.host_key if guest is not None else None
        return public_line(key) if key is not None else None

    def close(self) -> None:
        """Stop every guest and the SSH server. Safe to call twice."""
        if self._synthetic is not None:
            self._synthetic.close()
        with self._lock:
            vmids = list(self._guests)
        for vmid in vmids:
            self.stop(vmid)
        if self._server is not None:
            self._server.close()
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            reaper.stdin.close()  # type: ignore[union-attr]  # EOF: the watchdog sweeps stragglers and exits
            try:
                reaper.wait(10)
            except subprocess.TimeoutExpired:
                reaper.kill()
