"""functions.cloud.sshexec.run_batch against the simulator's paramiko sshd (onesim.sshd) on loopback: one
connection for many commands, bounded channels, per-command outcomes, the pin, and what a lost connection
does; sshexec.one_by_one with a stand-in."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import paramiko
import pytest

import onesim.sshd
from functions.cloud import sshexec
from functions.cloud.sshexec import HostKeyMismatch, SshFailed, SshResult, run_batch
from onesim.sshd import Endpoint, ExecResult, SshServer, generate_host_key, load_host_key, public_line
from tests.harness import free_port, wait_port
from tests.stack import wait_for


@dataclass
class Master:
    """A master's SSH side: records each command, counts connections (authentications) and the most commands
    running at once; `add <ip> fail` exits 3, `sleep` takes `slow` seconds, `drop` closes the connection."""

    server: SshServer
    port: int
    host_pub: str
    client_pem: str
    client_pub: str
    slow: float = 0.0
    ran: list[str] = field(default_factory=list)
    auths: int = 0
    running: int = 0
    most: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def authorize(self, user: str, key: paramiko.PKey) -> bool:
        with self.lock:
            self.auths += 1
        return user == "root" and key.get_base64() == self.client_pub

    def run(self, command: str) -> ExecResult:
        with self.lock:
            self.ran.append(command)
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if command.endswith(" sleep"):
                time.sleep(self.slow)
            if command.endswith(" drop"):
                for t in list(self.server._sessions.get("m", ())):   # noqa: SLF001 - the test kills its server's link
                    t.close()
            if command.endswith(" fail"):
                return ExecResult(b"", b"backend pool is full\n", 3)
            return ExecResult(f"ran {command}\n".encode(), b"", 0)
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def master() -> Iterator[Master]:
    pem = generate_host_key()
    client = load_host_key(pem)
    host = load_host_key(generate_host_key())
    server = SshServer()
    m = Master(server, free_port(), public_line(host), pem, client.get_base64())
    server.listen("m", "127.0.0.1", m.port, Endpoint(host, m.authorize, m.run))
    wait_port(m.port)
    yield m
    server.close()


def batch(m: Master, commands: list[str], **kw: object) -> tuple[list[sshexec.Outcome], str]:
    opts: dict[str, object] = {"known_key": None, "timeout": 5.0, **kw}
    return run_batch("127.0.0.1", m.port, "root", m.client_pem, commands, **opts)  # type: ignore[arg-type]


def break_channel_close(monkeypatch: pytest.MonkeyPatch, side: Callable[[threading.Thread], bool]) -> None:
    """Make paramiko's Channel.close raise EOFError after closing, in the threads `side` picks: what it does when
    the socket broke before the transport noticed (seen once in CI)."""
    close = paramiko.Channel.close

    def broken_close(channel: paramiko.Channel) -> None:
        close(channel)
        if side(threading.current_thread()):
            raise EOFError

    monkeypatch.setattr(paramiko.Channel, "close", broken_close)


def test_runs_every_command_over_one_connection_in_order(master: Master) -> None:
    commands = [f"add 10.0.0.{i}" for i in range(30)]
    outcomes, seen = batch(master, commands, channels=1)
    assert seen == master.host_pub and master.auths == 1
    assert master.ran == commands                                       # one channel at a time: in order
    assert outcomes == [SshResult(0, f"ran {c}\n", "") for c in commands]


def test_channels_bound_how_many_commands_run_at_once(master: Master) -> None:
    master.slow = 0.3                      # long enough that the channels opened one after the other overlap
    commands = [f"add 10.0.0.{i} sleep" for i in range(8)]
    outcomes, _ = batch(master, commands, channels=4)
    assert all(isinstance(o, SshResult) and o.rc == 0 for o in outcomes)
    assert sorted(master.ran) == sorted(commands) and master.auths == 1
    assert 1 < master.most <= 4


def test_a_failing_command_fails_only_itself(master: Master) -> None:
    outcomes, _ = batch(master, ["add a", "add b fail", "add c"])
    assert [o.rc for o in outcomes if isinstance(o, SshResult)] == [0, 3, 0]
    assert outcomes[1] == SshResult(3, "", "backend pool is full\n")


def test_a_command_past_its_timeout_fails_alone(master: Master) -> None:
    master.slow = 3.0
    outcomes, _ = batch(master, ["add a sleep", "add b"], timeout=1.0, channels=2)
    assert isinstance(outcomes[0], SshFailed) and "timed out after 1s" in str(outcomes[0])
    assert outcomes[1] == SshResult(0, "ran add b\n", "")


def test_a_command_past_its_timeout_fails_alone_even_when_closing_its_channel_fails(
        master: Master, monkeypatch: pytest.MonkeyPatch) -> None:
    """paramiko raises EOFError from Channel.close when the socket broke first (injected here on the client's
    side): the command still gets its failure, nothing escapes run_batch."""
    break_channel_close(monkeypatch, lambda t: t is threading.main_thread())      # run_batch's thread
    master.slow = 3.0
    outcomes, _ = batch(master, ["add a sleep"], timeout=1.0)          # the key exchange fits in 1 s even on a busy CI
    assert isinstance(outcomes[0], SshFailed) and "timed out after 1s" in str(outcomes[0])


def test_a_lost_connection_fails_what_had_not_finished(master: Master) -> None:
    outcomes, _ = batch(master, ["add a", "add b drop", "add c", "add d"], channels=1)
    assert outcomes[0] == SshResult(0, "ran add a\n", "")
    assert all(isinstance(o, SshFailed) for o in outcomes[1:]), outcomes
    assert "add c" not in master.ran and "add d" not in master.ran


def test_a_changed_host_key_runs_nothing(master: Master) -> None:
    other = public_line(load_host_key(generate_host_key()))
    with pytest.raises(HostKeyMismatch):
        batch(master, ["add a", "add b"], known_key=other)
    assert master.ran == [] and master.auths == 0                       # refused before authenticating
    outcomes, seen = batch(master, ["add a"], known_key=master.host_pub)
    assert seen == master.host_pub and outcomes == [SshResult(0, "ran add a\n", "")]


def test_a_refused_key_or_nothing_listening_raises_and_runs_nothing(master: Master) -> None:
    with pytest.raises(SshFailed, match="ssh auth as 'root'"):
        run_batch("127.0.0.1", master.port, "root", generate_host_key(), ["add a"], known_key=None, timeout=5)
    with pytest.raises(SshFailed, match="connect 127.0.0.1"):
        run_batch("127.0.0.1", free_port(), "root", master.client_pem, ["add a"], known_key=None, timeout=2)
    assert master.ran == []


@pytest.fixture
def stalling_server() -> Iterator[int]:
    """A port whose server sends an SSH banner, then reads and never answers: a key exchange that never ends."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)
            conn.sendall(b"SSH-2.0-stall\r\n")

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()
    for conn in held:
        conn.close()


def test_a_key_exchange_past_the_timeout_fails_as_ssh_failed(stalling_server: int) -> None:
    """paramiko's start_client returns without raising when its timeout passes mid-exchange (seen in CI under
    load): both runners still answer with SshFailed, never a raw paramiko error."""
    for _ in range(3):
        with pytest.raises(SshFailed, match="ssh handshake with 127.0.0.1"):
            run_batch("127.0.0.1", stalling_server, "root", generate_host_key(), ["add a"], known_key=None,
                      timeout=0.3)
        with pytest.raises(SshFailed, match="ssh handshake with 127.0.0.1"):
            sshexec.run_remote("127.0.0.1", stalling_server, "root", generate_host_key(), "add a", known_key=None,
                               timeout=0.3)


@pytest.fixture
def unanswered_exec(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The simulator's sshd stops answering exec requests (as an sshd stuck setting up a session does)."""
    release = threading.Event()
    answer = onesim.sshd._Interface.check_channel_exec_request           # noqa: SLF001 - the test stalls it

    def stuck(self: onesim.sshd._Interface, channel: paramiko.Channel, command: bytes) -> bool:
        release.wait(30)
        return answer(self, channel, command)

    monkeypatch.setattr(onesim.sshd._Interface, "check_channel_exec_request", stuck)
    yield
    release.set()


@pytest.mark.usefixtures("unanswered_exec")
def test_an_exec_request_never_answered_fails_within_the_timeout(master: Master) -> None:
    """paramiko's exec_command waits for the server's answer without a limit: both runners still end within
    their timeout, the batch's other commands failing with the connection (taken as hung)."""
    started = time.monotonic()                  # 1.5 s: the key exchange and auth fit in it even on a busy CI
    outcomes, _ = batch(master, ["add a", "add b", "add c"], timeout=1.5, channels=2)
    assert time.monotonic() - started < 8       # each command would otherwise wait for the stall (30 s)
    assert "timed out after 1.5s" in str(outcomes[0]) and all(isinstance(o, SshFailed) for o in outcomes)
    started = time.monotonic()
    with pytest.raises(SshFailed, match="timed out after 1.5s"):
        sshexec.run_remote("127.0.0.1", master.port, "root", master.client_pem, "add d", known_key=None, timeout=1.5)
    assert time.monotonic() - started < 8
    assert master.ran == []


def test_no_commands_makes_no_connection(master: Master) -> None:
    assert batch(master, []) == ([], "")
    assert master.auths == 0


def test_one_by_one_runs_a_stand_in_per_command_and_expects_the_first_key_after() -> None:
    calls: list[tuple[str, str | None]] = []

    def stand_in(host: str, port: int, user: str, pem: str, command: str, *, known_key: str | None,
                 timeout: float) -> tuple[SshResult, str]:
        calls.append((command, known_key))
        if command == "down":
            raise SshFailed("connect: refused")
        return SshResult(0, "", ""), "ssh-ed25519 AAAA"

    run = sshexec.one_by_one(stand_in)
    outcomes, seen = run("h", 22, "root", "pem", ["down", "a", "b"], known_key=None, timeout=5, channels=8)
    assert isinstance(outcomes[0], SshFailed) and outcomes[1:] == [SshResult(0, "", "")] * 2
    assert seen == "ssh-ed25519 AAAA"
    assert calls == [("down", None), ("a", None), ("b", "ssh-ed25519 AAAA")]


def test_a_server_allowing_fewer_sessions_gets_fewer_channels_not_failures(master: Master,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Like OpenSSH's MaxSessions 2: a third session is refused while two are open; the batch goes on with two."""
    from onesim import sshd

    def at_most_two(self: sshd._Interface, kind: str, chanid: int) -> int:
        live = [c for c in self.transport._channels.values() if not c.closed]       # noqa: SLF001
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED if len(live) >= 2 else paramiko.OPEN_SUCCEEDED

    monkeypatch.setattr(sshd._Interface, "check_channel_request", at_most_two)
    master.slow = 0.05
    commands = [f"add 10.0.0.{i} sleep" for i in range(8)]
    outcomes, _ = batch(master, commands, channels=8)
    assert all(isinstance(o, SshResult) and o.rc == 0 for o in outcomes), outcomes
    assert sorted(master.ran) == sorted(commands) and master.most <= 2 and master.auths == 1


def test_the_server_survives_clients_gone_before_their_answer(master: Master,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that goes away while its command runs (the link dropped, or the client gave up on its timeout):
    the simulator's exec thread ends quietly even when closing the channel fails as well (paramiko raises
    EOFError there when the socket broke before the transport noticed: injected here, seen once in CI), and the
    next client is served."""
    errors: list[BaseException | None] = []                            # the simulator's threads' only
    monkeypatch.setattr(threading, "excepthook",
                        lambda args: errors.append(args.exc_value) if args.thread and
                        args.thread.name.startswith("onesim-sshd") else None)
    close = paramiko.Channel.close
    break_channel_close(monkeypatch, lambda t: t.name == "onesim-sshd-exec")      # the simulator's side
    master.slow = 2.5
    batch(master, ["add a drop"], channels=1)                          # the link closes under the command
    outcomes, _ = batch(master, ["add b sleep"], timeout=1.0)          # the client gives up first
    # (1 s: the key exchange fits in it even on a busy CI machine; 0.1 s did not once)
    assert not isinstance(outcomes[0], SshResult)

    wait_for(lambda: not [t for t in threading.enumerate() if t.name == "onesim-sshd-exec"], 10,
             "the simulator's exec threads to end", every=0.05)
    assert errors == []
    monkeypatch.setattr(paramiko.Channel, "close", close)
    assert batch(master, ["add c"])[0] == [SshResult(0, "ran add c\n", "")]
