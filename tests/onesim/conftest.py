"""Fixtures for simulator tests: an in-process onesim on a free port with a fake clock and manual ticks."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyone
import pytest

from functions.clock import FakeClock
from onesim import lifecycle
from onesim.server import SimHandle, start_simulator


class Sim:
    """A running simulator plus its fake clock; `advance(s)` moves time and runs one tick."""

    def __init__(self, handle: SimHandle, clock: FakeClock) -> None:
        self.handle = handle
        self.clock = clock
        self.model = handle.model

    def advance(self, seconds: float = 0.0) -> None:
        self.clock.advance(seconds)
        with self.model.lock:
            lifecycle.tick(self.model)

    def client(self, session: str | None = None) -> pyone.OneServer:
        return pyone.OneServer(self.handle.url, session=session or self.handle.auth)


@pytest.fixture
def make_sim() -> Iterator[Callable[..., Sim]]:
    """Factory: make_sim(delays=..., inventory=...) -> Sim (no background ticker; time moves only on advance)."""
    handles: list[SimHandle] = []

    def make(**kwargs: object) -> Sim:
        clock = FakeClock()
        handle = start_simulator(clock=clock, tick=False, **kwargs)  # type: ignore[arg-type]
        handles.append(handle)
        return Sim(handle, clock)

    yield make
    for handle in handles:
        handle.stop()


@pytest.fixture
def sim(make_sim: Callable[..., Sim]) -> Sim:
    """A simulator with zero delays and the default inventory."""
    return make_sim()


@pytest.fixture
def one(sim: Sim) -> pyone.OneServer:
    """A pyone client of `sim`, authenticated as oneadmin."""
    return sim.client()
