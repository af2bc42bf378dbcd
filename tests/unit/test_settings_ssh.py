"""CARINA_SSH_CHANNELS: the commands run at once on one SSH connection to a master."""

from __future__ import annotations

import pytest

from config.settings import Settings


def test_default_and_value() -> None:
    assert Settings.from_env({}).ssh_channels == 8
    assert Settings.from_env({"CARINA_SSH_CHANNELS": "1"}).ssh_channels == 1


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_bad_values_are_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ValueError, match="CARINA_SSH_CHANNELS"):
        Settings.from_env({"CARINA_SSH_CHANNELS": value})
