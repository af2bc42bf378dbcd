"""Turn a submitted template into a VM as oned does on allocate: validate CPU/MEMORY, lease NICs,
expand DISKs, resolve CONTEXT variables, and split TEMPLATE / USER_TEMPLATE."""

from __future__ import annotations

import re

from onesim import states as S
from onesim.inventory import UserSpec
from onesim.model import Model, NetState, Vm
from onesim.template import Template, Value, first_str

# VM/TEMPLATE children of vm.xsd, in the schema's sequence order. (name, may repeat, may be a vector)
TEMPLATE_SCHEMA: list[tuple[str, bool, bool]] = [
    ("AUTOMATIC_DS_REQUIREMENTS", False, False), ("AUTOMATIC_NIC_REQUIREMENTS", False, False),
    ("AUTOMATIC_REQUIREMENTS", False, False), ("CLONING_TEMPLATE_ID", False, False), ("CONTEXT", False, True),
    ("CPU", False, False), ("CPU_COST", False, False), ("DISK", True, True), ("DISK_COST", False, False),
    ("EMULATOR", False, False), ("FEATURES", False, True), ("HYPERV_OPTIONS", False, True),
    ("GRAPHICS", False, True), ("IMPORTED", False, False), ("INPUT", False, True), ("MEMORY", False, False),
    ("MEMORY_COST", False, False), ("MEMORY_MAX", False, False), ("MEMORY_SLOTS", False, False),
    ("MEMORY_RESIZE_MODE", False, False), ("NIC", True, True), ("NIC_ALIAS", True, True),
    ("NIC_DEFAULT", False, True), ("NUMA_NODE", False, True), ("OS", False, True), ("PCI", True, True),
    ("RAW", False, True), ("SECURITY_GROUP_RULE", True, True), ("SPICE_OPTIONS", False, True),
    ("SUBMIT_ON_HOLD", False, False), ("TEMPLATE_ID", False, False), ("TM_MAD_SYSTEM", False, False),
    ("TOPOLOGY", False, True), ("VCPU", False, False), ("VCPU_MAX", False, False), ("VMGROUP", False, True),
    ("VMID", False, False), ("VROUTER_ID", False, False), ("VROUTER_KEEPALIVED_ID", False, False),
    ("VROUTER_KEEPALIVED_PASSWORD", False, False),
]
TEMPLATE_ORDER = {name: i for i, (name, _, _) in enumerate(TEMPLATE_SCHEMA)}
_SCHEMA = {name: (multi, vector) for name, multi, vector in TEMPLATE_SCHEMA}
_GENERATED = {"VMID", "TM_MAD_SYSTEM", "AUTOMATIC_REQUIREMENTS", "AUTOMATIC_DS_REQUIREMENTS",
              "AUTOMATIC_NIC_REQUIREMENTS"}
_VAR_RE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)(?:\[\s*([A-Za-z0-9_]+)\s*"
                     r"(?:,\s*([A-Za-z_]+)\s*=\s*\"?([^\]\"]*?)\"?\s*)?\])?")
_INT_RE = re.compile(r"\s*\+?\d+\s*")


def _positive_int(text: str | None) -> int | None:
    if text is None or not _INT_RE.fullmatch(text):
        return None
    value = int(text)
    return value if value > 0 else None


def _positive_float(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else 0.0
    except ValueError:
        return None
    return value if value > 0 and value == value and value != float("inf") else None


def check_capacity(tmpl: Template) -> tuple[float, int, int]:
    """(CPU, MEMORY MB, VCPU) of a template, or OneError(INTERNAL) with oned's message."""
    memory = _positive_int(first_str(tmpl, "MEMORY"))
    if memory is None:
        raise S.OneError(S.INTERNAL, "MEMORY attribute must be a positive integer value.")
    cpu = _positive_float(first_str(tmpl, "CPU"))
    if cpu is None:
        raise S.OneError(S.INTERNAL, "CPU attribute must be a positive float or integer value.")
    vcpu_text = first_str(tmpl, "VCPU")
    vcpu = 1 if vcpu_text is None else _positive_int(vcpu_text)
    if vcpu is None:
        raise S.OneError(S.INTERNAL, "VCPU attribute must be a positive integer value.")
    return cpu, memory, vcpu


def _mac(ip: str) -> str:
    return "02:00:" + ":".join(f"{int(part):02x}" for part in ip.split("."))


def _build_nic(model: Model, vmid: int, nic_id: int, nic: Value) -> tuple[dict[str, str], NetState, str]:
    if not isinstance(nic, dict):
        raise S.OneError(S.INTERNAL, "NIC attribute must be a vector attribute.")
    if "NETWORK_ID" in nic:
        net = model.network(nic["NETWORK_ID"], by_name=False)
    elif "NETWORK" in nic:
        net = model.network(nic["NETWORK"], by_name=True)
    else:
        raise S.OneError(S.INTERNAL, f"NIC {nic_id}: no NETWORK_ID or NETWORK given.")
    ip = model.lease(net, vmid, nic.get("IP", "").strip())
    spec = net.spec
    built = {k: v for k, v in nic.items() if k not in ("NETWORK", "NETWORK_ID", "IP")}
    built.update({"AR_ID": "0", "BRIDGE": spec.bridge, "BRIDGE_TYPE": "linux", "IP": ip, "MAC": _mac(ip),
                  "NAME": f"NIC{nic_id}", "NETWORK": spec.name, "NETWORK_ID": str(spec.id),
                  "NETWORK_UNAME": "oneadmin", "NIC_ID": str(nic_id), "SECURITY_GROUPS": "0",
                  "TARGET": f"one-{vmid}-{nic_id}", "VN_MAD": "dummy"})
    return dict(sorted(built.items())), net, ip


def _build_disk(model: Model, disk_id: int, disk: Value) -> dict[str, str]:
    if not isinstance(disk, dict):
        raise S.OneError(S.INTERNAL, "DISK attribute must be a vector attribute.")
    built = dict(disk)
    ref = disk.get("IMAGE_ID")
    image = None
    if ref is not None:
        image = next((i for i in model.images.values() if str(i.id) == ref.strip()), None)
    elif "IMAGE" in disk:
        image = next((i for i in model.images.values() if i.name == disk["IMAGE"]), None)
        ref = disk["IMAGE"]
    if ref is not None and image is None:
        raise S.OneError(S.INTERNAL, f"Error getting image [{ref}].")
    if image is not None:
        built.update({"IMAGE": image.name, "IMAGE_ID": str(image.id), "SIZE": str(image.size_mb),
                      "SOURCE": f"/var/lib/one/datastores/1/{image.id}", "CLONE": "YES", "TYPE": "FILE",
                      "IMAGE_UNAME": "oneadmin", "READONLY": "NO"})
    built.update({"DATASTORE": "default", "DATASTORE_ID": "1", "DISK_ID": str(disk_id),
                  "TARGET": disk.get("TARGET", "vd" + chr(ord("a") + disk_id % 26)), "TM_MAD": "ssh"})
    built.setdefault("SIZE", "1024")
    return dict(sorted(built.items()))


def _resolve(text: str, vars_for: dict) -> str:
    """Replace $VAR, $VAR[SUB] and $VAR[SUB, KEY=val] in `text` (unknown variables become "")."""
    def sub(m: re.Match) -> str:
        name, attr, key, val = m.group(1).upper(), m.group(2), m.group(3), m.group(4)
        return vars_for["resolve"](name, attr and attr.upper(), key and key.upper(), val)
    return _VAR_RE.sub(sub, text)


def _resolver(model: Model, vmid: int, name: str, user: UserSpec, nics: list[tuple[dict, NetState]],
              raw: Template):
    def resolve(var: str, attr: str | None, key: str | None, val: str | None) -> str:
        simple = {"VMID": str(vmid), "NAME": name, "UNAME": user.name, "UID": str(user.id), "GID": "0",
                  "GNAME": "oneadmin"}
        if attr is None and var in simple:
            return simple[var]
        if var == "USER" and attr:
            return user.attributes.get(attr, "")
        if var in ("NIC", "NETWORK"):
            for nic, net in nics:
                if key and not (key == "NETWORK_ID" and str(net.spec.id) == val
                                or key == "NETWORK" and net.spec.name == val):
                    continue
                if var == "NIC":
                    return nic.get(attr or "IP", "")
                return _network_attr(net, attr or "NAME")
            if var == "NETWORK" and key == "NETWORK_ID":
                net = model.networks.get(int(val)) if val and val.isdigit() else None
                return _network_attr(net, attr or "NAME") if net else ""
            return ""
        for k, v in raw:
            if k == var:
                if isinstance(v, dict):
                    return v.get(attr or "", "")
                return v if attr is None else ""
        return ""
    return resolve


def _network_attr(net: NetState, attr: str) -> str:
    spec = net.spec
    values = {"ID": str(spec.id), "NAME": spec.name, "BRIDGE": spec.bridge, "GATEWAY": spec.gateway,
              "DNS": spec.dns, "NETWORK_MASK": spec.mask, "MASK": spec.mask, "NETWORK_ADDRESS": spec.ip_start}
    return values.get(attr, spec.attributes.get(attr, ""))


def _context(ctx: Value, resolve, nics: list[tuple[dict, NetState]], disk_count: int) -> dict[str, str]:
    if not isinstance(ctx, dict):
        raise S.OneError(S.INTERNAL, "CONTEXT attribute must be a vector attribute.")
    out = {k: _resolve(v, {"resolve": resolve}) for k, v in ctx.items()}
    if out.get("NETWORK", "").upper() == "YES":
        for i, (nic, net) in enumerate(nics):
            out.update({f"ETH{i}_IP": nic["IP"], f"ETH{i}_MAC": nic["MAC"], f"ETH{i}_MASK": net.spec.mask,
                        f"ETH{i}_GATEWAY": net.spec.gateway, f"ETH{i}_DNS": net.spec.dns,
                        f"ETH{i}_NETWORK": net.spec.ip_start})
    out.setdefault("DISK_ID", str(disk_count))
    out.setdefault("TARGET", "hda")
    return dict(sorted(out.items()))


def split_template(attrs: Template) -> tuple[Template, Template]:
    """(TEMPLATE, USER_TEMPLATE): schema attributes (singletons: last wins) in schema order; the rest sorted."""
    tmpl: Template = []
    user: Template = []
    for name, value in attrs:
        shape = _SCHEMA.get(name)
        if shape is None or shape[1] != isinstance(value, dict):
            user.append((name, value))
            continue
        if not shape[0]:
            tmpl = [(k, v) for k, v in tmpl if k != name]
        tmpl.append((name, value))
    tmpl.sort(key=lambda kv: TEMPLATE_ORDER[kv[0]])
    user.sort(key=lambda kv: kv[0])
    return tmpl, user


def build_vm(model: Model, raw: Template, user: UserSpec, default_name: str | None = None) -> Vm:
    """Create (not yet registered) a VM from `raw`: validates, leases IPs (released on error), splits.

    Raises OneError(INTERNAL) for bad CPU/MEMORY/VCPU, NIC, DISK or CONTEXT. Not idempotent (leases).
    """
    cpu, memory, vcpu = check_capacity(raw)
    vmid = model.next_vm_id
    name = (first_str(raw, "NAME") or "").strip() or (default_name or "one-{id}").format(id=vmid)
    attrs = [(k, v) for k, v in raw if k != "NAME" and k not in _GENERATED]
    vm = Vm(id=vmid, uid=user.id, gid=0, uname=user.name, gname="oneadmin", name=name, template=[],
            user_template=[], cpu=cpu, memory_mb=memory, vcpu=vcpu, context={}, stime=model.now())
    try:
        nics: list[tuple[dict, NetState]] = []
        out: Template = []
        disk_count = 0
        for key, value in attrs:
            if key == "NIC":
                nic, net, ip = _build_nic(model, vmid, len(nics), value)
                vm.leases.append((net.spec.id, ip))
                nics.append((nic, net))
                out.append((key, nic))
            elif key == "DISK":
                out.append((key, _build_disk(model, disk_count, value)))
                disk_count += 1
            else:
                out.append((key, value))
        resolve = _resolver(model, vmid, name, user, nics, raw)
        out = [(k, _context(v, resolve, nics, disk_count)) if k == "CONTEXT" else (k, v) for k, v in out]
    except S.OneError:
        model.release_leases(vm)
        raise
    out += [("VMID", str(vmid)), ("TM_MAD_SYSTEM", "ssh"),
            ("AUTOMATIC_REQUIREMENTS", "!(PUBLIC_CLOUD = YES) & !(PIN_POLICY = PINNED)"),
            ("AUTOMATIC_DS_REQUIREMENTS", '("CLUSTERS/ID" @> 0)'),
            ("AUTOMATIC_NIC_REQUIREMENTS", '("CLUSTERS/ID" @> 0)')]
    vm.template, vm.user_template = split_template(out)
    ctx = next((v for k, v in vm.template if k == "CONTEXT"), None)
    vm.context = dict(ctx) if isinstance(ctx, dict) else {}
    return vm
