"""Where process guests live (outside the simulator's state, kept across restarts, dropped with the cloud) and as
whom they run (onesim.sandbox)."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from onesim.persist import wipe
from onesim.sandbox import (
    BASE,
    ID_FILE,
    GuestUser,
    SandboxError,
    forget,
    guest_user,
    hand_over,
    prepare_root,
    sandbox_root,
)
from tests.harness import guest_root

NOT_ISOLATED = GuestUser("nobody-here", reason="test")


@pytest.fixture
def root() -> Iterator[Path]:
    path = guest_root()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_the_default_root_is_outside_the_workdir_and_follows_the_cloud(tmp_path: Path) -> None:
    work, other = tmp_path / "a", tmp_path / "b"
    work.mkdir()
    other.mkdir()
    first = sandbox_root(work, env={})
    try:
        assert first.parent == BASE / f"onesim-guests-{os.geteuid()}" and not first.is_relative_to(work)
        assert sandbox_root(work, env={}) == first != sandbox_root(other, env={})    # same cloud, same root
        assert (work / ID_FILE).is_file()
        assert sandbox_root(work, env={"ONESIM_GUEST_ROOT": str(tmp_path / "x" / ".." / "g")}) == tmp_path / "g"
        prepare_root(work, first, NOT_ISOLATED)
        (first / "vm-1").mkdir()
        wipe(work)                                           # --fresh: the sandboxes go, the next cloud gets new ones
        assert not first.exists() and not (work / ID_FILE).exists()
        assert sandbox_root(work, env={}) != first
    finally:
        for path in (work, other):
            shutil.rmtree(sandbox_root(path, env={}), ignore_errors=True)


def test_another_clouds_sandboxes_are_dropped_and_old_ones_moved_in(tmp_path: Path, root: Path) -> None:
    (root / "vm-4").mkdir()
    (root / "vm-4" / "stale").write_text("from a cloud that is gone")
    (root / "notes.txt").write_text("not a sandbox")
    (tmp_path / "vm-7" / "home").mkdir(parents=True)       # a sandbox of the old layout, inside the workdir
    assert prepare_root(tmp_path, root, NOT_ISOLATED) == []
    assert mode(root) == 0o700
    assert sorted(p.name for p in root.iterdir()) == ["cloud.id", "notes.txt", "vm-7"]
    assert not (tmp_path / "vm-7").exists() and (root / "vm-7" / "home").is_dir()
    (root / "vm-8").mkdir()
    prepare_root(tmp_path, root, NOT_ISOLATED)               # the same cloud again: nothing dropped
    assert (root / "vm-8").is_dir()
    forget(tmp_path, env={"ONESIM_GUEST_ROOT": str(root)})
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]


def test_an_unsafe_root_is_refused(tmp_path: Path, root: Path) -> None:
    root.chmod(0o777)
    with pytest.raises(SandboxError, match="refusing"):
        prepare_root(tmp_path, root, NOT_ISOLATED)
    link = root.parent / f"{root.name}-link"
    link.symlink_to(root)
    try:
        root.chmod(0o700)
        with pytest.raises(SandboxError, match="refusing"):
            prepare_root(tmp_path, link, NOT_ISOLATED)
    finally:
        link.unlink()


def test_guest_user_is_refused_when_it_is_root_or_missing() -> None:
    assert guest_user({"ONESIM_GUEST_USER": "no-such-user-here"}).reason
    assert not guest_user({"ONESIM_GUEST_USER": "root"}).isolated
    assert GuestUser("x", 5, 6).popen_kwargs() == {"user": 5, "group": 6, "extra_groups": []}


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_an_isolated_root_and_home_belong_where_they_should(tmp_path: Path, root: Path) -> None:
    user = GuestUser("guest", 65534, 65534)
    assert prepare_root(tmp_path, root, user) == []
    assert mode(root) == 0o711 and root.stat().st_uid == 0
    home = root / "vm-1" / "home" / "local"
    (home / ".ssh").mkdir(parents=True)
    (root / "vm-1" / "mnt").mkdir()
    (home / ".ssh" / "authorized_keys").write_text("key\n")
    secret = tmp_path / "controller-secret"
    secret.write_text("x")
    (home / "link").symlink_to(secret)
    hand_over(home, user)
    assert home.stat().st_uid == 65534 and mode(home) == 0o700
    assert (home / ".ssh" / "authorized_keys").stat().st_uid == 65534
    assert secret.stat().st_uid == 0 and (home / "link").lstat().st_uid == 65534       # the link, not its target
    assert (root / "vm-1").stat().st_uid == 0 and mode(root / "vm-1") == mode(root / "vm-1" / "mnt") == 0o755
    hand_over(home, NOT_ISOLATED)                                                        # no-op
    assert home.stat().st_uid == 65534
