"""The minute pass runs with Python's cyclic GC paused (functions.upkeep.ticks.gc_paused)."""

from __future__ import annotations

import gc

import pytest

from functions.upkeep.ticks import gc_paused


def test_the_collector_is_off_inside_and_back_on_after_even_after_an_error() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():                                  # nested: the inner end does not turn it on
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("a pass that failed")
    assert gc.isenabled()


def test_a_collector_someone_turned_off_stays_off() -> None:
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
