"""OpenNebula answers parsed by lxml for the minute tick's big reads (pyone's bindings take ~10x longer).

An XML-RPC answer is [ok, value, code, ...]; `envelope` returns (ok, value, code) and `document` parses the
value's XML. The readers take only what the tick needs, in document order: a VM body is read by its direct
children, so text inside a TEMPLATE (even CDATA that looks like XML) is never taken for a VM's own fields.
A VM's CPU is its MONITORING/CPU (short bodies carry MONITORING/{CPU,MEMORY,STATE} of the last monitoring
record, or an empty `<MONITORING/>`). Pure (lxml only): no network, no Redis.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import NamedTuple

from lxml import etree

_PARSER = etree.XMLParser(huge_tree=True, resolve_entities=False, no_network=True)


class ParseError(Exception):
    """The answer is not the XML it should be."""


class VmRow(NamedTuple):
    """One VM of a pool answer: its id, STATE, LCM_STATE, STIME, (full bodies only) USER_TEMPLATE and the
    first NIC's IP ("" when it has none), and its last monitored CPU (None: no figure)."""

    vmid: int
    state: int
    lcm_state: int
    stime: int
    user_template: dict[str, str]
    ip: str = ""
    cpu: float | None = None


def cpu_figure(text: str | bytes | None) -> float | None:
    """A monitored CPU figure from its text (bytes: UTF-8); None when absent, empty or not a finite number."""
    try:
        value = float(text.decode() if isinstance(text, bytes) else text) if text else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _value(node: etree._Element) -> tuple[str, str]:
    """(type, text) of an XML-RPC <value> (a bare value is a string)."""
    if len(node) == 0:
        return "string", node.text or ""
    inner = node[0]
    return str(inner.tag), inner.text or ""


# A successful answer up to its second value's text: [true, "<...escaped XML...>", ...]
_OK_HEAD = re.compile(rb"\s*(?:<\?xml[^>]*\?>)?\s*<methodResponse>\s*<params>\s*<param>\s*<value>\s*<array>\s*"
                      rb"<data>\s*<value>\s*<boolean>1</boolean>\s*</value>\s*<value>(<string>)?")
_ENTITIES = ((b"&lt;", b"<"), (b"&gt;", b">"), (b"&quot;", b'"'), (b"&apos;", b"'"), (b"&amp;", b"&"))


def ok_xml(body: bytes) -> bytes | None:
    """The XML of a successful answer whose value is an XML string, as UTF-8 bytes, cut out of the envelope
    and unescaped without parsing the envelope (an escaped string holds no '<': its end is the first closing
    tag); None when the answer is not of that shape or uses character references (then: `envelope`)."""
    head = _OK_HEAD.match(body)
    if head is None:
        return None
    end = body.find(b"</string>" if head.group(1) else b"</value>", head.end())
    if end < 0:
        return None
    text = body[head.end():end]
    if b"&#" in text or not text.lstrip().startswith(b"&lt;"):
        return None
    for entity, char in _ENTITIES:
        text = text.replace(entity, char)
    return text


# The short VM bodies of a successful pool answer, read from the escaped XML-RPC string itself (no unescape,
# no tree): with CDATA sections cut out (each left as a NUL, which no XML text holds), every "<VM>" left is a VM
# element (text has '<' escaped once more, and a short body holds no element named VM), its head is leaf
# elements (ID ... STIME) in the schema's order, and it holds one "<MONITORING", right after its TEMPLATE (as
# oned writes it): `<MONITORING/>` or `<MONITORING><CPU>...</CPU>...`.
_GT = rb"(?:&gt;|>)"
_E_CDATA = re.compile(rb"&lt;!\[CDATA\[.*?\]\]" + _GT, re.S)
_E_LEAVES = rb"(?:&lt;[A-Z_]+" + _GT + rb"(?:[^&<>]|&amp;|&gt;)*&lt;/[A-Z_]+" + _GT + rb")*?"
_E_VM = re.compile(rb"&lt;VM" + _GT + rb"&lt;ID" + _GT + rb"(\d+)&lt;/ID" + _GT + _E_LEAVES
                   + rb"&lt;STATE" + _GT + rb"(\d+)&lt;/STATE" + _GT + rb"&lt;LCM_STATE" + _GT + rb"(\d+)&lt;/LCM_STATE"
                   + _GT + _E_LEAVES + rb"&lt;STIME" + _GT + rb"(\d+)&lt;/STIME" + _GT)
_E_MON = re.compile(rb"&lt;/TEMPLATE" + _GT + rb"&lt;MONITORING(?:/" + _GT + rb"|" + _GT + rb"&lt;CPU" + _GT
                    + rb"([^&<>\x00]*)&lt;/CPU" + _GT + rb")")
_E_POOL = re.compile(rb"\s*&lt;VM_POOL(?:" + _GT + rb"|/" + _GT + rb")")


def short_rows(body: bytes, wanted: Sequence[int] | None = None) -> list[VmRow] | None:
    """The VMs of a successful `<VM_POOL>` answer of short bodies (with their CPU), straight from the XML-RPC
    bytes, or None when the answer is not exactly of that shape (an error, character references, comments, a
    VM whose head or MONITORING does not read as expected, ids repeated): then parse it with `document` and
    `vm_rows`. Pure."""
    head = _OK_HEAD.match(body)
    if head is None:
        return None
    end = body.find(b"</string>" if head.group(1) else b"</value>", head.end())
    text = body[head.end():end] if end >= 0 else b""
    if not _E_POOL.match(text) or b"&#" in text or b"&lt;!--" in text or b"&lt;?" in text:
        return None
    bare = _E_CDATA.sub(b"\x00", text)
    vms, mons = list(_E_VM.finditer(bare)), list(_E_MON.finditer(bare))
    if len(vms) != bare.count(b"&lt;VM&gt;") + bare.count(b"&lt;VM>") or len(mons) != len(vms) \
            or bare.count(b"&lt;MONITORING") != len(vms):
        return None
    ends = [vm.start() for vm in vms[1:]] + ([len(bare)] if vms else [])
    if not all(vm.end() <= mon.start() < nxt for vm, mon, nxt in zip(vms, mons, ends, strict=True)):
        return None                      # each VM's one MONITORING is its own
    found = [(*map(int, vm.groups()), cpu_figure(mon.group(1))) for vm, mon in zip(vms, mons, strict=True)]
    if len({f[0] for f in found}) != len(found):
        return None
    keep = set(wanted) if wanted is not None else None
    empty: dict[str, str] = {}
    return [VmRow(i, st, lcm, stime, empty, "", cpu) for i, st, lcm, stime, cpu in found
            if keep is None or i in keep]


def envelope(body: bytes) -> tuple[bool, str, int]:
    """(ok, value, code) of an XML-RPC answer of OpenNebula's shape. A fault is (False, its string, -1)."""
    try:
        root = etree.fromstring(body, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise ParseError(f"envelope: {exc}") from None
    fault = root.find("fault")
    if fault is not None:
        return False, " ".join(t.strip() for t in fault.itertext() if t.strip()), -1
    values = root.findall("params/param/value/array/data/value")
    if len(values) < 2:
        raise ParseError("envelope: expected [ok, value, ...]")
    kind, flag = _value(values[0])
    if kind != "boolean" or flag not in ("0", "1"):
        raise ParseError("envelope: first element is not a boolean")
    text = _value(values[1])[1]
    code = -1
    if len(values) > 2 and _value(values[2])[0] in ("int", "i4", "i8"):
        code = int(_value(values[2])[1] or -1)
    return flag == "1", text, code


def document(text: str | bytes) -> etree._Element:
    """The root element of an answer's XML text (str, or UTF-8 bytes)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    if not data.lstrip().startswith(b"<"):
        raise ParseError("value: not XML")
    try:
        return etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise ParseError(f"value: {exc}") from None


def _int(text: str | None, default: int = -1) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        raise ParseError(f"not an integer: {text[:20]!r}") from None


# Columns of a pool by XPath (in C); they line up when no child of the pool is odd (not a VM, or a VM
# without exactly one of each field with a text, or with more than one MONITORING, CPU or CPU text).
_COLUMNS = [etree.XPath(f"VM/{name}/text()") for name in ("ID", "STATE", "LCM_STATE", "STIME")]
_ODD = etree.XPath("count(*[not(self::VM) or count(ID/text()) != 1 or count(STATE/text()) != 1"
                   " or count(LCM_STATE/text()) != 1 or count(STIME/text()) != 1 or count(MONITORING) > 1"
                   " or count(MONITORING/CPU) > 1 or count(MONITORING/CPU/node()) > 1])")
_CPU_IDS, _CPUS = etree.XPath("VM[MONITORING/CPU/text()]/ID/text()"), etree.XPath("VM/MONITORING/CPU/text()")


def vm_rows(pool: etree._Element, wanted: Sequence[int] | None = None, tags: bool = False) -> list[VmRow]:
    """The VMs of a `<VM_POOL>` (short or full bodies) with their MONITORING/CPU, only the ids in `wanted` when
    given; with `tags`, each one's USER_TEMPLATE (text attributes) and first NIC's IP. Columns by XPath (one
    pass each, in C) when every VM has each field once (and its id is not repeated), else VM by VM."""
    if pool.tag != "VM_POOL":
        raise ParseError(f"expected VM_POOL, got {pool.tag}")
    keep = set(wanted) if wanted is not None else None
    if not tags and _ODD(pool) == 0:     # every child is a VM with each of the four once: columns line up
        try:
            cols = [list(map(int, column(pool))) for column in _COLUMNS]
            cpus = {int(i): cpu_figure(c) for i, c in zip(_CPU_IDS(pool), _CPUS(pool), strict=True)}
        except ValueError:
            raise ParseError("a VM's ID, STATE, LCM_STATE or STIME is not an integer") from None
        if len(set(cols[0])) == len(cols[0]):
            empty: dict[str, str] = {}
            return [VmRow(i, s, lcm, st, empty, "", cpus.get(i)) for i, s, lcm, st in zip(*cols, strict=True)
                    if keep is None or i in keep]
    out = []
    for vm in pool.iterchildren("VM"):
        vmid = _int(vm.findtext("ID"))
        if keep is not None and vmid not in keep:
            continue
        utmpl: dict[str, str] = {}
        ip = ""
        if tags:
            node = vm.find("USER_TEMPLATE")
            utmpl = {str(c.tag): c.text or "" for c in (node if node is not None else ()) if len(c) == 0}
            ip = (vm.findtext("TEMPLATE/NIC/IP") or "").strip()
        out.append(VmRow(vmid, _int(vm.findtext("STATE")), _int(vm.findtext("LCM_STATE"), 0),
                         _int(vm.findtext("STIME"), 0), utmpl, ip, cpu_figure(vm.findtext("MONITORING/CPU"))))
    return out
