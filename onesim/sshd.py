"""The simulated guests' SSH server: one accept loop serving many (ip, port) listeners with paramiko.

Each listener is an `Endpoint`: a host key, an authorizer (user name + offered public key -> bool) and a
runner (command -> ExecResult). Only public-key auth and `exec` requests are offered, like a locked-down
sshd. A single selector thread accepts for every listener; each connection is then carried by its own
paramiko Transport thread (alive only while the client is connected), and each exec runs in a short thread.
"""

from __future__ import annotations

import io
import logging
import selectors
import socket
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paramiko.common import MSG_CHANNEL_REQUEST

log = logging.getLogger(__name__)

KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "rsa-sha2-256", "rsa-sha2-512",
})


@dataclass(frozen=True)
class ExecResult:
    """What an exec request returns to the client."""

    stdout: bytes
    stderr: bytes
    status: int


@dataclass(frozen=True)
class Endpoint:
    """One guest's SSH identity and behaviour."""

    host_key: paramiko.PKey
    authorize: Callable[[str, paramiko.PKey], bool]
    run: Callable[[str], ExecResult]


def generate_host_key(seed: bytes | None = None) -> str:
    """An ed25519 private key in OpenSSH PEM form (no passphrase): random, or derived from a 32-byte seed."""
    key = Ed25519PrivateKey.generate() if seed is None else Ed25519PrivateKey.from_private_bytes(seed)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                            serialization.NoEncryption())
    return pem.decode("ascii")


def load_host_key(pem: str) -> paramiko.PKey:
    """Parse an ed25519 private key held as a string."""
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem))


def public_line(key: paramiko.PKey) -> str:
    """`ssh-ed25519 AAAA...`: the known_hosts / authorized_keys form of a key."""
    return f"{key.get_name()} {key.get_base64()}"


def key_in_authorized_keys(text: str, key: paramiko.PKey) -> bool:
    """True when `key` is listed in authorized_keys text (options prefixes and comments are tolerated)."""
    want = key.get_base64()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tokens = line.split()
        for i, tok in enumerate(tokens[:-1]):
            if tok in KEY_TYPES and tokens[i + 1] == want:
                return True
    return False


def _request_then_exec(chan: paramiko.Channel, m: paramiko.Message) -> None:
    """Handle a channel request, then start the exec it asked for (after the SUCCESS reply went out)."""
    paramiko.Channel._handle_request(chan, m)
    start = chan.__dict__.pop("_onesim_exec", None)
    if start is not None:
        start()


class _Transport(paramiko.Transport):
    """A server Transport that starts exec work only once the exec reply is on the wire.

    paramiko replies to `exec` after check_channel_exec_request returns; a fast command closing its channel
    before that reply makes the client fail with "Channel closed". This relies on paramiko's per-message
    handler table (checked by the tests against the pinned paramiko).
    """

    _channel_handler_table = {**paramiko.Transport._channel_handler_table, MSG_CHANNEL_REQUEST: _request_then_exec}


class _Interface(paramiko.ServerInterface):
    """paramiko's server callbacks for one connection: publickey auth, session channels, exec."""

    def __init__(self, endpoint: Endpoint, transport: paramiko.Transport) -> None:
        self.endpoint = endpoint
        self.transport = transport

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        try:
            ok = self.endpoint.authorize(username, key)
        except Exception:  # a broken authorizer must refuse, never crash the transport
            log.exception("sshd: authorizer failed")
            ok = False
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_pty_request(self, channel: paramiko.Channel, term: bytes, width: int, height: int,
                                  pixelwidth: int, pixelheight: int, modes: bytes) -> bool:
        return True  # accepted and ignored: commands run without a terminal

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        text = command.decode("utf-8", "replace")
        thread = threading.Thread(target=self._exec, args=(channel, text), name="onesim-sshd-exec", daemon=True)
        channel.__dict__["_onesim_exec"] = thread.start
        return True

    def _exec(self, channel: paramiko.Channel, command: str) -> None:
        """Run one command and send its output and exit status, then close the channel."""
        try:
            result = self.endpoint.run(command)
        except Exception as exc:  # report as a failed command, like sshd when the shell cannot start
            log.exception("sshd: exec failed")
            result = ExecResult(b"", f"onesim-sshd: {exc}\n".encode(), 255)
        try:
            if result.stdout:
                channel.sendall(result.stdout)
            if result.stderr:
                channel.sendall_stderr(result.stderr)
            channel.send_exit_status(result.status)
            channel.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            log.debug("sshd: client went away before the result was sent")
        finally:
            try:
                channel.close()         # the close message fails too when the client has gone
            except (OSError, EOFError, paramiko.SSHException):
                log.debug("sshd: client went away before the channel was closed")
            self.transport.accept(0)  # drop the channel from paramiko's accept queue


class SshServer:
    """Many SSH listeners served by one selector thread. Thread-safe; every method is safe to call twice."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._listeners: dict[Hashable, socket.socket] = {}
        self._sessions: dict[Hashable, set[paramiko.Transport]] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="onesim-sshd", daemon=True)
        self._thread.start()

    def listen(self, key: Hashable, host: str, port: int, endpoint: Endpoint) -> None:
        """Bind (host, port) and serve it as `endpoint` under `key`. Raises OSError if the bind fails.

        A listener already registered under `key` is replaced.
        """
        self.unlisten(key)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(16)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        with self._lock:
            if self._closed:
                sock.close()
                raise OSError("ssh server is closed")
            self._listeners[key] = sock
            self._sessions.setdefault(key, set())
            self._sel.register(sock, selectors.EVENT_READ, (key, endpoint))
        self._wake()

    def unlisten(self, key: Hashable) -> None:
        """Close the listener under `key` and drop its live connections. No-op if there is none."""
        with self._lock:
            sock = self._listeners.pop(key, None)
            sessions = self._sessions.pop(key, set())
            if sock is not None:
                self._sel.unregister(sock)
                sock.close()
        for transport in sessions:
            transport.close()

    def address(self, key: Hashable) -> tuple[str, int] | None:
        """The bound (host, port) of a listener, or None."""
        with self._lock:
            sock = self._listeners.get(key)
            return sock.getsockname()[:2] if sock is not None else None

    def close(self) -> None:
        """Close every listener and connection and stop the accept thread."""
        with self._lock:
            keys = list(self._listeners)
        for key in keys:
            self.unlisten(key)
        with self._lock:
            self._closed = True
        self._wake()
        self._thread.join(5)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _loop(self) -> None:
        while True:
            events = self._sel.select(timeout=1.0)
            with self._lock:
                if self._closed:
                    break
                for skey, _ in events:
                    if skey.data is None:
                        self._wake_r.recv(4096)
                        continue
                    key, endpoint = skey.data
                    if self._listeners.get(key) is skey.fileobj:  # still open (not replaced or closed)
                        try:
                            self._accept(skey.fileobj, key, endpoint)  # type: ignore[arg-type]
                        except Exception:  # one bad connection must not stop the loop for every guest
                            log.exception("sshd: accept failed for %s", key)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _accept(self, sock: socket.socket, key: Hashable, endpoint: Endpoint) -> None:
        """Accept one pending connection and hand it to a paramiko Transport (caller holds the lock)."""
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        conn.setblocking(True)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # as sshd: small messages sent at once
        sessions = self._sessions.setdefault(key, set())
        sessions.difference_update([t for t in sessions if not t.is_active()])
        try:
            transport = _Transport(conn)
            transport.add_server_key(endpoint.host_key)
            transport.start_server(event=threading.Event(), server=_Interface(endpoint, transport))
        except (OSError, paramiko.SSHException, EOFError):
            log.warning("sshd: could not start a session for %s", key)
            conn.close()
            return
        sessions.add(transport)
