"""JSON records of the simulator's objects, as onesim.persist saves them (pure: no files, no threads).

`vm_record` / `vm_from_record` round-trip a Vm (the last MONITORING_SAVED monitoring records only);
`header` holds everything else a restart needs (id sequences, VM templates, host states, lease cursors);
`restore` rebuilds a fresh model from a header and VM records, recomputing host usage and leases from the VMs.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from onesim import states as S
from onesim.model import History, Model, Vm, VmTemplateObj
from onesim.template import Template

log = logging.getLogger("onesim")
FORMAT = 1
MONITORING_SAVED = 20
_REQUIRED = ("id", "uid", "gid", "uname", "gname", "name", "cpu", "memory_mb", "vcpu", "stime")
_OPTIONAL = ("state", "lcm", "prev_state", "prev_lcm", "resched", "etime", "deploy_id", "host_id", "step_at",
             "redeploy", "cpu_pct", "last_poll")


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


def header(model: Model) -> dict[str, Any]:
    """Everything but the VMs: id sequences, VM templates, host states, lease cursors (read-only)."""
    return {"next_vm_id": model.next_vm_id, "next_template_id": model.next_template_id,
            "templates": [_template_record(t) for _, t in sorted(model.templates.items())],
            "hosts": {str(h): host.state for h, host in model.hosts.items()},
            "cursors": {str(n): net.cursor for n, net in model.networks.items()}}


def _restore_vm(model: Model, vm: Vm) -> None:
    """Register a loaded VM: host accounting and leases (rebuilt from the VM; conflicts are logged, skipped)."""
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
    vm.last_monitor = 0.0  # a fresh monitoring sample at the first tick
    model.vms[vm.id] = vm


def restore(model: Model, head: dict[str, Any], vms: list[dict[str, Any]]) -> None:
    """Fill a fresh `model` (caller holds its lock) from a header and VM records; ids continue after the
    highest id seen. Raises KeyError/TypeError/ValueError/AttributeError on a bad record."""
    for rec in head.get("templates", []):
        tmpl = VmTemplateObj(**{**rec, "template": _template_in(rec["template"])})
        model.templates[tmpl.id] = tmpl
    for hid, state in head.get("hosts", {}).items():
        if int(hid) in model.hosts:
            model.hosts[int(hid)].state = int(state)
    for nid, cursor in head.get("cursors", {}).items():
        net = model.networks.get(int(nid))
        if net is not None:
            net.cursor = int(cursor) % net.spec.size
    for rec in vms:
        _restore_vm(model, vm_from_record(rec))
    model.next_vm_id = max([int(head.get("next_vm_id", 0)), *(v + 1 for v in model.vms)])
    model.next_template_id = max([int(head.get("next_template_id", 0)), *(t + 1 for t in model.templates)])
    model.capacity_epoch += 1
