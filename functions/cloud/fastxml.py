"""OpenNebula answers parsed by lxml for the minute tick's big reads (pyone's bindings take ~10x longer).

An XML-RPC answer is [ok, value, code, ...]; `envelope` returns (ok, value, code) and `document` parses the
value's XML. The readers take only what the tick needs, in document order: a VM body is read by its direct
children, so text inside a TEMPLATE (even CDATA that looks like XML) is never taken for a VM's own fields.
Pure (lxml only): no network, no Redis.
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
    """One VM of a pool answer: its id, STATE, LCM_STATE, STIME and (full bodies only) USER_TEMPLATE and the
    first NIC's IP ("" when it has none)."""

    vmid: int
    state: int
    lcm_state: int
    stime: int
    user_template: dict[str, str]
    ip: str = ""


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
# no tree): with CDATA sections cut out, every "<VM>" left is a VM element (text has '<' escaped once more, and
# a short body holds no element named VM), and its head is leaf elements (ID ... STIME) in the schema's order.
_GT = rb"(?:&gt;|>)"
_E_CDATA = re.compile(rb"&lt;!\[CDATA\[.*?\]\]" + _GT, re.S)
_E_LEAVES = rb"(?:&lt;[A-Z_]+" + _GT + rb"(?:[^&<>]|&amp;|&gt;)*&lt;/[A-Z_]+" + _GT + rb")*?"
_E_VM = re.compile(rb"&lt;VM" + _GT + rb"&lt;ID" + _GT + rb"(\d+)&lt;/ID" + _GT + _E_LEAVES
                   + rb"&lt;STATE" + _GT + rb"(\d+)&lt;/STATE" + _GT + rb"&lt;LCM_STATE" + _GT + rb"(\d+)&lt;/LCM_STATE"
                   + _GT + _E_LEAVES + rb"&lt;STIME" + _GT + rb"(\d+)&lt;/STIME" + _GT)
_E_POOL = re.compile(rb"\s*&lt;VM_POOL(?:" + _GT + rb"|/" + _GT + rb")")


def short_rows(body: bytes, wanted: Sequence[int] | None = None) -> list[VmRow] | None:
    """The VMs of a successful `<VM_POOL>` answer of short bodies, straight from the XML-RPC bytes, or None
    when the answer is not exactly of that shape (an error, character references, comments, a VM whose head
    does not read as expected, ids repeated): then parse it with `document` and `vm_rows`. Pure."""
    head = _OK_HEAD.match(body)
    if head is None:
        return None
    end = body.find(b"</string>" if head.group(1) else b"</value>", head.end())
    text = body[head.end():end] if end >= 0 else b""
    if not _E_POOL.match(text) or b"&#" in text or b"&lt;!--" in text or b"&lt;?" in text:
        return None
    bare = _E_CDATA.sub(b"", text)
    found = [tuple(map(int, m.groups())) for m in _E_VM.finditer(bare)]
    if len(found) != bare.count(b"&lt;VM&gt;") + bare.count(b"&lt;VM>") or len({f[0] for f in found}) != len(found):
        return None
    keep = set(wanted) if wanted is not None else None
    empty: dict[str, str] = {}
    return [VmRow(i, st, lcm, stime, empty) for i, st, lcm, stime in found if keep is None or i in keep]


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
# without exactly one of each field with a text).
_COLUMNS = [etree.XPath(f"VM/{name}/text()") for name in ("ID", "STATE", "LCM_STATE", "STIME")]
_ODD = etree.XPath("count(*[not(self::VM) or count(ID/text()) != 1 or count(STATE/text()) != 1"
                   " or count(LCM_STATE/text()) != 1 or count(STIME/text()) != 1])")
_MON_ID, _MON_CPU = etree.XPath("MONITORING/ID/text()"), etree.XPath("MONITORING/CPU/text()")
_MON_ODD = etree.XPath("count(*[not(self::MONITORING) or count(ID/text()) != 1 or count(CPU/text()) != 1])")


def vm_rows(pool: etree._Element, wanted: Sequence[int] | None = None, tags: bool = False) -> list[VmRow]:
    """The VMs of a `<VM_POOL>` (short or full bodies), only the ids in `wanted` when given; with `tags`, each
    one's USER_TEMPLATE (text attributes) and first NIC's IP. Columns by XPath (one pass each, in C) when every
    VM has each field once, else VM by VM."""
    if pool.tag != "VM_POOL":
        raise ParseError(f"expected VM_POOL, got {pool.tag}")
    keep = set(wanted) if wanted is not None else None
    if not tags:
        if _ODD(pool) == 0:              # every child is a VM with each of the four once: columns line up
            try:
                cols = [list(map(int, column(pool))) for column in _COLUMNS]
            except ValueError:
                raise ParseError("a VM's ID, STATE, LCM_STATE or STIME is not an integer") from None
            empty: dict[str, str] = {}
            return [VmRow(i, s, lcm, st, empty) for i, s, lcm, st in zip(*cols, strict=True)
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
                         _int(vm.findtext("STIME"), 0), utmpl, ip))
    return out


def monitored_cpu(data: etree._Element) -> dict[int, float]:
    """vmid -> CPU of each `<MONITORING>` record of a `<MONITORING_DATA>` (the last one wins); records without
    an ID or a finite CPU are left out."""
    if data.tag != "MONITORING_DATA":
        raise ParseError(f"expected MONITORING_DATA, got {data.tag}")
    out: dict[int, float] = {}
    if _MON_ODD(data) == 0:              # every record has one ID and one CPU: the columns line up
        pairs = list(zip(_MON_ID(data), _MON_CPU(data), strict=True))
    else:                                # some record lacks one (or is not of the schema): record by record
        pairs = [(m.findtext("ID"), m.findtext("CPU")) for m in data.iterchildren("MONITORING")]
    for vmid, cpu in pairs:
        try:
            value = float(cpu) if cpu is not None else math.nan
        except ValueError:
            continue
        if vmid is not None and math.isfinite(value):
            out[_int(vmid)] = value
    return out
