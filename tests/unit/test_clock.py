"""The system clock's skew file (CARINA_CLOCK_SKEW_FILE: the real-stack tests step minutes with it)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from functions.model import clock


@pytest.fixture
def skew_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "clock.skew"
    monkeypatch.setattr(clock, "SKEW_FILE", str(path))
    monkeypatch.setattr(clock, "_skew", [0.0, 0.0])
    return path


def _reread() -> None:
    clock._skew[1] = 0.0                     # as if SKEW_EVERY had passed


def test_without_a_skew_file_setting_the_clock_is_the_systems(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clock, "SKEW_FILE", None)
    before = time.time()
    assert before <= clock.system_clock() <= time.time()


def test_the_clock_runs_ahead_by_the_files_seconds_read_again_after_a_while(skew_file: Path) -> None:
    assert abs(clock.system_clock() - time.time()) < 1          # no file yet: no skew
    skew_file.write_text("120.5")
    _reread()
    assert abs(clock.system_clock() - time.time() - 120.5) < 1
    skew_file.write_text("3600")
    assert abs(clock.system_clock() - time.time() - 120.5) < 1  # read again only after SKEW_EVERY
    _reread()
    assert abs(clock.system_clock() - time.time() - 3600) < 1


@pytest.mark.parametrize("text", ["", "soon", "1e999x", "inf", "nan"])
def test_an_unreadable_skew_keeps_the_last_one(skew_file: Path, text: str) -> None:
    skew_file.write_text("60")
    _reread()
    clock.system_clock()
    skew_file.write_text(text)
    _reread()
    assert abs(clock.system_clock() - time.time() - 60) < 1
