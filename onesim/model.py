"""The simulator's world: hosts, networks, images, users, templates and VMs behind one lock.

Callers hold `model.lock` around every read or change. Guest start/stop events are queued on
`model.guest_events` (in order) and delivered by the server outside the lock.

Change tracking (what keeps the big pools fast): every assignment to a field of a `Vm` bumps its `version`,
but a field of its monitoring (MONITORING_FIELDS: rendered in LAST_POLL and MONITORING only) bumps its
`mon_version` (see `Vm.__setattr__`); an in-place change (appending to `history`, editing a history record)
calls `vm.touch()` (both move), a new monitoring record `vm.touch_monitoring()`. The pool caches
(onesim.poolcache) re-render a VM's LAST_POLL and MONITORING only when its mon_version moved, the rest only
when its version did.
Templates are replaced, never edited in place. The tick's work sets (`planned`, `pending`, `monitor_due`)
are kept by `add_vm`, `drop_vm`, `refile` and `record_monitoring`; `reindex()` rebuilds them (the tick
calls it by itself when `vms` was replaced or changed size behind add_vm/drop_vm, e.g. after a load).
"""

from __future__ import annotations

import heapq
import ipaddress
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from onesim import states as S
from onesim.inventory import HostSpec, ImageSpec, Inventory, NetworkSpec, UserSpec
from onesim.placement import Candidate, HostValue, PlacementError, choose_host, compile_rank, compile_requirements
from onesim.template import Template, first_str

Clock = Callable[[], float]
DELAY_NAMES = ("schedule", "prolog", "boot", "shutdown", "epilog", "save", "monitor")
ZERO_DELAYS = {name: 0.0 for name in DELAY_NAMES} | {"monitor": 5.0}
DEFAULT_DELAYS = {"schedule": 1.0, "prolog": 1.0, "boot": 2.0, "shutdown": 1.0, "epilog": 1.0, "save": 1.0,
                  "monitor": 5.0}
MONITORING_KEEP = 200  # records kept per VM
# Vm fields whose assignment does not bump Vm.rev (monitoring and scheduler bookkeeping, not worth a save)
QUIET_FIELDS = frozenset({"rev", "version", "mon_version", "last_poll", "last_monitor", "monitoring", "sched_epoch",
                          "sched_tried_at"})
# Vm fields that bump Vm.mon_version, not Vm.version: a new monitoring sample changes only these
MONITORING_FIELDS = frozenset({"cpu_pct", "monitoring", "last_poll", "last_monitor"})
SCHED_RETRY_SECONDS = 15.0  # an unplaceable VM is retried at least this often (oned's scheduler cycle)


@dataclass
class History:
    seq: int
    host_id: int
    hostname: str
    stime: int
    etime: int = 0
    action: int = 0


@dataclass
class Vm:
    id: int
    uid: int
    gid: int
    uname: str
    gname: str
    name: str
    template: Template
    user_template: Template
    cpu: float
    memory_mb: int
    vcpu: int
    context: dict[str, str]
    stime: int
    state: int = S.PENDING
    lcm: int = S.LCM_INIT
    prev_state: int = S.PENDING
    prev_lcm: int = S.LCM_INIT
    resched: int = 0
    etime: int = 0
    deploy_id: str = ""
    host_id: int | None = None
    history: list[History] = field(default_factory=list)
    plan: list[tuple[str, int, int]] = field(default_factory=list)
    step_at: float = 0.0
    redeploy: str = ""  # "", "stopped", "undeployed": which PROLOG path the next deploy takes
    cpu_pct: float = 0.0
    monitoring: deque = field(default_factory=lambda: deque(maxlen=MONITORING_KEEP))
    last_poll: int = 0
    last_monitor: float = 0.0
    leases: list[tuple[int, str]] = field(default_factory=list)
    sched_epoch: int = -1  # capacity epoch of the last failed placement attempt (-1: try at the next tick)
    sched_tried_at: float = 0.0  # when that attempt was made
    version: int = field(default=0, compare=False)  # bumped by every change; the XML caches compare it
    mon_version: int = field(default=0, compare=False)  # bumped by a change of MONITORING_FIELDS only
    rev = 0  # not a field: bumped by every assignment of a field outside QUIET_FIELDS (onesim.persist)

    def __setattr__(self, name: str, value: object) -> None:
        """Set a field; bump `mon_version` (a field of MONITORING_FIELDS) or `version` (any other: the XML
        caches) and, outside QUIET_FIELDS, `rev` (persistence)."""
        object.__setattr__(self, name, value)
        if name in MONITORING_FIELDS:
            object.__setattr__(self, "mon_version", self.__dict__.get("mon_version", 0) + 1)
        elif name not in ("version", "mon_version", "rev"):
            object.__setattr__(self, "version", self.__dict__.get("version", 0) + 1)
        if name not in QUIET_FIELDS:
            object.__setattr__(self, "rev", self.rev + 1)

    def touch(self) -> None:
        """Record an in-place change (history...) so cached XML of this VM is re-rendered (all of it)."""
        self.version += 1
        self.mon_version += 1

    def touch_monitoring(self) -> None:
        """Record a new monitoring record so the cached LAST_POLL and MONITORING of this VM are re-rendered."""
        self.mon_version += 1

    def ip(self) -> str:
        """The first NIC's IP ("" when the VM has no NIC)."""
        return self.leases[0][1] if self.leases else ""


@dataclass
class HostState:
    spec: HostSpec
    state: int = S.HOST_MONITORED
    vms: set[int] = field(default_factory=set)


@dataclass
class NetState:
    spec: NetworkSpec
    leased: dict[int, int] = field(default_factory=dict)  # address offset -> vmid
    cursor: int = 0

    def address(self, offset: int) -> str:
        return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address(self.spec.ip_start)) + offset))

    def offset_of(self, ip: str) -> int | None:
        try:
            off = int(ipaddress.IPv4Address(ip)) - int(ipaddress.IPv4Address(self.spec.ip_start))
        except ValueError:
            return None
        return off if 0 <= off < self.spec.size else None


@dataclass
class VmTemplateObj:
    id: int
    uid: int
    gid: int
    uname: str
    gname: str
    name: str
    regtime: int
    template: Template


class Model:
    """All simulator state. Every method expects the caller to hold `self.lock`."""

    def __init__(self, inventory: Inventory, clock: Clock = time.time, delays: dict[str, float] | None = None) -> None:
        self.lock = threading.RLock()
        self.clock = clock
        self.inventory = inventory
        self.delays = dict(ZERO_DELAYS)
        for name, seconds in (delays or {}).items():
            self.set_delay(name, seconds)
        self.hosts = {h.id: HostState(h) for h in inventory.hosts}
        self.networks = {n.id: NetState(n) for n in inventory.networks}
        self.images: dict[int, ImageSpec] = {i.id: i for i in inventory.images}
        self.users: dict[int, UserSpec] = {u.id: u for u in inventory.users}
        self.vms: dict[int, Vm] = {}
        self.templates: dict[int, VmTemplateObj] = {}
        self.next_vm_id = 0
        self.next_template_id = 0
        self.hosts_full = False
        self.monitoring_keep = MONITORING_KEEP  # records kept per VM (at most MONITORING_KEEP; ~0.5 KB each)
        self.capacity_epoch = 0  # bumped whenever capacity may have freed up (PENDING VMs retry then)
        self._compiled: dict[tuple[str, str], tuple] = {}
        self.guest_events: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self.planned: set[int] = set()  # VMs with a non-empty plan (the tick advances only these)
        self.pending: set[int] = set()  # PENDING VMs (the scheduler looks only at these)
        self.monitor_due: list[tuple[float, int]] = []  # heap of (last_monitor, vmid); stale entries skipped
        self._indexed: tuple[dict[int, Vm], int] = (self.vms, 0)

    # ---- configuration ------------------------------------------------------------------------------
    def set_delay(self, name: str, seconds: float) -> None:
        """Set one lifecycle delay (seconds >= 0). Raises ValueError naming the bad field."""
        if name not in DELAY_NAMES:
            raise ValueError(f"delay name: unknown {name!r} (one of {', '.join(DELAY_NAMES)})")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= 86400:
            raise ValueError(f"delay {name}: must be a number of seconds between 0 and 86400")
        self.delays[name] = float(seconds)

    def now(self) -> int:
        return int(self.clock())

    # ---- lookups -------------------------------------------------------------------------------------
    def authenticate(self, session: str) -> UserSpec | None:
        """The user whose "name:password" is `session`, or None."""
        name, _, password = session.partition(":")
        for user in self.users.values():
            if user.name == name and user.password == password and password:
                return user
        return None

    def vm(self, vmid: int) -> Vm:
        vm = self.vms.get(vmid)
        if vm is None:
            raise S.OneError(S.NO_EXISTS, f"Error getting virtual machine [{vmid}].", vmid)
        return vm

    def host(self, host_id: int) -> HostState:
        host = self.hosts.get(host_id)
        if host is None:
            raise S.OneError(S.NO_EXISTS, f"Error getting host [{host_id}].", host_id)
        return host

    def network(self, ref: str, by_name: bool) -> NetState:
        for net in self.networks.values():
            if (net.spec.name == ref) if by_name else (str(net.spec.id) == ref.strip()):
                return net
        raise S.OneError(S.NO_EXISTS, f"Error getting virtual network [{ref}].")

    # ---- the VM table and the tick's work sets ------------------------------------------------------
    def add_vm(self, vm: Vm) -> None:
        """Register a new VM in the pool and the work sets. Safe to run twice."""
        self.vms[vm.id] = vm
        self.refile(vm)
        self._indexed = (self.vms, len(self.vms))

    def drop_vm(self, vm: Vm) -> None:
        """Remove a VM from the pool and the work sets (its heap entry goes stale). Safe to run twice."""
        self.vms.pop(vm.id, None)
        self.planned.discard(vm.id)
        self.pending.discard(vm.id)
        self._indexed = (self.vms, len(self.vms))

    def refile(self, vm: Vm) -> None:
        """Put `vm` in (or out of) `planned` and `pending` after its plan or state changed. Safe to run twice."""
        (self.planned.add if vm.plan else self.planned.discard)(vm.id)
        (self.pending.add if vm.state == S.PENDING else self.pending.discard)(vm.id)

    def reindex(self) -> None:
        """Rebuild the work sets from `vms` (after loading or replacing VMs directly). Safe to run twice."""
        self.planned = {i for i, vm in self.vms.items() if vm.plan}
        self.pending = {i for i, vm in self.vms.items() if vm.state == S.PENDING}
        self.monitor_due = [(vm.last_monitor, i) for i, vm in self.vms.items()
                            if (vm.state, vm.lcm) == (S.ACTIVE, S.RUNNING)]
        heapq.heapify(self.monitor_due)
        self._indexed = (self.vms, len(self.vms))

    def check_index(self) -> None:
        """reindex() if `vms` was replaced or changed size other than through add_vm / drop_vm."""
        table, count = self._indexed
        if table is not self.vms or count != len(self.vms):
            self.reindex()

    # ---- leases --------------------------------------------------------------------------------------
    def lease(self, net: NetState, vmid: int, want_ip: str = "") -> str:
        """Lease an address of `net` to `vmid` (a requested IP, or the next free one). Not idempotent."""
        if want_ip:
            off = net.offset_of(want_ip)
            if off is None or off in net.leased:
                raise S.OneError(S.INTERNAL, f"Cannot get IP/MAC lease from virtual network {net.spec.id}.")
        else:
            if len(net.leased) >= net.spec.size:
                raise S.OneError(S.INTERNAL, f"Cannot get IP/MAC lease from virtual network {net.spec.id}.")
            off = net.cursor
            while off in net.leased:
                off = (off + 1) % net.spec.size
            net.cursor = (off + 1) % net.spec.size
        net.leased[off] = vmid
        return net.address(off)

    def release_leases(self, vm: Vm) -> None:
        """Return every address of `vm` to its network. Safe to run twice."""
        for net_id, ip in vm.leases:
            net = self.networks.get(net_id)
            off = net.offset_of(ip) if net else None
            if net is not None and off is not None and net.leased.get(off) == vm.id:
                del net.leased[off]
        vm.leases = []

    # ---- capacity and hosts --------------------------------------------------------------------------
    def host_usage(self, host: HostState) -> tuple[int, int, float, int]:
        """(CPU_USAGE allocated x100, MEM_USAGE KB allocated, monitored CPU %, monitored memory KB)."""
        cpu = mem = mon_mem = 0
        mon_cpu = 0.0
        for vmid in host.vms:
            vm = self.vms[vmid]
            cpu += round(vm.cpu * 100)
            mem += vm.memory_mb * 1024
            if vm.state == S.ACTIVE:
                mon_cpu += vm.cpu_pct
                mon_mem += vm.memory_mb * 512
        return cpu, mem, mon_cpu, mon_mem

    def host_attrs(self, host: HostState) -> dict[str, HostValue]:
        """The attributes SCHED_REQUIREMENTS / SCHED_RANK see for `host`."""
        spec = host.spec
        cpu, mem, mon_cpu, mon_mem = self.host_usage(host)
        max_cpu, max_mem = spec.cores * 100, spec.memory_mb * 1024
        ids = [str(v) for v in sorted(host.vms)]
        attrs: dict[str, HostValue] = {
            "ID": host.spec.id, "NAME": spec.name, "HOSTNAME": spec.name, "CLUSTER_ID": 0, "CLUSTER": "default",
            "HYPERVISOR": "kvm", "STATE": host.state, "MAX_CPU": max_cpu, "TOTAL_CPU": max_cpu, "CPU_USAGE": cpu,
            "MAX_MEM": max_mem, "TOTAL_MEM": max_mem, "MEM_USAGE": mem, "RUNNING_VMS": len(host.vms),
            "USED_CPU": round(mon_cpu), "FREE_CPU": max(0, max_cpu - round(mon_cpu)),
            "USED_MEMORY": mon_mem, "FREE_MEMORY": max(0, max_mem - mon_mem),
            "VMS/ID": ids, "HOST/VMS/ID": ids, "CURRENT_VMS": ids, "CLUSTERS/ID": ["0"],
        }
        for key in ("MAX_CPU", "CPU_USAGE", "MAX_MEM", "MEM_USAGE", "RUNNING_VMS", "TOTAL_CPU", "TOTAL_MEM"):
            attrs[f"HOST_SHARE/{key}"] = attrs[key]
        attrs.update(spec.attributes)
        return attrs

    def has_room(self, attrs: dict[str, HostValue], vm: Vm) -> bool:
        """Whether `vm` fits the free allocated capacity of a host with these attributes."""
        if self.hosts_full or attrs["STATE"] != S.HOST_MONITORED:
            return False
        return (int(attrs["CPU_USAGE"]) + round(vm.cpu * 100) <= int(attrs["MAX_CPU"])
                and int(attrs["MEM_USAGE"]) + vm.memory_mb * 1024 <= int(attrs["MAX_MEM"]))

    def take_host(self, vm: Vm, host: HostState) -> None:
        """Account `vm` on `host` and open a history record. Safe to run twice (same host)."""
        if vm.host_id is not None and vm.host_id != host.spec.id:
            self.free_host(vm)
        host.vms.add(vm.id)
        if vm.host_id != host.spec.id:
            vm.history.append(History(seq=len(vm.history), host_id=host.spec.id, hostname=host.spec.name,
                                      stime=self.now()))
            vm.touch()
        vm.host_id = host.spec.id

    def free_host(self, vm: Vm) -> None:
        """Release `vm`'s capacity and close its history record. Safe to run twice."""
        if vm.host_id is not None:
            self.hosts[vm.host_id].vms.discard(vm.id)
            self.capacity_epoch += 1
            if vm.history and not vm.history[-1].etime:
                vm.history[-1].etime = self.now()
                vm.touch()
        vm.host_id = None

    # ---- scheduling ----------------------------------------------------------------------------------
    def _lookup(self, vm: Vm) -> Callable[[str, str | None], str | None]:
        def lookup(name: str, sub: str | None) -> str | None:
            for tmpl in (vm.template, vm.user_template):
                for key, value in tmpl:
                    if key == name:
                        if isinstance(value, dict):
                            return value.get(sub or "")
                        return value if sub is None else None
            return None
        return lookup

    def pick_host(self, vm: Vm, cache: dict[int, dict[str, HostValue]] | None = None) -> tuple[int | None, str]:
        """Choose a host for a PENDING vm: (host id or None, scheduler message). `cache`: host attrs by id."""
        cache = cache if cache is not None else {h.spec.id: self.host_attrs(h) for h in self.hosts.values()}
        reqs = " & ".join(f"({r})" for r in (first_str(vm.user_template, "SCHED_REQUIREMENTS"),
                                             first_str(vm.template, "AUTOMATIC_REQUIREMENTS")) if r and r.strip())
        rank_text = (first_str(vm.user_template, "SCHED_RANK") or first_str(vm.user_template, "RANK")
                     or self.inventory.default_rank)
        try:
            if "$" in reqs or "$" in rank_text:
                req, rank = compile_requirements(reqs, self._lookup(vm)), compile_rank(rank_text, self._lookup(vm))
            else:
                key = (reqs, rank_text)
                if key not in self._compiled:
                    if len(self._compiled) > 1000:
                        self._compiled.clear()
                    self._compiled[key] = (compile_requirements(reqs), compile_rank(rank_text))
                req, rank = self._compiled[key]
        except PlacementError as exc:
            return None, f"Cannot dispatch VM: error in SCHED_REQUIREMENTS or SCHED_RANK: {exc}"
        hosts = [Candidate(hid, attrs, self.has_room(attrs, vm)) for hid, attrs in sorted(cache.items())]
        chosen = choose_host(hosts, req, rank)
        if chosen is None:
            if not any(req.matches(c.attrs) for c in hosts):
                return None, "Cannot dispatch VM: No host meets SCHED_REQUIREMENTS"
            return None, "Cannot dispatch VM: No host with enough capacity to deploy the VM"
        return chosen, ""

    @staticmethod
    def account(attrs: dict[str, HostValue], vm: Vm) -> None:
        """Update cached host attributes after `vm` was placed there (cheaper than host_attrs again)."""
        attrs["CPU_USAGE"] = attrs["HOST_SHARE/CPU_USAGE"] = int(attrs["CPU_USAGE"]) + round(vm.cpu * 100)
        attrs["MEM_USAGE"] = attrs["HOST_SHARE/MEM_USAGE"] = int(attrs["MEM_USAGE"]) + vm.memory_mb * 1024
        attrs["RUNNING_VMS"] = attrs["HOST_SHARE/RUNNING_VMS"] = int(attrs["RUNNING_VMS"]) + 1
        ids = [*attrs["VMS/ID"], str(vm.id)]  # type: ignore[misc]
        attrs["VMS/ID"] = attrs["HOST/VMS/ID"] = attrs["CURRENT_VMS"] = ids

    def set_user_attr(self, vm: Vm, name: str, value: str | None) -> None:
        """Set (or remove, value None) a single USER_TEMPLATE attribute. Safe to run twice."""
        vm.user_template = [(k, v) for k, v in vm.user_template if k != name]
        if value is not None:
            vm.user_template.append((name, value))

    # ---- monitoring ----------------------------------------------------------------------------------
    def record_monitoring(self, vm: Vm) -> None:
        """Append a monitoring record for `vm` (CPU %, MEMORY KB, counters) stamped now; due again after the
        monitor delay."""
        now = self.now()
        seq = len(vm.monitoring)
        while len(vm.monitoring) >= self.monitoring_keep:
            vm.monitoring.popleft()
        vm.monitoring.append({"ID": vm.id, "TIMESTAMP": now, "CPU": round(vm.cpu_pct, 2),
                              "MEMORY": vm.memory_mb * 512, "NETRX": 1000 * seq, "NETTX": 800 * seq,
                              "DISKRDBYTES": 4096 * seq, "DISKWRBYTES": 2048 * seq,
                              "DISKRDIOPS": seq, "DISKWRIOPS": seq})
        vm.touch_monitoring()
        vm.last_poll = now
        vm.last_monitor = self.clock()
        heapq.heappush(self.monitor_due, (vm.last_monitor, vm.id))

    # ---- pools ---------------------------------------------------------------------------------------
    def filter_owner(self, user: UserSpec, flag: int) -> Callable[[int, int], bool]:
        """Predicate on (uid, gid) for a pool filter flag (-4 group, -3 mine, -2 all, -1 mine+groups, >=0 uid)."""
        if flag < -4:
            raise S.OneError(S.RPC_API, "Incorrect filter_flag.")
        if flag == -2:
            return lambda uid, gid: True
        if flag == -3:
            return lambda uid, gid: uid == user.id
        if flag in (-1, -4):
            return lambda uid, gid: (flag == -1 and uid == user.id) or gid == 0
        return lambda uid, gid: uid == flag
