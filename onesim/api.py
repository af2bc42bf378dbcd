"""The XML-RPC methods (OpenNebula's names and parameter lists) and the dispatcher that checks them.

Arity and type errors are XML-RPC faults (as xmlrpc-c does); everything else is an answer array:
``[True, value, 0]`` or ``[False, "[method] message", code, obj_id, I8(0)]``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from xmlrpc.client import Fault

from onesim import lifecycle as L
from onesim import states as S
from onesim import xmlout as X
from onesim.inventory import UserSpec
from onesim.model import Model, VmTemplateObj
from onesim.poolcache import PoolCache, window
from onesim.template import Template, TemplateError, first_str, merge_attrs, parse, replace_attrs

log = logging.getLogger("onesim")
VERSION = "7.0.0"
ALLOCATIONS_KEPT = 10000
_TYPES = {"s": (str, "string"), "i": (int, "integer"), "b": (bool, "boolean"), "d": ((int, float), "double"),
          "a": (list, "array")}


class I8(int):
    """An integer marshalled as XML-RPC `<i8>` (the replication index of error answers)."""


@dataclass(frozen=True)
class Method:
    fn: Callable[..., Any]
    sig: str  # parameter types after the session: s=string, i=int, b=bool, d=double (or int), a=array
    required: int


def _check_params(name: str, method: Method, params: tuple) -> None:
    if len(params) < 1 + method.required:
        raise Fault(S.FAULT_TYPE, f"Not enough parameters for {name}: {len(params)} given, "
                                  f"{1 + method.required} required")
    if len(params) > 1 + len(method.sig):
        raise Fault(S.FAULT_TYPE, f"Too many parameters for {name}: {len(params)} given, "
                                  f"at most {1 + len(method.sig)}")
    for i, (kind, value) in enumerate(zip("s" + method.sig, params, strict=False)):
        pytype, label = _TYPES[kind]
        ok = isinstance(value, pytype) and (kind == "b" or not isinstance(value, bool))
        if not ok:
            raise Fault(S.FAULT_TYPE, f"Type mismatch: parameter {i} of {name} is supposed to be {label}")


class Api:
    """Method table plus dispatch. `hooks` lets the server add transport-level actions (e.g. "down")."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.methods: dict[str, Method] = {}
        self.hooks: dict[str, Callable[..., None]] = {}
        self.pools = PoolCache(model)
        # (wall time the call reached dispatch, VM id) of the last successful one.vm.allocate calls, for
        # benchmarks that time Carina's reactions (onesim.sim.allocations)
        self.allocations: deque[tuple[float, int]] = deque(maxlen=ALLOCATIONS_KEPT)
        self.calls: Counter[str] = Counter()   # one.* calls dispatched by name, for benchmarks (onesim.sim.calls)
        _register_one(self)

    def add(self, name: str, sig: str, required: int, fn: Callable[..., Any]) -> None:
        self.methods[name] = Method(fn, sig, required)

    def dispatch(self, name: str, params: tuple) -> list:
        """Run one call; raises Fault only for unknown methods and bad arity/types."""
        method = self.methods.get(name)
        if method is None:
            raise Fault(S.FAULT_NO_METHOD, f"No such method '{name}'")
        _check_params(name, method, params)
        if name.startswith("one."):
            self.calls[name] += 1
        arrived = time.time()
        with self.model.lock:
            user = self.model.authenticate(params[0])
            if user is None:
                return [False, f"[{name}] User couldn't be authenticated, aborting call.", S.AUTHENTICATION, -1,
                        I8(0)]
            try:
                value = method.fn(user, *params[1:])
                if name == "one.vm.allocate":
                    self.allocations.append((arrived, value))
                return [True, value, 0]
            except S.OneError as exc:
                return [False, f"[{name}] {exc.message}", exc.code, exc.obj_id, I8(0)]
            except Exception as exc:  # never crash the simulator on a bad call
                log.exception("internal error in %s", name)
                return [False, f"[{name}] Internal error: {type(exc).__name__}: {exc}", S.INTERNAL, -1, I8(0)]


def _parse(text: str, code: int, prefix: str = "") -> Template:
    try:
        return parse(text)
    except TemplateError as exc:
        raise S.OneError(code, f"{prefix}{exc}") from None


def _register_one(api: Api) -> None:
    m = api.model
    api.add("one.system.version", "", 0, lambda u: VERSION)
    _register_vm(api, m)
    _register_pools(api, api.pools)
    _register_templates(api, m)
    api.add("one.host.info", "ib", 1, lambda u, hid, decrypt=False: X.host_xml(m, m.host(hid)))
    api.add("one.hostpool.info", "", 0, lambda u: X.host_pool_xml(m))

    def host_status(u: UserSpec, hid: int, status: int) -> int:
        host = m.host(hid)
        states = {0: S.HOST_MONITORED, 1: S.HOST_DISABLED, 2: S.HOST_OFFLINE}
        if status not in states:
            raise S.OneError(S.RPC_API, f"Wrong status code {status}.", hid)
        host.state = states[status]
        m.capacity_epoch += 1
        return hid

    api.add("one.host.status", "ii", 2, host_status)

    def user_info(u: UserSpec, uid: int, decrypt: bool = False) -> str:
        target = u if uid == -1 else m.users.get(uid)
        if target is None:
            raise S.OneError(S.NO_EXISTS, f"Error getting user [{uid}].", uid)
        return X.user_xml(target)

    api.add("one.user.info", "ib", 1, user_info)


def _register_vm(api: Api, m: Model) -> None:
    def allocate(u: UserSpec, text: str, hold: bool = False) -> int:
        return L.allocate(m, _parse(text, S.INTERNAL), u, hold).id

    def action(u: UserSpec, verb: str, vmid: int) -> int:
        L.vm_action(m, m.vm(vmid), verb)
        return vmid

    def update(u: UserSpec, vmid: int, text: str, kind: int = 0) -> int:
        vm = m.vm(vmid)
        if kind not in (0, 1):
            raise S.OneError(S.RPC_API, "Wrong update type", vmid)
        new = _parse(text, S.INTERNAL)
        vm.user_template = sorted(new if kind == 0 else merge_attrs(vm.user_template, new), key=lambda kv: kv[0])
        vm.sched_epoch = -1  # a PENDING VM gets a fresh placement attempt
        return vmid

    def recover(u: UserSpec, vmid: int, op: int) -> int:
        L.recover(m, m.vm(vmid), op)
        return vmid

    def deploy(u: UserSpec, vmid: int, hid: int, enforce: bool = False, ds: int = -1, nic: str = "") -> int:
        vm, host = m.vm(vmid), m.host(hid)
        if vm.state not in (S.PENDING, S.HOLD, S.STOPPED, S.UNDEPLOYED):
            raise S.OneError(S.ACTION, "Deploy action is not available for state "
                                       f"{S.state_name(vm.state, vm.lcm)}", vmid)
        if enforce and not m.has_room(m.host_attrs(host), vm):
            raise S.OneError(S.ACTION, f"Host {hid} does not have enough capacity.", vmid)
        if vm.state == S.STOPPED:
            vm.redeploy = "stopped"
        elif vm.state == S.UNDEPLOYED:
            vm.redeploy = "undeployed"
        L.deploy(m, vm, hid)
        return vmid

    api.add("one.vm.allocate", "sb", 1, allocate)
    api.add("one.vm.info", "ib", 1, lambda u, vmid, decrypt=False: X.vm_xml(m.vm(vmid)))
    api.add("one.vm.action", "si", 2, action)
    api.add("one.vm.update", "isi", 2, update)
    api.add("one.vm.recover", "ii", 2, recover)
    api.add("one.vm.deploy", "iibis", 2, deploy)
    api.add("one.vm.monitoring", "i", 1, lambda u, vmid: X.monitoring_xml(list(m.vm(vmid).monitoring)))


def _register_pools(api: Api, pools: PoolCache) -> None:
    def select(u: UserSpec, flag: int, start: int, end: int, state: int, kv: str = "") -> list:
        if kv and -2 <= state <= 11 and state != 7:
            raise S.OneError(S.INTERNAL, "Key-value filter requires a MySQL backend with JSON support.")
        return pools.select(u, flag, start, end, state)

    api.add("one.vmpool.info", "iiiis", 4, lambda u, *a: pools.vm_pool(select(u, *a), extended=False))
    api.add("one.vmpool.infoextended", "iiiis", 4, lambda u, *a: pools.vm_pool(select(u, *a), extended=True))

    def infoset(u: UserSpec, ids: str, extended: bool) -> object:
        try:
            wanted = {int(x) for x in ids.replace(" ", "").split(",") if x}
        except ValueError:
            raise S.OneError(S.RPC_API, f"Invalid VM id list {ids!r}.") from None
        vms = pools.model.vms
        return pools.vm_pool([vms[i] for i in sorted(wanted) if i in vms], extended)

    api.add("one.vmpool.infoset", "sb", 2, infoset)
    api.add("one.vmpool.monitoring", "ii", 2, lambda u, flag, seconds: pools.monitoring_pool(u, flag, seconds))


def _register_templates(api: Api, m: Model) -> None:
    def get(tid: int) -> VmTemplateObj:
        t = m.templates.get(tid)
        if t is None:
            raise S.OneError(S.NO_EXISTS, f"Error getting virtual machine template [{tid}].", tid)
        return t

    def check_name(name: str | None, skip: int = -1) -> str:
        if not name or not name.strip():
            raise S.OneError(S.ALLOCATE, "Error allocating a new virtual machine template. No NAME in template.")
        for t in m.templates.values():
            if t.name == name and t.id != skip:
                raise S.OneError(S.ALLOCATE, f"Error allocating a new virtual machine template. "
                                             f"NAME is already taken by VMTEMPLATE {t.id}.")
        return name

    def allocate(u: UserSpec, text: str) -> int:
        prefix = "Error allocating a new virtual machine template. "
        attrs = _parse(text, S.ALLOCATE, prefix)
        name = check_name(first_str(attrs, "NAME"))
        tid = m.next_template_id
        m.next_template_id += 1
        m.templates[tid] = VmTemplateObj(tid, u.id, 0, u.name, "oneadmin", name, m.now(),
                                         [(k, v) for k, v in attrs if k != "NAME"])
        return tid

    def update(u: UserSpec, tid: int, text: str, kind: int = 0) -> int:
        t = get(tid)
        if kind not in (0, 1):
            raise S.OneError(S.RPC_API, "Wrong update type", tid)
        new = [(k, v) for k, v in _parse(text, S.INTERNAL) if k != "NAME"]
        t.template = new if kind == 0 else merge_attrs(t.template, new)
        return tid

    def delete(u: UserSpec, tid: int, recursive: bool = False) -> int:
        get(tid)
        del m.templates[tid]
        return tid

    def instantiate(u: UserSpec, tid: int, name: str, hold: bool = False, extra: str = "",
                    persistent: bool = False) -> int:
        t = get(tid)
        prefix = "Error allocating a new virtual machine template. "
        extra_attrs = _parse(extra, S.ALLOCATE, prefix) if extra.strip() else []
        raw = replace_attrs(t.template, extra_attrs)
        raw = [(k, v) for k, v in raw if k not in ("NAME", "TEMPLATE_ID")] + [("TEMPLATE_ID", str(tid))]
        if name.strip():
            raw.append(("NAME", name))
        try:
            return L.allocate(m, raw, u, hold, default_name=t.name.replace("{", "{{").replace("}", "}}") + "-{id}").id
        except S.OneError as exc:
            raise S.OneError(S.ALLOCATE, prefix + exc.message, exc.obj_id) from None

    def pool(u: UserSpec, flag: int, start: int, end: int) -> str:
        owner = m.filter_owner(u, flag)
        ids = window(sorted(m.templates), start, end, lambda i: owner(m.templates[i].uid, m.templates[i].gid))
        return X.template_pool_xml(m.templates[i] for i in ids)

    api.add("one.template.allocate", "s", 1, allocate)
    api.add("one.template.info", "ibb", 1, lambda u, tid, ext=False, dec=False: X.template_xml(get(tid)))
    api.add("one.template.update", "isi", 2, update)
    api.add("one.template.delete", "ib", 1, delete)
    api.add("one.template.instantiate", "isbsb", 2, instantiate)
    api.add("one.templatepool.info", "iii", 3, pool)
