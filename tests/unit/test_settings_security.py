"""The security settings: callback rate and burst, upload quota (defaults, values, refusals)."""

from __future__ import annotations

import pytest

from config.settings import Settings


def test_defaults_and_values() -> None:
    default = Settings.from_env({})
    assert (default.callback_rate, default.callback_burst, default.upload_quota) == (60, 20, 64 * 1024 * 1024)
    custom = Settings.from_env({"CARINA_CALLBACK_RATE": "120", "CARINA_CALLBACK_BURST": "5",
                                "CARINA_UPLOAD_QUOTA": "1048576"})
    assert (custom.callback_rate, custom.callback_burst, custom.upload_quota) == (120, 5, 1048576)


@pytest.mark.parametrize("name", ["CARINA_CALLBACK_RATE", "CARINA_CALLBACK_BURST", "CARINA_UPLOAD_QUOTA"])
@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_bad_values_are_refused_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value})
