"""CARINA_HOME is made absolute once, at start, from the working directory of that moment."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import Settings, home_from_env


def test_a_relative_home_is_resolved_against_the_start_directory(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert home_from_env({}) == tmp_path.resolve() / "var"
    assert home_from_env({"CARINA_HOME": "data/../home"}) == tmp_path.resolve() / "home"
    settings = Settings.from_env({"CARINA_HOME": "rel"})
    monkeypatch.chdir("/")
    assert settings.home == tmp_path.resolve() / "rel" and settings.home.is_absolute()


def test_an_absolute_home_is_kept(tmp_path: Path) -> None:
    assert Settings.from_env({"CARINA_HOME": str(tmp_path / "h")}).home == tmp_path.resolve() / "h"
