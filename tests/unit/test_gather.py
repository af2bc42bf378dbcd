"""cbfold.gather_wait: how long a drain lets its oldest callback wait under a stream of callbacks (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from functions.model.cbfold import gather_wait

GATHER, RECENT, STREAM = 0.04, 0.05, 8
seconds = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False)


@given(since_last=seconds, applied=st.integers(0, 3000), oldest=st.floats(0, 2e9, allow_nan=False),
       now=st.floats(0, 2e9, allow_nan=False))
def test_the_wait_is_bounded_and_only_under_a_stream(since_last: float, applied: int, oldest: float,
                                                     now: float) -> None:
    wait = gather_wait(since_last, applied, oldest, now, GATHER, RECENT, STREAM)
    assert 0.0 <= wait <= GATHER
    stream = applied >= STREAM and 0 <= since_last < RECENT and oldest > 0
    if not stream:
        assert wait == 0.0
    else:                                       # until the oldest callback is GATHER old, and no longer
        assert wait == min(GATHER, max(0.0, oldest + GATHER - now))


def test_examples() -> None:
    assert gather_wait(0.01, 20, 100.0, 100.0, GATHER, RECENT, STREAM) == GATHER       # just queued: wait it all
    assert abs(gather_wait(0.01, 20, 100.0, 100.03, GATHER, RECENT, STREAM) - 0.01) < 1e-9  # the rest of it
    assert gather_wait(0.01, 20, 100.0, 100.5, GATHER, RECENT, STREAM) == 0.0          # old enough already
    assert gather_wait(0.01, 1, 100.0, 100.0, GATHER, RECENT, STREAM) == 0.0           # the last drain took one
    assert gather_wait(0.2, 20, 100.0, 100.0, GATHER, RECENT, STREAM) == 0.0           # the last drain was long ago
    assert gather_wait(0.01, 20, 0.0, 100.0, GATHER, RECENT, STREAM) == 0.0            # no time on the entry
