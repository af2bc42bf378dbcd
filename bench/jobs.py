"""Jobs the RQ benchmark enqueues (importable by a worker started from the project root)."""

from __future__ import annotations


def noop() -> None:
    """Do nothing: the cost measured is RQ's own (enqueue, fetch, run, store the result)."""
    return None
