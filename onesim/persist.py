"""The simulator's cloud on disk, kept across restarts as oned keeps its database (JSON, never pickle).

Files under `<workdir>/state/`:
- `pool.json`: every VM (ids, states, templates, history, leases, plans, the last MONITORING_SAVED monitoring
  records), the VM templates, host states, lease cursors and the id sequences. A background thread rewrites it
  atomically (temp file, fsync, os.replace, fsync of the directory) at most every FLUSH_SECONDS while something
  changed, and once more at a clean stop. Only VMs whose `Vm.rev` moved are serialized again.
- `ids.json`: the id ceilings. Before an allocate could hand out an id at or above its ceiling, a new ceiling
  (next id + ID_BLOCK) is written synchronously, so ids never go backwards, not even after a crash.

What a crash (SIGKILL, power loss) can lose: the changes of the last flush interval (0.5 s, longer for pools
so large that a write takes more than FLUSH_SECONDS / 4), and up to ID_BLOCK unused ids (skipped, never reused).
Monitoring records are written with their VM when it changes and at a clean stop. Delays and injected faults
are settings of a run and are not kept.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from onesim import states as S
from onesim.api import Api
from onesim.model import History, Model, Vm, VmTemplateObj
from onesim.template import Template

log = logging.getLogger("onesim")
FORMAT = 1
STATE_DIR = "state"
POOL_FILE = "pool.json"
IDS_FILE = "ids.json"
ID_BLOCK = 100
MONITORING_SAVED = 20
FLUSH_SECONDS = 0.5
MAX_FLUSH_SECONDS = 5.0
ALLOCATING = ("one.vm.allocate", "one.template.allocate", "one.template.instantiate")
_REQUIRED = ("id", "uid", "gid", "uname", "gname", "name", "cpu", "memory_mb", "vcpu", "stime")
_OPTIONAL = ("state", "lcm", "prev_state", "prev_lcm", "resched", "etime", "deploy_id", "host_id", "step_at",
             "redeploy", "cpu_pct", "last_poll")


class StateError(ValueError):
    """The saved state cannot be read; the message names the file and how to start afresh."""


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
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: cannot read the saved cloud ({exc}); start with --fresh to discard it") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StateError(f"{path}: not a format {FORMAT} state file; start with --fresh to discard it")
    return data


def wipe(workdir: Path) -> None:
    """Forget the saved cloud of `workdir`: the state files, the VM sandboxes, synthetic guests' secrets and logs.
    Other files are left alone. Safe to run twice."""
    shutil.rmtree(workdir / STATE_DIR, ignore_errors=True)
    for path in workdir.glob("vm-*"):
        if path.is_dir() and path.name[3:].isdigit():
            shutil.rmtree(path, ignore_errors=True)
    for name in ("synthetic-ssh.log", "synthetic-hostkey.seed"):
        (workdir / name).unlink(missing_ok=True)


# ---- records ----------------------------------------------------------------------------------------------
def _template_in(raw: list) -> Template:
    return [(str(k), {str(a): str(b) for a, b in v.items()} if isinstance(v, dict) else str(v)) for k, v in raw]


def vm_record(vm: Vm) -> dict[str, Any]:
    """The JSON-ready record of `vm` (read-only)."""
    rec: dict[str, Any] = {name: getattr(vm, name) for name in _REQUIRED + _OPTIONAL}
    rec.update(template=[list(a) for a in vm.template], user_template=[list(a) for a in vm.user_template],
               context=vm.context, history=[asdict(h) for h in vm.history], plan=[list(p) for p in vm.plan],
               leases=[list(lease) for lease in vm.leases], monitoring=list(vm.monitoring)[-MONITORING_SAVED:])
    return rec


def vm_from_record(rec: dict[str, Any]) -> Vm:
    """A Vm from its record (not registered anywhere). Raises KeyError/TypeError/ValueError on a bad record."""
    vm = Vm(**{name: rec[name] for name in _REQUIRED}, template=_template_in(rec["template"]),
            user_template=_template_in(rec["user_template"]),
            context={str(k): str(v) for k, v in rec["context"].items()})
    for name in _OPTIONAL:
        if name in rec:
            setattr(vm, name, rec[name])
    vm.history = [History(**h) for h in rec.get("history", [])]
    vm.plan = [(str(n), int(s), int(lcm)) for n, s, lcm in rec.get("plan", [])]
    vm.leases = [(int(net), str(ip)) for net, ip in rec.get("leases", [])]
    vm.monitoring.extend(dict(m) for m in rec.get("monitoring", []))
    return vm


def _template_record(t: VmTemplateObj) -> dict[str, Any]:
    return {**asdict(t), "template": [list(a) for a in t.template]}


def _template_from_record(rec: dict[str, Any]) -> VmTemplateObj:
    return VmTemplateObj(**{**rec, "template": _template_in(rec["template"])})


def _header(model: Model) -> dict[str, Any]:
    return {"format": FORMAT, "next_vm_id": model.next_vm_id, "next_template_id": model.next_template_id,
            "templates": [_template_record(t) for _, t in sorted(model.templates.items())],
            "hosts": {str(h): host.state for h, host in model.hosts.items()},
            "cursors": {str(n): net.cursor for n, net in model.networks.items()}}


# ---- loading ----------------------------------------------------------------------------------------------
def _restore_vm(model: Model, vm: Vm) -> None:
    """Register a loaded VM: host accounting and leases (both rebuilt from the VM, not trusted from the file)."""
    if vm.host_id is not None:
        host = model.hosts.get(vm.host_id)
        if host is None:
            log.warning("vm %s: host %s is not in the inventory any more; the VM has no host", vm.id, vm.host_id)
            vm.host_id = None
        else:
            host.vms.add(vm.id)
    for net_id, ip in [] if vm.state == S.DONE else vm.leases:
        net = model.networks.get(net_id)
        off = net.offset_of(ip) if net is not None else None
        if net is None or off is None or off in net.leased:
            log.warning("vm %s: lease %s of network %s cannot be restored", vm.id, ip, net_id)
            continue
        net.leased[off] = vm.id
    vm.last_monitor = 0.0
    model.vms[vm.id] = vm


def _restore(model: Model, pool: dict[str, Any]) -> None:
    for rec in pool.get("templates", []):
        tmpl = _template_from_record(rec)
        model.templates[tmpl.id] = tmpl
    for hid, state in pool.get("hosts", {}).items():
        if int(hid) in model.hosts:
            model.hosts[int(hid)].state = int(state)
    for nid, cursor in pool.get("cursors", {}).items():
        net = model.networks.get(int(nid))
        if net is not None:
            net.cursor = int(cursor) % net.spec.size
    for rec in pool.get("vms", []):
        _restore_vm(model, vm_from_record(rec))
    model.next_vm_id = max([int(pool.get("next_vm_id", 0)), *(v + 1 for v in model.vms)])
    model.next_template_id = max([int(pool.get("next_template_id", 0)), *(t + 1 for t in model.templates)])
    model.capacity_epoch += 1


class Persister:
    """Saves one model under `<workdir>/state/`. Call load() once before serving, then start(), then close()."""

    def __init__(self, workdir: Path) -> None:
        self.dir = Path(workdir).resolve() / STATE_DIR
        self.ceilings = {"vm": 0, "template": 0}
        self._cache: dict[int, tuple[int, str]] = {}  # vmid -> (rev, JSON text)
        self._header = ""
        self._unsaved = False
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load(self, model: Model) -> list[int]:
        """Restore the saved cloud into a fresh `model` (caller holds its lock) and reserve a block of ids.

        Returns the ids of RUNNING VMs (their guests are to be started again). With nothing saved the model is
        unchanged. Raises StateError for an unreadable file (nothing is overwritten then)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        pool = _read(self.dir / POOL_FILE)
        ids = _read(self.dir / IDS_FILE) or {}
        if pool is not None:
            try:
                _restore(model, pool)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise StateError(f"{self.dir / POOL_FILE}: bad record ({type(exc).__name__}: {exc}); "
                                 "start with --fresh to discard it") from None
        model.next_vm_id = max(model.next_vm_id, int(ids.get("vm", 0)))
        model.next_template_id = max(model.next_template_id, int(ids.get("template", 0)))
        self.reserve(model, force=True)
        self._collect(model, refresh=True)
        self._unsaved = False
        running = [v.id for v in model.vms.values() if (v.state, v.lcm) == (S.ACTIVE, S.RUNNING)]
        if pool is not None:
            log.info("loaded %d VM(s) and %d template(s) from %s (next VM id %d)", len(model.vms),
                     len(model.templates), self.dir, model.next_vm_id)
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

    def _collect(self, model: Model, refresh: bool = False) -> list[str] | None:
        """Under the model lock: the VM texts to write, or None when nothing changed since the last collect.
        `refresh` serializes every VM again (fresh monitoring)."""
        changed = refresh or self._unsaved or len(self._cache) != len(model.vms)
        for vmid in [v for v in self._cache if v not in model.vms]:
            del self._cache[vmid]
            changed = True
        for vmid, vm in model.vms.items():
            cached = self._cache.get(vmid)
            if refresh or cached is None or cached[0] != vm.rev:
                self._cache[vmid] = (vm.rev, json.dumps(vm_record(vm), separators=(",", ":")))
                changed = True
        header = json.dumps(_header(model), separators=(",", ":"))
        if header != self._header:
            self._header, changed = header, True
        if not changed:
            return None
        return [self._cache[v][1] for v in sorted(model.vms)]

    def flush(self, model: Model, refresh: bool = False) -> bool:
        """Write pool.json if anything changed (True if written). Takes the model lock only to collect.
        Raises OSError if the write fails (the next flush writes again)."""
        with self._write_lock:
            with model.lock:
                parts = self._collect(model, refresh)
                header = self._header
                if model.next_vm_id >= self.ceilings["vm"] or model.next_template_id >= self.ceilings["template"]:
                    self.reserve(model)  # an id was taken without guard(): never let the ceiling lag
            if parts is None:
                return False
            self._unsaved = True
            data = header[:-1] + ',"vms":[' + ",".join(parts) + "]}"
            write_atomic(self.dir / POOL_FILE, data.encode())
            self._unsaved = False
            return True

    def start(self, model: Model) -> None:
        """Start the background flusher (at most every FLUSH_SECONDS; slower if writes take long)."""
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
        """Stop the flusher, write everything once more and lower the id ceilings to the exact next ids (a clean
        stop skips no id). Safe to run twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(MAX_FLUSH_SECONDS * 2)
        try:
            self.flush(model, refresh=True)
            with model.lock:
                ceilings = {"vm": model.next_vm_id, "template": model.next_template_id}
                write_atomic(self.dir / IDS_FILE, json.dumps({"format": FORMAT, **ceilings}).encode())
                self.ceilings = ceilings
        except OSError:
            log.exception("cannot save the cloud to %s at stop", self.dir)
