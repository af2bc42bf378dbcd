"""functions.cloud.sshexec against Debian's real sshd on loopback (needs root, like sshd itself)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from functions.cloud.sshexec import HostKeyMismatch, SshFailed, SshResult, run_batch, run_remote, script_command
from tests.harness import free_port, wait_port
from tests.stack import wait_for

SSHD = "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not Path(SSHD).exists() or not shutil.which("ssh-keygen"),
                                reason="needs root and /usr/sbin/sshd")
USER = "root"


@dataclass
class Sshd:
    port: int
    host_pub: str        # "<type> <base64>"
    client_pem: str
    dir: Path


def _keygen(path: Path) -> tuple[str, str]:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    pub = " ".join(path.with_suffix(".pub").read_text().split()[:2])
    return path.read_text(), pub


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    d = tmp_path_factory.mktemp("sshd")
    _, host_pub = _keygen(d / "host_ed25519")
    client_pem, client_pub = _keygen(d / "client")
    (d / "authorized_keys").write_text(client_pub + "\n")
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_ed25519'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=(d / "sshd.log").open("w"))
    try:
        wait_port(port)
        yield Sshd(port, host_pub, client_pem, d)
    finally:
        proc.terminate()
        proc.wait(5)


def _run(s: Sshd, command: str, *, known_key: str | None = None, timeout: float = 10.0,
         pem: str | None = None) -> tuple[object, str]:
    return run_remote("127.0.0.1", s.port, USER, pem or s.client_pem, command, known_key=known_key, timeout=timeout)


def test_runs_a_command_returns_output_rc_and_host_key(sshd: Sshd) -> None:
    result, seen = _run(sshd, "echo out; echo err >&2; exit 3")
    assert (result.rc, result.out, result.err) == (3, "out\n", "err\n")
    assert seen == sshd.host_pub                 # trust on first use: the caller stores this


def test_pinned_key_is_accepted(sshd: Sshd) -> None:
    result, seen = _run(sshd, "true", known_key=sshd.host_pub + " root@somewhere")
    assert result.rc == 0 and seen == sshd.host_pub


def test_changed_host_key_never_runs_the_command(sshd: Sshd, tmp_path: Path) -> None:
    _, other_pub = _keygen(tmp_path / "other")
    marker = tmp_path / "ran"
    log = sshd.dir / "sshd.log"
    seen = len(log.read_text())
    with pytest.raises(HostKeyMismatch, match="host key changed"):
        _run(sshd, f"touch {marker}", known_key=other_pub)
    # sshd logs how the connection ended: closed before authentication, so nothing could have run
    ended = wait_for(lambda: "[preauth]" in (text := log.read_text()[seen:]) and text, 10, "sshd to log the close")
    assert "Accepted publickey" not in ended and not marker.exists(), ended


def test_pinned_key_of_another_type_is_a_mismatch(sshd: Sshd, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(tmp_path / "ec")], check=True)
    ec_pub = " ".join((tmp_path / "ec.pub").read_text().split()[:2])
    marker = tmp_path / "ran"
    with pytest.raises(HostKeyMismatch):
        _run(sshd, f"touch {marker}", known_key=ec_pub)
    assert not marker.exists()


def test_a_sha256_fingerprint_pin_is_checked_like_a_key(sshd: Sshd, tmp_path: Path) -> None:
    """The fingerprint `ssh-keygen -l` prints for the server's key is accepted; another key's is refused."""
    printed = subprocess.run(["ssh-keygen", "-l", "-f", str(sshd.dir / "host_ed25519.pub")], check=True,
                             capture_output=True, text=True).stdout.split()[1]
    assert printed.startswith("SHA256:")
    result, seen = _run(sshd, "true", known_key=printed)
    assert result.rc == 0 and seen == sshd.host_pub
    _keygen(tmp_path / "other")
    other = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "other.pub")], check=True,
                           capture_output=True, text=True).stdout.split()[1]
    marker = tmp_path / "ran"
    with pytest.raises(HostKeyMismatch, match="host key changed"):
        _run(sshd, f"touch {marker}", known_key=other)
    assert not marker.exists()                      # refused before authenticating: nothing ran


def test_wrong_client_key_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    stranger_pem, _ = _keygen(tmp_path / "stranger")
    with pytest.raises(SshFailed, match="auth"):
        _run(sshd, "true", pem=stranger_pem)


def test_nothing_listening_is_sshfailed(sshd: Sshd) -> None:
    with pytest.raises(SshFailed, match="connect"):
        run_remote("127.0.0.1", free_port(), USER, sshd.client_pem, "true", known_key=None, timeout=2)


def test_unusable_private_key_is_sshfailed(sshd: Sshd) -> None:
    with pytest.raises(SshFailed, match="private key"):
        _run(sshd, "true", pem="-----BEGIN NONSENSE-----\n")


def test_timeout_covers_the_command(sshd: Sshd) -> None:
    """A command still running at the deadline fails the call (one that ignored the timeout would return rc 0
    after 30 s instead of raising)."""
    with pytest.raises(SshFailed, match="timed out after 1.5s"):
        _run(sshd, "sleep 30", timeout=1.5)


def test_output_is_capped(sshd: Sshd) -> None:
    result, _ = _run(sshd, "head -c 200000 /dev/zero | tr '\\0' x")
    assert result.rc == 0 and len(result.out) == 64 * 1024


def test_script_arguments_are_quoted(sshd: Sshd) -> None:
    """A hostile slave IP / slavedata reaches the script as single arguments, nothing is executed."""
    home = Path.home()
    name = f".carina-test-{uuid.uuid4().hex[:8]} script.sh"
    script = home / name
    canary = sshd.dir / "pwned"
    script.write_text('#!/bin/sh\nfor a in "$@"; do printf "<%s>\\n" "$a"; done\n')
    script.chmod(0o700)
    args = ["add", "10.0.0.1", f"a b 'c' \"d\" $(touch {canary}) `touch {canary}`; touch {canary}", ""]
    try:
        result, _ = _run(sshd, script_command(name, args))
    finally:
        script.unlink()
    assert result.rc == 0, result.err
    assert result.out == "".join(f"<{a}>\n" for a in args)
    assert not canary.exists()


def test_script_command_shape() -> None:
    assert script_command("tomcat.sh", ["add", "1.2.3.4", ""]) == "~/tomcat.sh add 1.2.3.4 ''"
    assert script_command("my script.sh", ["a;b"]) == "~/'my script.sh' 'a;b'"
    for bad in ("", "/etc/passwd", "../x.sh", "a/../../x"):
        with pytest.raises(ValueError, match="script"):
            script_command(bad, [])


def test_a_batch_runs_every_command_over_one_connection(sshd: Sshd, tmp_path: Path) -> None:
    """run_batch against OpenSSH: one authentication (sshd logs one `Accepted publickey` for the batch), each
    command's own output and exit status, at most `channels` sessions at once (OpenSSH's MaxSessions is 10)."""
    log = sshd.dir / "sshd.log"
    before = log.read_text().count("Accepted publickey")
    marks = tmp_path / "marks"
    marks.mkdir()
    commands = [f"echo {i}; touch {marks}/{i}; sleep 0.2; exit {i % 3}" for i in range(20)]
    outcomes, seen = run_batch("127.0.0.1", sshd.port, USER, sshd.client_pem, commands, known_key=sshd.host_pub,
                               timeout=10, channels=8)
    assert seen == sshd.host_pub
    assert [(o.rc, o.out) for o in outcomes if isinstance(o, SshResult)] == [(i % 3, f"{i}\n") for i in range(20)]
    assert sorted(p.name for p in marks.iterdir()) == sorted(str(i) for i in range(20))
    accepted = wait_for(lambda: log.read_text().count("Accepted publickey") - before, 10, "sshd to log the login")
    assert accepted == 1


def test_a_batch_to_a_changed_host_key_runs_nothing(sshd: Sshd, tmp_path: Path) -> None:
    _, other_pub = _keygen(tmp_path / "other")
    marker = tmp_path / "ran"
    with pytest.raises(HostKeyMismatch):
        run_batch("127.0.0.1", sshd.port, USER, sshd.client_pem, [f"touch {marker}"] * 3, known_key=other_pub,
                  timeout=10)
    assert not marker.exists()
