"""XML bodies exactly as oned writes them (no namespace, no declaration, element order of the XSDs).

Template values are emitted as CDATA, as oned does. Callers hold the model lock while rendering.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from xml.sax.saxutils import escape

from onesim.inventory import UserSpec
from onesim.model import History, HostState, Model, Vm, VmTemplateObj
from onesim.template import Attr

PERMS_OWNER_UM = ("<PERMISSIONS><OWNER_U>1</OWNER_U><OWNER_M>1</OWNER_M><OWNER_A>0</OWNER_A><GROUP_U>0</GROUP_U>"
                  "<GROUP_M>0</GROUP_M><GROUP_A>0</GROUP_A><OTHER_U>0</OTHER_U><OTHER_M>0</OTHER_M>"
                  "<OTHER_A>0</OTHER_A></PERMISSIONS>")
MON_ORDER = ("CPU", "DISKRDBYTES", "DISKRDIOPS", "DISKWRBYTES", "DISKWRIOPS", "ID", "MEMORY", "NETRX", "NETTX",
             "TIMESTAMP")
SHORT_USER_KEYS = ("LABELS", "ERROR", "SCHED_MESSAGE", "SCHED_RANK", "SCHED_DS_RANK", "SCHED_REQUIREMENTS",
                   "SCHED_DS_REQUIREMENTS", "USER_PRIORITY", "SCHED_ACTION")
SHORT_DISK_KEYS = ("DATASTORE", "DATASTORE_ID", "DISK_ID", "IMAGE", "IMAGE_ID", "SIZE", "TARGET", "TYPE")
SHORT_NIC_KEYS = ("IP", "MAC", "NETWORK", "NETWORK_ID", "NIC_ID", "SECURITY_GROUPS")


def cdata(text: str) -> str:
    """`text` as CDATA (a literal `]]>` is split across two sections)."""
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _el(name: str, value: object) -> str:
    return f"<{name}>{escape(str(value))}</{name}>"


def attrs_xml(attrs: Iterable[Attr]) -> str:
    """Template attributes as oned writes them: `<A><![CDATA[v]]></A>`, vectors one level deep."""
    out = []
    for name, value in attrs:
        if isinstance(value, dict):
            inner = "".join(f"<{k}>{cdata(v)}</{k}>" for k, v in value.items())
            out.append(f"<{name}>{inner}</{name}>")
        else:
            out.append(f"<{name}>{cdata(value)}</{name}>")
    return "".join(out)


_NUMBERS = (int, float)


def _monitoring(record: dict | None, keys: Iterable[str] = MON_ORDER) -> str:
    if not record:
        return "<MONITORING/>"
    return "<MONITORING>" + "".join([f"<{k}>{v}</{k}>" if type(v := record[k]) in _NUMBERS
                                     else f"<{k}>{escape(str(v))}</{k}>" for k in keys if k in record]) \
        + "</MONITORING>"


def monitoring_el(vm: Vm) -> str:
    """The `<MONITORING>` element of `vm`'s last record (full VM body, vmpool.monitoring), or `<MONITORING/>`."""
    return _monitoring(vm.monitoring[-1] if vm.monitoring else None)


# Integer fields are formatted as they are (they are ints); text fields are escaped.
def _history(vm: Vm, h: History) -> str:
    st, et = h.stime, h.etime
    return (f"<HISTORY><OID>{vm.id}</OID><SEQ>{h.seq}</SEQ><HOSTNAME>{escape(h.hostname)}</HOSTNAME>"
            f"<HID>{h.host_id}</HID><CID>0</CID><STIME>{st}</STIME><ETIME>{et}</ETIME>"
            "<VM_MAD>kvm</VM_MAD><TM_MAD>ssh</TM_MAD><DS_ID>0</DS_ID><PLAN_ID>-1</PLAN_ID><ACTION_ID>-1</ACTION_ID>"
            f"<PSTIME>{st}</PSTIME><PETIME>{st}</PETIME><RSTIME>{st}</RSTIME><RETIME>{et}</RETIME>"
            f"<ESTIME>{et}</ESTIME><EETIME>{et}</EETIME><ACTION>{h.action}</ACTION>"
            f"<UID>{vm.uid}</UID><GID>{vm.gid}</GID><REQUEST_ID>-1</REQUEST_ID></HISTORY>")


def _ident(vm: Vm, full: bool) -> str:
    return (f"<VM><ID>{vm.id}</ID><UID>{vm.uid}</UID><GID>{vm.gid}</GID><UNAME>{escape(vm.uname)}</UNAME>"
            f"<GNAME>{escape(vm.gname)}</GNAME><NAME>{escape(vm.name)}</NAME>{PERMS_OWNER_UM if full else ''}")


def last_poll(vm: Vm) -> str:
    """The `<LAST_POLL>` of a full or short body (the time of the last monitoring record)."""
    return f"<LAST_POLL>{vm.last_poll}</LAST_POLL>"


def _state(vm: Vm, full: bool) -> str:
    prev = f"<PREV_STATE>{vm.prev_state}</PREV_STATE><PREV_LCM_STATE>{vm.prev_lcm}</PREV_LCM_STATE>" if full else ""
    return (f"<STATE>{vm.state}</STATE><LCM_STATE>{vm.lcm}</LCM_STATE>"
            f"{prev}<RESCHED>{vm.resched}</RESCHED><STIME>{vm.stime}</STIME>"
            f"<ETIME>{vm.etime}</ETIME><DEPLOY_ID>{escape(vm.deploy_id)}</DEPLOY_ID>")


# The full body is head + LAST_POLL + state + monitoring + middle + back; the short one front + LAST_POLL +
# state + template + monitoring + user + back. LAST_POLL and the monitoring depend on the monitoring fields only
# (vm.mon_version); middle, short template and short user template on vm.template / vm.user_template only.
def full_head(vm: Vm) -> str:
    return _ident(vm, True)


def full_state(vm: Vm) -> str:
    return _state(vm, True)


def full_middle(vm: Vm) -> str:
    return ("<SCHED_ACTIONS/><TEMPLATE>" + attrs_xml(vm.template) + "</TEMPLATE><USER_TEMPLATE>"
            + attrs_xml(vm.user_template) + "</USER_TEMPLATE>")


def full_back(vm: Vm) -> str:
    history = "".join(_history(vm, h) for h in vm.history)
    return ((f"<HISTORY_RECORDS>{history}</HISTORY_RECORDS>" if history else "<HISTORY_RECORDS/>")
            + "<BACKUPS><BACKUP_CONFIG/><BACKUP_IDS/></BACKUPS></VM>")


def vm_xml(vm: Vm) -> str:
    """The full `<VM>` body of one.vm.info (vm.xsd)."""
    return full_head(vm) + last_poll(vm) + full_state(vm) + monitoring_el(vm) + full_middle(vm) + full_back(vm)


def short_front(vm: Vm) -> str:
    return _ident(vm, False)


def short_state(vm: Vm) -> str:
    return _state(vm, False)


def short_template(vm: Vm) -> str:
    tmpl = vm.template
    out = []
    for key in ("CPU", "MEMORY", "VCPU"):
        out += [(k, v) for k, v in tmpl if k == key and isinstance(v, str)]
    for key, keys in (("DISK", SHORT_DISK_KEYS), ("NIC", SHORT_NIC_KEYS)):
        out += [(k, {s: v[s] for s in keys if s in v}) for k, v in tmpl if k == key and isinstance(v, dict)]
    out += [(k, v) for k, v in tmpl if k == "GRAPHICS"]
    return "<TEMPLATE>" + attrs_xml(out) + "</TEMPLATE>"


def _figure(value: object) -> str:
    return str(value) if type(value) in _NUMBERS else escape(str(value))


def short_monitoring(vm: Vm) -> str:
    """The short body's `<MONITORING>`: CPU, MEMORY and STATE of the last record (as `_monitoring` writes them),
    or `<MONITORING/>`."""
    if not vm.monitoring:
        return "<MONITORING/>"
    last = vm.monitoring[-1]
    return (f"<MONITORING><CPU>{_figure(last['CPU'])}</CPU><MEMORY>{_figure(last['MEMORY'])}</MEMORY>"
            "<STATE>RUNNING</STATE></MONITORING>")


def short_user(vm: Vm) -> str:
    return "<USER_TEMPLATE>" + attrs_xml([(k, v) for k, v in vm.user_template if k in SHORT_USER_KEYS]) + \
        "</USER_TEMPLATE>"


def short_back(vm: Vm) -> str:
    if not vm.history:
        return "<HISTORY_RECORDS/></VM>"
    h = vm.history[-1]
    return (f"<HISTORY_RECORDS><HISTORY><OID>{vm.id}</OID><SEQ>{h.seq}</SEQ>"
            f"<HOSTNAME>{escape(h.hostname)}</HOSTNAME><HID>{h.host_id}</HID>"
            "<CID>0</CID><DS_ID>0</DS_ID><VM_MAD>kvm</VM_MAD><TM_MAD>ssh</TM_MAD>"
            f"<ACTION>{h.action}</ACTION></HISTORY></HISTORY_RECORDS></VM>")


def vm_short_xml(vm: Vm) -> str:
    """The short `<VM>` body of one.vmpool.info (vm_pool.xsd)."""
    return (short_front(vm) + last_poll(vm) + short_state(vm) + short_template(vm) + short_monitoring(vm)
            + short_user(vm) + short_back(vm))


def vm_pool_xml(vms: Iterable[Vm], extended: bool) -> str:
    """`<VM_POOL>` of short (vmpool.info) or full (infoextended / infoset) bodies."""
    render = vm_xml if extended else vm_short_xml
    return "<VM_POOL>" + "".join(render(vm) for vm in vms) + "</VM_POOL>"


def monitoring_xml(records: Iterable[dict]) -> str:
    """`<MONITORING_DATA>` (monitoring_data.xsd): the given records in order."""
    return "<MONITORING_DATA>" + "".join(_monitoring(r) for r in records) + "</MONITORING_DATA>"


def host_xml(model: Model, host: HostState) -> str:
    """The `<HOST>` body of one.host.info (host.xsd)."""
    a = model.host_attrs(host)
    spec = host.spec
    share = "".join(_el(k, a[k]) for k in ("MEM_USAGE", "CPU_USAGE", "TOTAL_MEM", "TOTAL_CPU", "MAX_MEM", "MAX_CPU",
                                          "RUNNING_VMS"))
    share += ("<VMS_THREAD>1</VMS_THREAD><DATASTORES><DISK_USAGE>0</DISK_USAGE><FREE_DISK>512000</FREE_DISK>"
              "<MAX_DISK>1024000</MAX_DISK><USED_DISK>512000</USED_DISK></DATASTORES><PCI_DEVICES/><NUMA_NODES/>")
    template = sorted({"HYPERVISOR": "kvm", "HOSTNAME": spec.name, "ARCH": "x86_64", "CPUSPEED": "2400",
                       "MODELNAME": "onesim virtual CPU", "IM_MAD": "kvm", "VM_MAD": "kvm",
                       **spec.attributes}.items())
    cap = "".join(_el(k, a[k]) for k in ("FREE_CPU", "FREE_MEMORY", "USED_CPU", "USED_MEMORY"))
    return ("<HOST>" + _el("ID", spec.id) + _el("NAME", spec.name) + _el("STATE", host.state)
            + _el("PREV_STATE", host.state) + "<IM_MAD>kvm</IM_MAD><VM_MAD>kvm</VM_MAD>"
            + "<CLUSTER_ID>0</CLUSTER_ID><CLUSTER>default</CLUSTER>"
            + f"<HOST_SHARE>{share}</HOST_SHARE>"
            + "<VMS>" + "".join(_el("ID", i) for i in sorted(host.vms)) + "</VMS>"
            + "<TEMPLATE>" + attrs_xml(template) + "</TEMPLATE>"
            + "<MONITORING>" + _el("TIMESTAMP", model.now()) + _el("ID", spec.id) + f"<CAPACITY>{cap}</CAPACITY>"
            + "<SYSTEM><NETRX>0</NETRX><NETTX>0</NETTX></SYSTEM></MONITORING></HOST>")


def host_pool_xml(model: Model) -> str:
    return "<HOST_POOL>" + "".join(host_xml(model, h) for _, h in sorted(model.hosts.items())) + "</HOST_POOL>"


def template_xml(t: VmTemplateObj) -> str:
    """The `<VMTEMPLATE>` body of one.template.info (vmtemplate.xsd); attributes sorted by name."""
    attrs = sorted(t.template, key=lambda kv: kv[0])
    return ("<VMTEMPLATE>" + _el("ID", t.id) + _el("UID", t.uid) + _el("GID", t.gid) + _el("UNAME", t.uname)
            + _el("GNAME", t.gname) + _el("NAME", t.name) + PERMS_OWNER_UM + _el("REGTIME", t.regtime)
            + "<TEMPLATE>" + attrs_xml(attrs) + "</TEMPLATE></VMTEMPLATE>")


def template_pool_xml(templates: Iterable[VmTemplateObj]) -> str:
    return "<VMTEMPLATE_POOL>" + "".join(template_xml(t) for t in templates) + "</VMTEMPLATE_POOL>"


def user_xml(user: UserSpec) -> str:
    """The `<USER>` body of one.user.info (user.xsd); the password shown as oned does (a hash)."""
    digest = hashlib.sha256(user.password.encode()).hexdigest()
    template = sorted({"TOKEN_PASSWORD": digest[:40], **user.attributes}.items())
    return ("<USER>" + _el("ID", user.id) + "<GID>0</GID><GROUPS><ID>0</ID></GROUPS><GNAME>oneadmin</GNAME>"
            + _el("NAME", user.name) + _el("PASSWORD", digest) + "<AUTH_DRIVER>core</AUTH_DRIVER>"
            + "<ENABLED>1</ENABLED><TEMPLATE>" + attrs_xml(template) + "</TEMPLATE>"
            + "<DEFAULT_USER_QUOTAS/></USER>")
