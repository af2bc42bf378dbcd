"""Guests are kept out of the controller: a tenant's context script (and a command over the guest's SSH) runs as
the unprivileged guest user with a clean environment, in a sandbox outside CARINA_HOME, and can neither read
Redis' files and password nor talk to Redis. Switching users needs root: skipped otherwise (CI runs as root)."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from config.redisauth import redis_password
from onesim.guests import GuestManager
from onesim.sandbox import GUEST_USER
from onesim.sshd import generate_host_key, load_host_key, public_line
from tests.harness import RedisServer, free_port, guest_root
from tests.onesim.test_guests import Repo, run, ssh, wait_for


def _guest_uid() -> int | None:
    try:
        return pwd.getpwnam(GUEST_USER).pw_uid
    except KeyError:
        return None


needs_root = pytest.mark.skipif(os.geteuid() != 0 or _guest_uid() is None,
                                reason=f"running guests as {GUEST_USER} needs root and that user (`make setup` "
                                       "as root creates it); CI runs as root")

PROBE = b"""#!/bin/sh
# A hostile context script: what can it reach of the controller? It writes what it saw to $HOME/observed.
mkdir -p "$HOME/.ssh" && cp "$MNT/authorized_keys" "$HOME/.ssh/authorized_keys"
try() { if "$@" >/dev/null 2>&1; then echo allowed; else echo refused; fi; }
tcp=$(bash -c 'exec 3<>/dev/tcp/127.0.0.1/'"$PROBE_PORT"' || exit 1
printf "PING\\r\\n" >&3; IFS= read -r -t 5 line <&3; printf "%s" "$line"' 2>&1 | tr -d '\\r')
{
  echo "user=$(id -un)"
  echo "password=$(try cat "$PROBE_HOME/redis.pass")"
  echo "authconf=$(try cat "$PROBE_HOME/redis-auth.conf")"
  echo "aof=$(try ls "$PROBE_HOME/appendonlydir")"
  echo "simstate=$(try ls "$PROBE_HOME/onesim")"
  echo "redis=$tcp"
  echo "redis_cli=$(redis-cli -h 127.0.0.1 -p "$PROBE_PORT" ping 2>&1)"
  echo "control=$(cat "$PROBE_CONTROL" 2>&1)"
  echo "env=$(env | cut -d= -f1 | sort | tr '\\n' ' ')"
} > "$HOME/observed.part"
mv "$HOME/observed.part" "$HOME/observed"
"""


@pytest.fixture
def machine() -> Iterator[Path]:
    """A directory everybody may traverse (unlike pytest's 0700 ones): a guest is stopped by CARINA_HOME's own
    mode, not by a parent directory the test happens to use."""
    base = guest_root()
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@needs_root
def test_a_context_script_cannot_reach_redis_or_its_files(machine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARINA_PROBE_SECRET", "inherited")          # the simulator's environment: not the guest's
    home = machine / "home"
    server = RedisServer(home).start()                              # CARINA_HOME: 0700, redis.pass 0600, AOF
    public = machine / "public"
    public.mkdir(mode=0o755)
    (public / "control.txt").write_text("readable\n")
    (public / "control.txt").chmod(0o644)
    sandboxes = guest_root()
    controller = load_host_key(generate_host_key())
    repo = Repo({"probe.sh": PROBE, "authorized_keys": f"{public_line(controller)} carina@svc\n".encode()})
    port, ip = free_port(), "127.0.1.50"
    mgr = GuestManager("process", port, home / "onesim", sandboxes)   # the simulator's state in CARINA_HOME
    try:
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert not sandboxes.is_relative_to(home)
        context = {"FILES": f"{repo.url('authorized_keys')} {repo.url('probe.sh')}", "INIT_SCRIPTS": "probe.sh",
                   "DEFUSER": "local", "PROBE_HOME": str(home), "PROBE_PORT": str(server.port),
                   "PROBE_CONTROL": str(public / "control.txt")}
        mgr.start(5, ip, context)
        observed = sandboxes / "vm-5" / "home" / "local" / "observed"
        wait_for(observed.is_file, what="the probe's report")
        seen = dict(line.split("=", 1) for line in observed.read_text().splitlines())
        assert seen["user"] == GUEST_USER
        assert seen["control"] == "readable"                       # the probe could read what is public
        assert (seen["password"], seen["authconf"], seen["aof"], seen["simstate"]) == ("refused",) * 4
        assert seen["redis"].startswith("-NOAUTH"), seen["redis"]
        if shutil.which("redis-cli"):
            assert "NOAUTH" in seen["redis_cli"], seen["redis_cli"]
        env = set(seen["env"].split())
        assert env <= set(context) | {"HOME", "PATH", "MNT", "USER", "LOGNAME", "SHELL", "LANG", "PWD", "SHLVL",
                                      "OLDPWD", "_", "ONESIM_HOSTKEY_PUB"}, env    # the host's public key path
        assert (sandboxes / "vm-5" / "home" / "local").stat().st_uid == _guest_uid()
        assert stat.S_IMODE((sandboxes / "vm-5" / "ssh_host_ed25519_key").stat().st_mode) == 0o600

        client = ssh(ip, port, controller)                          # commands over SSH: the guest user too
        try:
            rc, out, err = run(client, f"id -un; cat {home / 'redis.pass'}")
        finally:
            client.close()
        assert (rc, out) == (1, f"{GUEST_USER}\n") and "Permission denied" in err

        with pytest.raises(redis.AuthenticationError):             # the controller's side of the same facts
            redis.Redis.from_url(server.anonymous_url).ping()
        assert redis.Redis.from_url(server.url).ping()
        assert server.password == redis_password(home) not in observed.read_text()
    finally:
        mgr.close()
        server.stop()
        repo.httpd.shutdown()
        repo.httpd.server_close()
        shutil.rmtree(sandboxes, ignore_errors=True)


def test_a_simulator_that_cannot_switch_users_says_guests_are_not_isolated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("ONESIM_GUEST_USER", "no-such-guest-user")
    sandboxes = guest_root()
    caplog.set_level(logging.INFO, logger="onesim.guests")
    mgr = GuestManager("process", free_port(), tmp_path, sandboxes)
    try:
        assert not mgr.runas.isolated and mgr.runas.popen_kwargs() == {}
        assert any("NOT isolated" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    finally:
        mgr.close()
        shutil.rmtree(sandboxes, ignore_errors=True)
