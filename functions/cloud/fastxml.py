"""OpenNebula answers parsed by lxml for the minute tick's big reads (pyone's bindings take ~10x longer).

An XML-RPC answer is [ok, value, code, ...]; `envelope` returns (ok, value, code) and `document` parses the
value's XML. The readers take only what the tick needs, in document order: a VM body is read by its direct
children, so text inside a TEMPLATE (even CDATA that looks like XML) is never taken for a VM's own fields.
A VM's CPU is its MONITORING/CPU (short bodies carry MONITORING/{CPU,MEMORY,STATE} of the last monitoring
record, or an empty `<MONITORING/>`). `short_rows` reads short bodies straight from the XML-RPC bytes: the
shape OpenNebula writes by `shortwire`, any other by the patterns below, else None (then lxml reads them).
Pure (lxml only): no network, no Redis.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from itertools import compress, repeat
from typing import NamedTuple

from lxml import etree

from functions.cloud import shortwire

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
        value = float(text) if text else math.nan       # bytes: ASCII only
    except ValueError:
        try:                                             # bytes may hold other (Unicode) digits or spaces
            value = float(text.decode()) if isinstance(text, bytes) else math.nan
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
# no copy, no tree). Markup there is "&lt;..." (a '<' of text is "&amp;lt;"), so once no CDATA section holds
# "&lt;" (else those sections are cut out, each left as a NUL, which no XML text holds) and no comment or
# declaration is left, every "&lt;VM&gt;" is a VM element (a short body holds no element named VM) whose head
# must be leaf elements (ID ... STIME) in the schema's order, and it must hold one "&lt;MONITORING", right
# after its TEMPLATE as oned writes it: `<MONITORING/>` or `<MONITORING><CPU>...</CPU>...`. The VM and MONITORING
# patterns match at every occurrence of their tag (with no group when the rest is not as expected), so no
# occurrence goes unseen. A VM whose head holds a LCM_STATE or STIME before its STATE, or whose MONITORING
# follows a TEMPLATE other than its own (one nested in its TEMPLATE), is odd: lxml reads such VMs by their
# first children. `>` may be sent unescaped: the patterns for a string holding a '>' accept both.
# Each scan pattern starts at a byte rarer than '&' (re looks for its first byte), the rest of its tag checked
# by a lookbehind: "VM(?<=&lt;VM)" is "&lt;VM" found ~twice as fast.
class _Wire(NamedTuple):
    pool: re.Pattern[bytes]       # the string opens a VM_POOL
    unclean: re.Pattern[bytes]    # "&lt;!" other than a CDATA section without "&lt;": comment, declaration...
    cdata: re.Pattern[bytes]      # a CDATA section
    vm: re.Pattern[bytes]         # "&lt;VM&gt;" and its head: (ID, STATE, LCM_STATE, STIME) or no group
    mon: re.Pattern[bytes]        # "&lt;MONITORING" as expected: ("" for <MONITORING/>, None) or (None, CPU)


def _wire(gt: bytes, after_template: bytes) -> _Wire:
    text = rb"[^&<>]*+(?:&(?:amp|gt|quot|apos);[^&<>]*+)*+"
    leaves = rb"(?:&lt;[A-Z_]++" + gt + text + rb"&lt;/[A-Z_]++" + gt + rb")*?"
    first = leaves.replace(rb"&lt;[A-Z_]", rb"&lt;(?!(?:LCM_STATE|STIME)" + gt + rb")[A-Z_]")  # lxml reads the first
    return _Wire(
        re.compile(rb"\s*&lt;VM_POOL/?" + gt),
        re.compile(rb"!(?<=&lt;!)(?!\[CDATA\[[^&\]]*+(?:(?:&(?!lt;)|\](?!\]" + gt + rb"))[^&\]]*+)*+\]\]" + gt + rb")"),
        re.compile(rb"&lt;!\[CDATA\[.*?\]\]" + gt, re.S),
        re.compile(rb"VM(?<=&lt;VM)" + gt + rb"(?:&lt;ID" + gt + rb"(\d+)&lt;/ID" + gt + first + rb"&lt;STATE"
                   + gt + rb"(\d+)&lt;/STATE" + gt + rb"&lt;LCM_STATE" + gt + rb"(\d+)&lt;/LCM_STATE" + gt + leaves
                   + rb"&lt;STIME" + gt + rb"(\d+)&lt;/STIME" + gt + rb")?"),
        re.compile(rb"ONITORING(?<=&lt;MONITORING)(?:" + after_template + rb"(?:/" + gt + rb"()|" + gt
                   + rb"&lt;CPU" + gt + rb"([^&<>\x00]*)&lt;/CPU" + gt + rb"))?"))


_AFTER_TEMPLATE = rb"(?<=&lt;/TEMPLATE&gt;&lt;MONITORING)"
_WIRE = {False: _wire(rb"&gt;", _AFTER_TEMPLATE),
         True: _wire(rb"(?:&gt;|>)", rb"(?:" + _AFTER_TEMPLATE + rb"|(?<=&lt;/TEMPLATE>&lt;MONITORING))")}


def short_rows(body: bytes, wanted: Sequence[int] | None = None) -> list[VmRow] | None:
    """The VMs of a successful `<VM_POOL>` answer of short bodies (with their CPU), straight from the XML-RPC
    bytes, or None when the answer is not exactly of that shape (an error, character references, comments, a
    VM whose head or MONITORING does not read as expected, ids repeated): then parse it with `document` and
    `vm_rows`. The shape OpenNebula writes is read by `shortwire` (quicker), any other by the patterns above.
    Pure."""
    span = _string_span(body)
    if span is None:
        return None
    found = shortwire.vm_texts(body, *span)
    if found is None:
        found = _wire_texts(body, *span)
    return None if found is None else _rows(*found, wanted)


def _string_span(body: bytes) -> tuple[int, int] | None:
    """(start, end) of the escaped string value of a successful answer, None if the answer is not one."""
    head = _OK_HEAD.match(body)
    if head is None:
        return None
    start = head.end()
    end = body.find(b"<", start)         # an escaped string holds no '<': its end is the first tag
    if end < 0 or not body.startswith(b"</string>" if head.group(1) else b"</value>", end):
        return None
    return start, end


def _wire_texts(body: bytes, start: int, end: int) -> shortwire.Found | None:
    """([ID, STATE, LCM_STATE, STIME of each VM in turn], [CPU text or None]) of the VMs of body[start:end] by
    the `_Wire` patterns (any shape the comment above them allows), None if the answer is odd."""
    if _has(body, b"#", start, end) and _has(body, b"&#", start, end):
        return None                      # character references (a one-byte search first: '#' is rare)
    wire = _WIRE[_has(body, b">", start, end)]
    if not wire.pool.match(body, start):
        return None
    if wire.unclean.search(body, start, end):
        body = wire.cdata.sub(b"\x00", body[start:end])
        start, end = 0, len(body)
        if _has(body, b"&lt;!", start, end):
            return None                  # a comment or declaration
    if _has(body, b"?", start, end) and _has(body, b"&lt;?", start, end):
        return None                      # a processing instruction
    return _wire_read(body, start, end, wire)


def _has(text: bytes, needle: bytes, start: int, end: int) -> bool:
    return text.find(needle, start, end) >= 0


def _wire_read(text: bytes, start: int, end: int, wire: _Wire) -> shortwire.Found | None:
    """What `_wire_texts` gives of text[start:end], whose markup reads as it looks; None if odd."""
    vms = list(wire.vm.finditer(text, start, end))
    mons = list(wire.mon.finditer(text, start, end))
    if len(mons) != len(vms) or any(m.lastindex is None for m in vms) or any(m.lastindex is None for m in mons):
        return None                      # a VM's head or MONITORING does not read as expected
    if not vms:
        return [], []
    starts = [vm.start() for vm in vms]
    if not all(a < b < c for a, b, c in zip(starts, [mon.start() for mon in mons], [*starts[1:], end], strict=True)):
        return None                      # each VM's one MONITORING is its own
    if any(text.count(b"TEMPLATE", vm.end(), mon.start()) != 2 for vm, mon in zip(vms, mons, strict=True)):
        return None                      # a TEMPLATE in its TEMPLATE: its MONITORING may not be its own
    return [text for vm in vms for text in vm.groups()], [mon.group(2) for mon in mons]


def _rows(heads: list[bytes], cpus: list[bytes | None], wanted: Sequence[int] | None) -> list[VmRow] | None:
    """The rows of the VMs' ID, STATE, LCM_STATE and STIME digit texts (four a VM, in turn) and CPU texts, only
    the ids in `wanted` when given; None if an id is there twice."""
    ids, states, lcms, stimes = heads[0::4], heads[1::4], heads[2::4], heads[3::4]
    vmids = list(map(int, ids))
    if len(set(vmids)) != len(vmids):
        return None                      # an id twice
    # VmRow(...) without a Python call a row (what NamedTuple's __new__ does), every field given in order
    rows = map(tuple.__new__, repeat(VmRow), zip(vmids, _small_ints(states), _small_ints(lcms), map(int, stimes),
                                                 repeat({}), repeat(""), _figures(cpus)))
    return list(rows if wanted is None else compress(rows, map(set(wanted).__contains__, vmids)))


_SMALL = {str(n).encode(): n for n in range(100)}


def _small_ints(texts: list[bytes]) -> list[int]:
    """int() of each digit text (a look-up for the usual short ones)."""
    values = list(map(_SMALL.get, texts))
    return values if None not in values else list(map(int, texts))


def _figures(texts: list[bytes | None]) -> list[float | None]:
    """`cpu_figure` of each text (in bulk: the usual case, every text a number, without a Python call a text)."""
    try:
        values = list(map(float, texts))                 # None: TypeError, b"": ValueError
    except (TypeError, ValueError):
        try:
            values = [float(text) if text else math.nan for text in texts]
        except ValueError:
            return [cpu_figure(text) for text in texts]
    if math.isfinite(sum(values)):                       # all finite (an overflow of the sum: the long way)
        return list(values)
    return [value if math.isfinite(value) else None for value in values]


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
