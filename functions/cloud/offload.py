"""Big pool answers fetched and read in a helper process, off the process that runs the minute tick.

Reading 100,000 VMs' short bodies (~190 MB of XML-RPC a minute: the HTTP read and fastxml.short_rows, ~5 us a
VM) was a third of the tick's CPU, all of it under the one GIL the tick's Redis work and policy pass need too.
`observe_rows` has a helper process (a ProcessPoolExecutor of HELPERS, started by forkserver on first use and kept
for the life of the process) make the same calls as OneClient.observe_rows and send back only the numbers, packed
in arrays (~40 bytes a VM): this process spends ~1 us a VM rebuilding the rows. Only ids and numbers cross the
pipe, never anything OpenNebula wrote as text. A helper that dies is replaced on the next call; that call fails
as OneUnavailable (the refresh then counts the endpoint as not answering for a minute).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import threading
import time
from array import array
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from functions.cloud.fastxml import VmRow
from functions.cloud.one import OneClient, OneError, OneUnavailable

MIN_IDS = 5000                  # fewer VM ids than this: read in this process (a helper's round trip is ~1 ms)
HELPERS = 2                     # helper processes (the refresh asks OBSERVERS endpoints at once)
OWNER_CHECK = 5.0               # seconds between a helper's checks that its owner still lives
Packed = tuple[bytes, bytes, bytes, bytes, bytes]     # ids, STATE, LCM_STATE, STIME (int64), CPU (float64, NaN: none)

_POOL: ProcessPoolExecutor | None = None
_GUARD = threading.Lock()


def _pool() -> ProcessPoolExecutor:
    global _POOL
    with _GUARD:
        if _POOL is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__])      # not the default ['__main__']: never re-run a script
            _POOL = ProcessPoolExecutor(HELPERS, mp_context=context, initializer=_watch_owner,
                                        initargs=(os.getpid(),))
        return _POOL


def _watch_owner(owner: int) -> None:
    """In a helper: exit once the process that owns the pool is gone (an RQ work horse that forked the pool
    ends with os._exit, so the pool is never shut down)."""
    def watch() -> None:
        while True:
            time.sleep(OWNER_CHECK)
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass
    threading.Thread(target=watch, name="owner-watch", daemon=True).start()


def _drop(pool: ProcessPoolExecutor) -> None:
    global _POOL
    with _GUARD:
        if _POOL is pool:
            _POOL = None
    pool.shutdown(wait=False, cancel_futures=True)


def helper_pids() -> list[int]:
    """The helper processes' pids (benchmarks count their CPU with this process's)."""
    with _GUARD:
        return list(getattr(_POOL, "_processes", None) or {}) if _POOL is not None else []


def pack(rows: Sequence[VmRow]) -> Packed:
    """The rows' numbers as arrays' bytes. Pure."""
    return (array("q", [r.vmid for r in rows]).tobytes(), array("q", [r.state for r in rows]).tobytes(),
            array("q", [r.lcm_state for r in rows]).tobytes(), array("q", [r.stime for r in rows]).tobytes(),
            array("d", [math.nan if r.cpu is None else r.cpu for r in rows]).tobytes())


def unpack(packed: Packed) -> dict[int, VmRow]:
    """vmid -> row (no tags, no IP) from `pack`'s arrays. Pure."""
    ids, states, lcms, stimes = (array("q", part) for part in packed[:4])
    cpus = array("d", packed[4])
    empty: dict[str, str] = {}
    return {vmid: VmRow(vmid, state, lcm, stime, empty, "", None if cpu != cpu else cpu)
            for vmid, state, lcm, stime, cpu in zip(ids, states, lcms, stimes, cpus, strict=True)}


def _fetch(proxy: str, auth: str, vmids: list[int]) -> tuple[str, Packed | tuple[int, str]]:
    """In a helper: OneClient.observe_rows packed, or the error as plain values (exceptions with their own
    constructor arguments do not cross the pipe intact)."""
    try:
        rows = OneClient(proxy, auth).observe_rows(vmids)
    except OneError as exc:
        return "error", (exc.code, exc.message)
    except OneUnavailable as exc:
        return "unavailable", (-1, str(exc))
    return "ok", pack(list(rows.values()))


def observe_rows(proxy: str, auth: str, vmids: Sequence[int]) -> dict[int, VmRow]:
    """OneClient(proxy, auth).observe_rows(vmids), made by a helper process when there are MIN_IDS ids or more
    (in this process otherwise). Raises OneError / OneUnavailable as the client would. Read-only."""
    ids = [int(v) for v in vmids]
    if len(ids) < MIN_IDS:
        return OneClient(proxy, auth).observe_rows(ids)
    pool = _pool()
    try:
        kind, value = pool.submit(_fetch, proxy, auth, ids).result()
    except (BrokenProcessPool, OSError, RuntimeError) as exc:
        _drop(pool)
        raise OneUnavailable(f"[vmpool.infoset] helper process: {type(exc).__name__}: {exc}") from None
    if kind == "error":
        code, message = value
        raise OneError(int(code), str(message))
    if kind == "unavailable":
        raise OneUnavailable(str(value[1]))
    return unpack(value)  # type: ignore[arg-type]
