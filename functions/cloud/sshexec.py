"""Run commands on a VM over SSH (paramiko) with a pinned host key, quoted arguments and timeouts: one command
per connection (`run_remote`), or many on ONE connection (`run_batch`: one key exchange and authentication,
then an exec channel per command, a few at a time).

No AutoAddPolicy/WarningPolicy: the host key is checked by hand right after the key exchange, before any
authentication. The expected key is `<type> <base64>` or a `SHA256:` fingerprint (functions.model.hostkeys).
With no expected key the key is accepted and returned (trust on first use: the caller pins it and passes it on
every later call).
"""

from __future__ import annotations

import io
import select
import shlex
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import paramiko

from config import metrics
from functions.model import hostkeys

OUTPUT_CAP = 64 * 1024
_KEY_CLASSES: tuple[type[paramiko.PKey], ...] = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)
_RSA_KEX_TYPES = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")
CHANNELS = 8          # exec channels open at once on one connection (OpenSSH's MaxSessions defaults to 10)


class SshFailed(Exception):
    """Connect, authentication, timeout or channel failure (the caller may retry)."""


class HostKeyMismatch(SshFailed):
    """The server's host key differs from the pinned one; nothing was run."""


@dataclass(frozen=True)
class SshResult:
    rc: int
    out: str
    err: str


def script_command(script: str, args: list[str]) -> str:
    """`~/<script> <args...>` with the script name and every argument shell-quoted. Pure."""
    if not script or script.startswith("/") or ".." in script.split("/") or "\0" in script:
        raise ValueError(f"script: expected a file name relative to the home directory, got {script!r}")
    return " ".join(["~/" + shlex.quote(script)] + [shlex.quote(str(a)) for a in args])


def load_private_key(private_pem: str) -> paramiko.PKey:
    """Parse an unencrypted Ed25519, ECDSA or RSA private key (PEM or OpenSSH format)."""
    for cls in _KEY_CLASSES:
        try:
            return cls.from_private_key(io.StringIO(private_pem))
        except (paramiko.SSHException, ValueError):
            continue
    raise SshFailed("private key: not an unencrypted Ed25519, ECDSA or RSA key")


def _expected_type(known_key: str) -> str | None:
    """The key type to ask the server for, or None for a fingerprint (whichever key it prefers)."""
    if hostkeys.is_fingerprint(known_key):
        return None
    if len(known_key.split()) < 2:
        raise ValueError("known_key: expected '<type> <base64>' or 'SHA256:<base64>'")
    return hostkeys.key_type(known_key)


class _Deadline:
    def __init__(self, timeout: float) -> None:
        self.end = time.monotonic() + timeout
        self.timeout = timeout

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise SshFailed(f"timed out after {self.timeout:g}s")
        return left


class _Watchdog:
    """Closes a connection whose server leaves an armed wait unanswered past its deadline: paramiko's
    Channel.exec_command waits for the server's answer without a limit (closing the transport wakes it). One
    thread per connection; `stop` ends it."""

    def __init__(self, transport: paramiko.Transport) -> None:
        self.transport = transport
        self.cond = threading.Condition()
        self.until: float | None = None
        self.stopped = False
        threading.Thread(target=self._watch, name="carina-ssh-watchdog", daemon=True).start()

    @contextmanager
    def armed(self, deadline: _Deadline) -> Iterator[None]:
        """Within the block, the connection is closed once `deadline` passes; raises SshFailed("timed out")
        when the block failed because it did."""
        with self.cond:
            self.until = deadline.end
            self.cond.notify()
        try:
            yield
        except (paramiko.SSHException, OSError, EOFError):
            if deadline.end <= time.monotonic():
                raise SshFailed(f"timed out after {deadline.timeout:g}s (the server did not answer)") from None
            raise
        finally:
            with self.cond:
                self.until = None

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify()

    def _watch(self) -> None:
        with self.cond:
            while not self.stopped and (self.until is None or self.until > time.monotonic()):
                self.cond.wait(None if self.until is None else self.until - time.monotonic())
            if self.stopped:
                return
        try:
            self.transport.close()
        except (paramiko.SSHException, OSError, EOFError):
            pass                      # a connection that broke on its own is closed as well


def _handshake(host: str, port: int, known_key: str | None, deadline: _Deadline) -> tuple[paramiko.Transport, str]:
    """Connect and do the key exchange; return the transport and the host key seen. Checks the pin."""
    key_type = _expected_type(known_key) if known_key is not None else None
    try:
        sock = socket.create_connection((host, port), timeout=deadline.left())
    except OSError as exc:
        raise SshFailed(f"connect {host}:{port}: {exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # small SSH messages: no Nagle / delayed-ACK stalls
    transport = paramiko.Transport(sock)
    transport.banner_timeout = transport.handshake_timeout = deadline.left()
    if key_type is not None:
        types = _RSA_KEX_TYPES if key_type == "ssh-rsa" else (key_type,)
        try:
            transport.get_security_options().key_types = types
        except ValueError:
            transport.close()
            raise HostKeyMismatch(f"{host}:{port}: pinned key type {key_type!r} is not supported") from None
    try:
        transport.start_client(timeout=deadline.left())
    except paramiko.ssh_exception.IncompatiblePeer as exc:
        transport.close()
        if key_type is not None:  # the server no longer offers the pinned key's type: a changed key
            raise HostKeyMismatch(f"{host}:{port}: host key changed (no {key_type} key offered)") from None
        raise SshFailed(f"ssh handshake with {host}:{port}: {exc}") from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        transport.close()
        raise SshFailed(f"ssh handshake with {host}:{port}: {exc}") from None
    if not transport.initial_kex_done:      # start_client returns quietly when its timeout passes mid-exchange
        transport.close()
        raise SshFailed(f"ssh handshake with {host}:{port}: timed out after {deadline.timeout:g}s")
    key = transport.get_remote_server_key()
    seen = f"{key.get_name()} {key.get_base64()}"
    if known_key is not None and not hostkeys.matches(known_key, seen):
        transport.close()
        raise HostKeyMismatch(f"{host}:{port}: host key changed (got {key.get_name()}, pinned key differs)")
    return transport, seen


def _collect(chan: paramiko.Channel, deadline: _Deadline) -> SshResult:
    """Read stdout/stderr (each capped at OUTPUT_CAP) until the command exits or the deadline passes."""
    out, err = bytearray(), bytearray()
    while True:
        select.select([chan], [], [], min(0.1, deadline.left()))
        while chan.recv_ready():
            data = chan.recv(32768)
            out += data[: max(0, OUTPUT_CAP - len(out))]
        while chan.recv_stderr_ready():
            data = chan.recv_stderr(32768)
            err += data[: max(0, OUTPUT_CAP - len(err))]
        if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
            break
    return SshResult(chan.recv_exit_status(), out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


def run_remote(host: str, port: int, user: str, private_pem: str, command: str, *,
               known_key: str | None, timeout: float) -> tuple[SshResult, str]:
    """Run `command` as `user` on host:port; return (result, host key seen as "<type> <base64>").

    Changes nothing locally. Raises HostKeyMismatch (before authenticating) if `known_key` (a key line or a
    SHA256 fingerprint) is given and the server's key differs, SshFailed on any connect/auth/channel failure or
    when `timeout` seconds (covering connect, auth and the command) pass. Running it twice runs the command twice.
    The duration and outcome go to the metrics (config/metrics.py).
    """
    started, outcome = time.monotonic(), "failed"
    try:
        answer = _run_remote(host, port, user, private_pem, command, known_key=known_key, timeout=timeout)
        outcome = "ok" if answer[0].rc == 0 else "exit"
        return answer
    except HostKeyMismatch:
        outcome = "hostkey"
        raise
    finally:
        metrics.ssh_command(time.monotonic() - started, outcome)


def _run_remote(host: str, port: int, user: str, private_pem: str, command: str, *,
                known_key: str | None, timeout: float) -> tuple[SshResult, str]:
    if timeout <= 0:
        raise ValueError("timeout: must be positive")
    deadline = _Deadline(timeout)
    transport, seen = _connect(host, port, user, private_pem, known_key, deadline)
    watchdog = _Watchdog(transport)
    try:
        chan = transport.open_session(timeout=deadline.left())
        chan.settimeout(deadline.left())
        with watchdog.armed(deadline):
            chan.exec_command(command)
        return _collect(chan, deadline), seen
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise SshFailed(f"ssh to {host}:{port}: {type(exc).__name__}: {exc}") from None
    finally:
        watchdog.stop()
        transport.close()

Outcome = SshResult | SshFailed        # one command's result in a batch: what it returned, or why it did not run
Batch = Callable[..., tuple[list[Outcome], str]]


def _connect(host: str, port: int, user: str, private_pem: str, known_key: str | None,
             deadline: _Deadline) -> tuple[paramiko.Transport, str]:
    """Key exchange (pin checked), then public-key auth; the open transport and the host key seen."""
    pkey = load_private_key(private_pem)
    transport, seen = _handshake(host, port, known_key, deadline)
    try:
        transport.auth_timeout = deadline.left()
        transport.auth_publickey(user, pkey)
    except paramiko.AuthenticationException as exc:
        transport.close()
        raise SshFailed(f"ssh auth as {user!r} on {host}:{port} failed: {exc}") from None
    except (paramiko.SSHException, OSError, EOFError, SshFailed) as exc:
        transport.close()
        raise SshFailed(f"ssh to {host}:{port}: {type(exc).__name__}: {exc}") from None
    return transport, seen


@dataclass
class _Running:
    index: int
    deadline: _Deadline
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)


def _drain(chan: paramiko.Channel, run: _Running) -> bool:
    """Read what the channel has (capped); True once its command exited and everything was read."""
    while chan.recv_ready():
        run.out += chan.recv(32768)[: max(0, OUTPUT_CAP - len(run.out))]
    while chan.recv_stderr_ready():
        run.err += chan.recv_stderr(32768)[: max(0, OUTPUT_CAP - len(run.err))]
    return chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready()


def _open(transport: paramiko.Transport, watchdog: _Watchdog, command: str, index: int,
          timeout: float) -> tuple[paramiko.Channel, _Running]:
    run = _Running(index, _Deadline(timeout))
    chan = transport.open_session(timeout=run.deadline.left())
    with watchdog.armed(run.deadline):
        chan.exec_command(command)
    return chan, run


def _finish(chan: paramiko.Channel, run: _Running, where: str) -> Outcome:
    chan.close()
    rc = chan.recv_exit_status()
    if rc == -1:                      # closed without an exit status: the connection or the channel was lost
        return SshFailed(f"ssh to {where}: the channel closed before the command's exit status")
    return SshResult(rc, run.out.decode("utf-8", "replace"), run.err.decode("utf-8", "replace"))


def _poll(chan: paramiko.Channel, run: _Running, timeout: float, where: str) -> Outcome | None:
    """The command's outcome once it exited (or failed, or passed its deadline: the channel is closed then);
    None while it runs."""
    try:
        if _drain(chan, run) or chan.closed:
            return _finish(chan, run, where)
        if run.deadline.end > time.monotonic():
            return None
        outcome: Outcome = SshFailed(f"timed out after {timeout:g}s")
    except (paramiko.SSHException, OSError, EOFError) as exc:
        outcome = SshFailed(f"ssh to {where}: {type(exc).__name__}: {exc}")
    try:
        chan.close()
    except (paramiko.SSHException, OSError, EOFError):
        pass                          # closing fails too when the connection broke: the outcome stands
    return outcome


def _run_channels(transport: paramiko.Transport, watchdog: _Watchdog, commands: Sequence[str], timeout: float,
                  channels: int, where: str) -> list[Outcome]:
    """Each command on its own exec channel, at most `channels` at once (fewer once the server refuses a channel
    while others are open: its MaxSessions), each within `timeout` s of its start. A command that could not
    start or finish gets its SshFailed; the others are not affected unless the connection itself is lost (then
    every command not finished gets that failure)."""
    results: list[Outcome | None] = [None] * len(commands)
    pending = deque(range(len(commands)))
    active: dict[paramiko.Channel, _Running] = {}
    while pending or active:
        while pending and len(active) < channels and transport.is_active():
            i = pending.popleft()
            try:
                chan, run = _open(transport, watchdog, commands[i], i, timeout)
            except paramiko.ChannelException as exc:
                if active:                    # the server allows fewer sessions at once (MaxSessions): use fewer
                    pending.appendleft(i)
                    channels = len(active)
                    break
                results[i] = SshFailed(f"ssh to {where}: {type(exc).__name__}: {exc}")
                continue
            except SshFailed as exc:
                results[i] = SshFailed(f"ssh to {where}: {exc}")
                continue
            except (paramiko.SSHException, OSError, EOFError) as exc:
                results[i] = SshFailed(f"ssh to {where}: {type(exc).__name__}: {exc}")
                continue
            active[chan] = run
        if not active:
            break
        select.select(list(active), [], [], 0.1)
        for chan, run in list(active.items()):
            outcome = _poll(chan, run, timeout, where)
            if outcome is not None:
                results[run.index] = outcome
                del active[chan]
    lost = SshFailed(f"ssh to {where}: the connection was lost")
    return [lost if r is None else r for r in results]


def run_batch(host: str, port: int, user: str, private_pem: str, commands: Sequence[str], *,
              known_key: str | None, timeout: float, channels: int = CHANNELS) -> tuple[list[Outcome], str]:
    """Run each of `commands` as `user` on host:port over ONE connection (one key exchange, one authentication,
    then one exec channel per command, at most `channels` at once, in order of the list); return each command's
    outcome (an SshResult, or the SshFailed why it did not run or finish) and the host key seen.

    Raises HostKeyMismatch (before authenticating: nothing ran) or SshFailed when the connection, the key
    exchange or the authentication fails within `timeout` s (nothing ran). Each command then has `timeout` s
    from its start; a server that leaves a command's start (its exec request) unanswered that long is taken as
    hung: the connection is closed and every command not finished fails with it. Changes nothing locally;
    running it twice runs every command twice. Each command's duration and outcome go to the metrics, like
    run_remote's.
    """
    if timeout <= 0 or channels < 1:
        raise ValueError("timeout and channels: must be positive")
    started = time.monotonic()
    if not commands:
        return [], ""
    try:
        transport, seen = _connect(host, port, user, private_pem, known_key, _Deadline(timeout))
    except HostKeyMismatch:
        metrics.ssh_command(time.monotonic() - started, "hostkey")
        raise
    except SshFailed:
        metrics.ssh_command(time.monotonic() - started, "failed")
        raise
    watchdog = _Watchdog(transport)
    try:
        results = _run_channels(transport, watchdog, commands, timeout, channels, f"{host}:{port}")
    finally:
        watchdog.stop()
        transport.close()
    each = (time.monotonic() - started) / len(commands)
    for r in results:
        metrics.ssh_command(each, "failed" if isinstance(r, SshFailed) else "ok" if r.rc == 0 else "exit")
    return results, seen


def one_by_one(run_one: Callable[..., tuple[SshResult, str]]) -> Batch:
    """A run_batch built from a one-command runner with run_remote's signature (a test's stand-in): each
    command in turn; after the first connection that succeeded, the key it showed is the expected one."""
    def batch(host: str, port: int, user: str, private_pem: str, commands: Sequence[str], *,
              known_key: str | None, timeout: float, channels: int = CHANNELS) -> tuple[list[Outcome], str]:
        out: list[Outcome] = []
        seen = ""
        for command in commands:
            try:
                result, seen = run_one(host, port, user, private_pem, command,
                                       known_key=known_key or seen or None, timeout=timeout)
            except HostKeyMismatch:
                raise
            except SshFailed as exc:
                out.append(exc)
                continue
            out.append(result)
        return out, seen
    return batch
