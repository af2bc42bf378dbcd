"""Redis' password file: created once (0600, CARINA_HOME 0700) by whichever process needs it first, the same for
every racer, never half-written; Settings puts it in the URL unless REDIS_URL is given."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from config.redisauth import AUTH_CONF, PASSWORD_FILE, auth_conf, create_once, ensure_private_dir, redis_password
from config.settings import Settings
from tests.harness import project_env


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_password_is_made_once_with_private_modes(tmp_path: Path) -> None:
    home = tmp_path / "a" / "home"
    first = redis_password(home)
    assert len(first) == 64 and int(first, 16) >= 0
    assert redis_password(home) == first                        # idempotent
    assert mode(home) == 0o700 and mode(home / PASSWORD_FILE) == 0o600
    assert [p.name for p in home.iterdir()] == [PASSWORD_FILE]  # no temporary file left behind
    assert redis_password(tmp_path / "other") != first


def test_an_existing_home_and_a_loose_password_file_are_tightened(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    (home / PASSWORD_FILE).write_text("a-password-of-my-own-choosing\n")
    (home / PASSWORD_FILE).chmod(0o644)
    assert ensure_private_dir(home) == home and mode(home) == 0o700
    assert redis_password(home) == "a-password-of-my-own-choosing"
    assert mode(home / PASSWORD_FILE) == 0o600


@pytest.mark.parametrize("text", ["short", "has space in the middle of it", 'quote"dinthemiddleofit', "x" * 513])
def test_an_unusable_password_is_refused_naming_the_file(tmp_path: Path, text: str) -> None:
    ensure_private_dir(tmp_path)
    (tmp_path / PASSWORD_FILE).write_text(text)
    with pytest.raises(ValueError, match=PASSWORD_FILE):
        redis_password(tmp_path)


def test_create_once_keeps_the_first_writer(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert create_once(path, b"one") is True
    assert create_once(path, b"two") is False
    assert path.read_bytes() == b"one" and mode(path) == 0o600 and os.listdir(tmp_path) == ["f"]


def test_racing_processes_all_get_the_same_password(tmp_path: Path) -> None:
    home = tmp_path / "home"
    code = ("import sys\nfrom pathlib import Path\nfrom config.redisauth import redis_password\n"
            "sys.stdin.readline()\nprint(redis_password(Path(sys.argv[1])))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(home)], env=project_env(), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(6)]
    outs = {p.communicate("go\n", timeout=60)[0].strip() for p in procs}     # released together
    assert outs == {(home / PASSWORD_FILE).read_text().strip()}
    assert sorted(p.name for p in home.iterdir()) == [PASSWORD_FILE]


def test_the_auth_conf_follows_the_password_file(tmp_path: Path) -> None:
    conf = auth_conf(tmp_path)
    assert conf == tmp_path / AUTH_CONF and mode(conf) == 0o600
    assert f"\nrequirepass {redis_password(tmp_path)}\n" in conf.read_text()
    (tmp_path / PASSWORD_FILE).write_text("a-new-password-set-by-hand\n")
    assert "requirepass a-new-password-set-by-hand\n" in auth_conf(tmp_path).read_text()


def test_settings_carry_the_password_unless_redis_url_is_given(tmp_path: Path) -> None:
    env = {"CARINA_HOME": str(tmp_path / "home"), "REDIS_PORT": "6390"}
    url = urlsplit(Settings.from_env(env).redis_url)
    assert (url.hostname, url.port, url.path, url.username) == ("127.0.0.1", 6390, "/0", "")
    assert unquote(url.password or "") == redis_password(tmp_path / "home")
    given = Settings.from_env({"CARINA_HOME": str(tmp_path / "h2"), "REDIS_URL": "redis://:pw@db:6379/1"})
    assert given.redis_url == "redis://:pw@db:6379/1" and not (tmp_path / "h2").exists()
    assert "pw" not in repr(given)
