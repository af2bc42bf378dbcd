"""The common shape of a short `<VM_POOL>` answer read straight from the escaped XML-RPC string, VM by VM.

`fastxml.short_rows` tries this first and, when it returns None, reads the answer with its general wire
reader (then lxml). Only what OpenNebula (and onesim) write is accepted; anything else is left to them:

* the string holds no '#' (no character reference), no '?' (no processing instruction) and no comment
  ("&lt;!-"), opens with `<VM_POOL>` right away and ends with `</VM_POOL>` (or is `<VM_POOL/>`), and writes
  every '>' of markup as "&gt;" or every one raw (Python's xmlrpc escapes '>', xmlrpc-c may not);
* each VM is `<VM>` + the head of a short body in the schema's order, every element a leaf, the texts
  without entities (ID, STATE, LCM_STATE and STIME digits) + `<TEMPLATE>` (`head`): no element nests in the
  head, so these are the VM's first ID, STATE, LCM_STATE and STIME children and it has no MONITORING before
  its TEMPLATE;
* the first "TEMPLATE" after that opening tag closes it: no TEMPLATE nests in it, so the `<MONITORING/>` or
  `<MONITORING><CPU>text</CPU>` right after (`mon`) is the VM's own, and it is the VM's only "MONITORING"
  (after a `<MONITORING/>` lxml would read a later one's CPU; two MONITORING are left to lxml anyway);
* the first `</VM>` after that closes the VM: it is followed right away by the next VM or by `</VM_POOL>`
  and the string's end (a VM element nested in a VM could not make all of them line up).

Markup is "&lt;..." and a '<' of text is "&amp;lt;", so text is never taken for markup; only a CDATA section
(or a comment) can hold "&lt;", and a section ends at its first "]]&gt;". The TEMPLATE's close and each VM's
close are found by a plain search, so each is proven outside any CDATA section: the last CDATA opening before
it (after a point known to be markup; usually found as the last '!', by memrchr) ends before it, and no
comment opens ("&lt;!-") between them (one could hold a false opening). OpenNebula writes a CDATA section for
every TEMPLATE value, so these checks cost a few searches a VM, not a scan of every section. Pure.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_FIELDS = (b"ID", b"UID", b"GID", b"UNAME", b"GNAME", b"NAME", b"LAST_POLL", b"STATE", b"LCM_STATE",
           b"RESCHED", b"STIME", b"ETIME", b"DEPLOY_ID")
_READ = {b"ID", b"STATE", b"LCM_STATE", b"STIME"}   # captured, in this order: digits only
_CDATA = b"&lt;![CDATA["


Found = tuple[list[bytes], list[bytes | None]]   # ([ID, STATE, LCM_STATE, STIME of each VM in turn], [CPU text])


class _Shape(NamedTuple):
    """The patterns and markers of one way of writing '>' ("&gt;" or raw)."""

    first: re.Pattern[bytes]      # the pool's first VM up to its TEMPLATE's opening tag: (ID, STATE, LCM, STIME)
    head: re.Pattern[bytes]       # "</VM>" and the next VM, the same
    mon: re.Pattern[bytes]        # at "TEMPLATE" of </TEMPLATE>: MONITORING ("", None) if empty or (None, CPU)
    close: bytes                  # </VM>
    cdata_end: bytes              # ]]>
    pool: bytes                   # <VM_POOL>
    empty: tuple[bytes, bytes]    # the whole string of an empty pool
    last: bytes                   # </VM></VM_POOL>, the string's end


def _shape(gt: bytes) -> _Shape:
    head = b"&lt;VM" + gt + b"".join(
        b"&lt;" + name + gt + (rb"(\d++)" if name in _READ else rb"[^&]*+") + b"&lt;/" + name + gt
        for name in _FIELDS) + b"&lt;TEMPLATE" + gt
    mon = (rb"(?<=&lt;/)TEMPLATE" + gt + rb"&lt;MONITORING(?:/" + gt + rb"()|" + gt + rb"&lt;CPU" + gt
           + rb"([^&]*+)&lt;/CPU" + gt + rb")")
    pool, close = b"&lt;VM_POOL" + gt, b"&lt;/VM" + gt
    return _Shape(re.compile(head), re.compile(close + head), re.compile(mon), close, b"]]" + gt, pool,
                  (b"&lt;VM_POOL/" + gt, pool + b"&lt;/VM_POOL" + gt), close + b"&lt;/VM_POOL" + gt)


_SHAPES = {False: _shape(b"&gt;"), True: _shape(b">")}


def vm_texts(body: bytes, start: int, end: int) -> Found | None:
    """The VMs of the escaped `<VM_POOL>` string body[start:end] of short bodies, as ([ID, STATE, LCM_STATE,
    STIME of each VM in turn], [CPU text or None]) in document order; None when the string is not of the
    common shape the module docstring describes. Pure."""
    if _marked(body, b"#", b"&", start, end) or _marked(body, b"?", b"&lt;", start, end):
        return None                      # a character reference, a processing instruction (comments: `_walk`)
    shape = _SHAPES[body.find(b">", start, end) >= 0]
    if end - start < 40 and body[start:end] in shape.empty:
        return [], []
    if not body.startswith(shape.pool, start):
        return None
    return _walk(body, start + len(shape.pool), end, shape)


def _marked(body: bytes, char: bytes, before: bytes, start: int, end: int, at: int | None = None) -> bool:
    """Whether some `char` (a rare byte: found by memchr) in body[start:end] comes right after `before`
    (`at`: the first `char` there, when known)."""
    at = body.find(char, start, end) if at is None else at
    while at >= 0:
        if body.startswith(before, at - len(before)) and at - len(before) >= start:
            return True
        at = body.find(char, at + 1, end)
    return False


def _walk(body: bytes, pos: int, end: int, shape: _Shape) -> Found | None:
    """Each VM from pos on (see `vm_texts`); None at the first thing out of shape."""
    find, rfind, startswith = body.find, body.rfind, body.startswith
    mon, head, close, cdata_end = shape.mon.match, shape.head.match, shape.close, shape.cdata_end
    heads: list[bytes] = []
    cpus: list[bytes | None] = []
    vm = shape.first.match(body, pos)
    while vm is not None:
        top = vm.end()                                   # right after <TEMPLATE>: markup
        at = find(b"TEMPLATE", top, end)
        cpu = mon(body, at) if at >= 0 else None
        pos = find(close, at, end) if cpu is not None else -1
        if pos < 0:
            return None
        dash = find(b"-", top, pos)
        if dash >= 0 and _marked(body, b"-", b"&lt;!", top, pos, dash):
            return None                                  # a comment: it could hide either close
        bang = rfind(b"!", top, pos)                     # both closes outside any CDATA section:
        if bang > at:                                    # the last opening in the VM's tail ends before its close
            if not (startswith(_CDATA, bang - 4) and find(cdata_end, bang + 8, pos) >= 0) \
                    and not _outside(body, at, pos, cdata_end):
                return None
            bang = rfind(b"!", top, at)
        if bang >= 0 and not (startswith(_CDATA, bang - 4) and find(cdata_end, bang + 8, at) >= 0) \
                and not _outside(body, top, at, cdata_end):
            return None                                  # the last in the TEMPLATE ends before the TEMPLATE's
        if body.count(b"MONITORING", at, pos) != cpu.lastindex:
            return None                                  # another MONITORING (<MONITORING/>: 1, else open + close)
        heads.extend(vm.groups())                        # now, while these bytes are in the cache
        cpus.append(cpu.group(2))
        vm = head(body, pos)
    if not heads or not startswith(shape.last, pos) or pos + len(shape.last) != end:
        return None
    return heads, cpus


def _outside(body: bytes, start: int, at: int, cdata_end: bytes) -> bool:
    """Whether `at` is outside any CDATA section, `start` being markup and no comment between them: the last
    CDATA opening before it ends before it (one inside a section's text ends before that section's end)."""
    bang = body.rfind(b"!", start, at)                   # usually that opening's '!' (memrchr: quick)
    if bang >= 0 and not body.startswith(_CDATA, bang - 4):
        opening = body.rfind(_CDATA, start, at)          # a '!' of text: look for the opening itself
        bang = opening + 4 if opening >= 0 else -1
    return bang < 0 or body.find(cdata_end, bang + 8, at) >= 0
