"""The simulator's cloud on disk, kept across restarts as oned keeps its database (JSON, never pickle).

Files under `<workdir>/state/` (the records themselves: onesim.records):
- `pool.json`, a snapshot: the header (id sequences, VM templates, host states, lease cursors) and every VM,
  written atomically (temp file, fsync, os.replace, fsync of the directory). It names its journal.
- `journal-<generation>.jsonl`: what changed since that snapshot, one JSON object a line (`{"vm": record}`,
  `{"gone": id}`, `{"header": ...}`), appended and fsynced by a background thread at most every FLUSH_SECONDS
  while something changed. Only VMs whose `Vm.rev` moved are written. Once the journal outgrows the snapshot
  (and COMPACT_MIN_BYTES), a new snapshot with a new, empty journal replaces both: disk traffic stays
  proportional to the changes, not to the pool.
- `ids.json`: id ceilings. Before an allocate could hand out an id at or above its ceiling, a new ceiling
  (next id + ID_BLOCK) is written synchronously, so ids never go backwards, not even after a crash.

Loading reads the snapshot, replays its journal (a torn last line, left by a crash, is ignored), rebuilds the
model and writes a fresh snapshot. A clean stop writes a fresh snapshot (monitoring included) and lowers the
id ceilings to the exact next ids, so it skips no id.
What a crash (SIGKILL, power loss) can lose: the changes of the last flush interval (FLUSH_SECONDS; longer only
while writes are slow), and up to ID_BLOCK unused ids (skipped, never reused). Monitoring records are written
with their VM when it changes and at a clean stop. Delays and injected faults belong to a run and are not kept.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from onesim import states as S
from onesim.api import Api
from onesim.model import Model
from onesim.records import FORMAT, header, restore, vm_record
from onesim.sandbox import ID_FILE, forget

log = logging.getLogger("onesim")
STATE_DIR = "state"
POOL_FILE = "pool.json"
IDS_FILE = "ids.json"
ID_BLOCK = 100
FLUSH_SECONDS = 0.5
MAX_FLUSH_SECONDS = 5.0
COMPACT_MIN_BYTES = 1 << 20
ALLOCATING = ("one.vm.allocate", "one.template.allocate", "one.template.instantiate")
_FRESH = "; start with --fresh to discard it"


class StateError(ValueError):
    """The saved state cannot be read; the message names the file and how to start afresh."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` by `data`: temp file, fsync, os.replace, fsync of the directory. Safe to run twice."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: cannot read the saved cloud ({exc}){_FRESH}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StateError(f"{path}: not a format {FORMAT} state file{_FRESH}")
    return data


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The entries of a journal; a torn last line (a crash mid-append) is dropped. Raises StateError for a bad
    line before the last."""
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StateError(f"{path}: cannot read the journal ({exc}){_FRESH}") from None
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except ValueError:
            if any(rest.strip() for rest in lines[number:]):
                raise StateError(f"{path}: line {number} is not JSON{_FRESH}") from None
            log.warning("%s: ignored a torn last line (the simulator was killed while saving)", path)
    return entries


def load_records(state: Path) -> tuple[int, dict[str, Any], dict[int, dict[str, Any]]] | None:
    """(generation, header, VM records by id) from the snapshot and its journal in `state`; None if none saved."""
    pool = _read_json(state / POOL_FILE)
    if pool is None:
        return None
    try:
        gen = int(pool.get("generation", 0))
        head = dict(pool.get("header", {}))
        vms = {int(rec["id"]): rec for rec in pool.get("vms", [])}
        for entry in read_journal(state / f"journal-{gen}.jsonl"):
            if "vm" in entry:
                vms[int(entry["vm"]["id"])] = entry["vm"]
            elif "gone" in entry:
                vms.pop(int(entry["gone"]), None)
            elif "header" in entry:
                head = dict(entry["header"])
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"{state}: bad record ({type(exc).__name__}: {exc}){_FRESH}") from None
    return gen, head, vms


def wipe(workdir: Path) -> None:
    """Forget the saved cloud of `workdir`: the state files, the VM sandboxes (onesim.sandbox.forget), synthetic
    guests' host-key seed and log. Other files are left alone. Safe to run twice."""
    shutil.rmtree(workdir / STATE_DIR, ignore_errors=True)
    forget(workdir)
    for path in workdir.glob("vm-*"):
        if path.is_dir() and path.name[3:].isdigit():
            shutil.rmtree(path, ignore_errors=True)
    for name in ("synthetic-ssh.log", "synthetic-hostkey.seed", ID_FILE):
        (workdir / name).unlink(missing_ok=True)


class Persister:
    """Saves one model under `<workdir>/state/`. Call load() once before serving, then start(), then close()."""

    def __init__(self, workdir: Path) -> None:
        self.dir = Path(workdir).resolve() / STATE_DIR
        self.ceilings = {"vm": 0, "template": 0}
        self._cache: dict[int, tuple[int, str]] = {}  # vmid -> (rev, JSON text of its record)
        self._header = ""
        self._gen = 0
        self._journal_bytes = 0
        self._snapshot_bytes = 0
        self._compact_next = True  # a fresh snapshot is due (at load, and after a failed write)
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load(self, model: Model) -> list[int]:
        """Restore the saved cloud into a fresh `model`, reserve a block of ids, write a fresh snapshot.

        Returns the ids of RUNNING VMs (their guests are to be booted again). With nothing saved the model is
        unchanged. Raises StateError for an unreadable state (nothing is overwritten then), OSError if the
        state directory cannot be written."""
        self.dir.mkdir(parents=True, exist_ok=True)
        loaded = load_records(self.dir)
        ids = _read_json(self.dir / IDS_FILE) or {}
        with model.lock:
            if loaded is not None:
                self._gen, head, vms = loaded
                try:
                    restore(model, head, [vms[v] for v in sorted(vms)])
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    raise StateError(f"{self.dir / POOL_FILE}: bad record ({type(exc).__name__}: {exc}){_FRESH}") \
                        from None
                log.info("loaded %d VM(s) and %d template(s) from %s", len(model.vms), len(model.templates), self.dir)
            model.next_vm_id = max(model.next_vm_id, int(ids.get("vm", 0)))
            model.next_template_id = max(model.next_template_id, int(ids.get("template", 0)))
            self.reserve(model, force=True)
            running = [v.id for v in model.vms.values() if (v.state, v.lcm) == (S.ACTIVE, S.RUNNING)]
        self.flush(model, compact=True)
        return running

    def reserve(self, model: Model, force: bool = False) -> None:
        """Make sure the next VM and template ids are below the saved ceilings (writes ids.json if not).
        Caller holds the model lock. Raises OSError if the ceiling cannot be saved."""
        if not force and model.next_vm_id < self.ceilings["vm"] and model.next_template_id < self.ceilings["template"]:
            return
        ceilings = {"vm": model.next_vm_id + ID_BLOCK, "template": model.next_template_id + ID_BLOCK}
        write_atomic(self.dir / IDS_FILE, json.dumps({"format": FORMAT, **ceilings}).encode())
        self.ceilings = ceilings

    def guard(self, api: Api) -> None:
        """Wrap the id-allocating methods of `api` so that reserve() runs before each of them."""
        for name in ALLOCATING:
            method = api.methods[name]
            api.methods[name] = replace(method, fn=self._guarded(api.model, method.fn))

    def _guarded(self, model: Model, fn: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any) -> Any:
            self.reserve(model)
            return fn(*args)
        return guarded

    def _changes(self, model: Model, refresh: bool) -> list[str]:
        """Under the model lock: journal lines for what changed since the last call (updates the cache).
        `refresh` serializes every VM again (fresh monitoring)."""
        lines = []
        for vmid in [v for v in self._cache if v not in model.vms]:
            del self._cache[vmid]
            lines.append(f'{{"gone":{vmid}}}')
        for vmid, vm in model.vms.items():
            cached = self._cache.get(vmid)
            if refresh or cached is None or cached[0] != vm.rev:
                text = json.dumps(vm_record(vm), separators=(",", ":"))
                self._cache[vmid] = (vm.rev, text)
                lines.append(f'{{"vm":{text}}}')
        head = json.dumps(header(model), separators=(",", ":"))
        if head != self._header:
            self._header = head
            lines.append(f'{{"header":{head}}}')
        return lines

    def flush(self, model: Model, refresh: bool = False, compact: bool = False) -> bool:
        """Save what changed: append to the journal, or write a new snapshot when due or `compact`.
        True if anything was written. Takes the model lock only to collect. Raises OSError if a write fails
        (the next flush then writes a full snapshot)."""
        with self._write_lock:
            with model.lock:
                lines = self._changes(model, refresh)
                if model.next_vm_id >= self.ceilings["vm"] or model.next_template_id >= self.ceilings["template"]:
                    self.reserve(model)  # an id was taken without guard(): never let the ceiling lag
                size = sum(len(line) + 1 for line in lines)
                compact = compact or self._compact_next or (
                    bool(lines) and self._journal_bytes + size > max(COMPACT_MIN_BYTES, self._snapshot_bytes))
                parts = [self._cache[v][1] for v in sorted(model.vms)] if compact else []
                head = self._header
            if compact:
                self._snapshot(head, parts)
            elif lines:
                self._append(lines)
            return compact or bool(lines)

    def _snapshot(self, head: str, parts: list[str]) -> None:
        self._compact_next = True
        gen = self._gen + 1
        journal = self.dir / f"journal-{gen}.jsonl"
        write_atomic(journal, b"")
        data = f'{{"format":{FORMAT},"generation":{gen},"header":{head},"vms":[{",".join(parts)}]}}'.encode()
        write_atomic(self.dir / POOL_FILE, data)
        for old in self.dir.glob("journal-*.jsonl"):
            if old != journal:
                old.unlink(missing_ok=True)
        self._gen, self._journal_bytes, self._snapshot_bytes, self._compact_next = gen, 0, len(data), False

    def _append(self, lines: list[str]) -> None:
        data = ("\n".join(lines) + "\n").encode()
        try:
            with open(self.dir / f"journal-{self._gen}.jsonl", "ab") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError:
            self._compact_next = True  # never append after a possibly torn line
            raise
        self._journal_bytes += len(data)

    def start(self, model: Model) -> None:
        """Start the background flusher (at most every FLUSH_SECONDS; less often while writes are slow)."""
        self._thread = threading.Thread(target=self._run, args=(model,), name="onesim-persist", daemon=True)
        self._thread.start()

    def _run(self, model: Model) -> None:
        wait = FLUSH_SECONDS
        while not self._stop.wait(wait):
            started = time.monotonic()
            try:
                self.flush(model)
            except OSError:
                log.exception("cannot save the cloud to %s", self.dir)
            wait = min(MAX_FLUSH_SECONDS, max(FLUSH_SECONDS, 4 * (time.monotonic() - started)))

    def close(self, model: Model) -> None:
        """Stop the flusher, write a fresh snapshot and lower the id ceilings to the exact next ids (a clean
        stop skips no id). Safe to run twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(MAX_FLUSH_SECONDS * 2)
        try:
            self.flush(model, refresh=True, compact=True)
            with model.lock:
                ceilings = {"vm": model.next_vm_id, "template": model.next_template_id}
                write_atomic(self.dir / IDS_FILE, json.dumps({"format": FORMAT, **ceilings}).encode())
                self.ceilings = ceilings
        except OSError:
            log.exception("cannot save the cloud to %s at stop", self.dir)
