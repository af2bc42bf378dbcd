"""Fixtures for simulator tests: an in-process onesim on a free port with a fake clock and manual ticks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pyone
import pytest

from functions.model.clock import FakeClock
from onesim import lifecycle
from onesim.server import SimHandle, start_simulator


class GuestRecorder:
    """Records the guest calls the simulator delivers (same interface as onesim.guests.GuestManager)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.changed = threading.Condition()

    def start(self, vmid: int, ip: str, context: dict[str, str]) -> None:
        with self.changed:
            self.calls.append(("start", vmid, ip, context))
            self.changed.notify_all()

    def stop(self, vmid: int) -> None:
        with self.changed:
            self.calls.append(("stop", vmid))
            self.changed.notify_all()

    def close(self) -> None:
        pass

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple]:
        """The calls once at least `count` arrived (raises after `timeout`)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.calls) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"only {self.calls} after {timeout}s")
                self.changed.wait(left)
            return list(self.calls)


class Sim:
    """A running simulator plus its fake clock; `advance(s)` moves time and runs one tick."""

    def __init__(self, handle: SimHandle, clock: FakeClock, guests: GuestRecorder) -> None:
        self.guests = guests
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
        recorder = GuestRecorder()
        handle = start_simulator(clock=clock, tick=False, guest_manager=recorder, **kwargs)  # type: ignore[arg-type]
        handles.append(handle)
        return Sim(handle, clock, recorder)

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
