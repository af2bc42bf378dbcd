"""VM template rendering: %PLACEHOLDER% substitution, context variables, tags and placement lines (pure).

Templates (.vm files) are trusted operator text in OpenNebula's template language; the values put into them
are not. Every value lands inside one quoted attribute value, escaped as OpenNebula expects (`\\` and `"`), so
a value holding `"`, `]`, `$(...)` or a newline can never open a second attribute.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PLACEHOLDER_RE = re.compile(r"%([A-Z_][A-Z0-9_]*)%")
_CONTEXT_OPEN_RE = re.compile(r"\bCONTEXT\s*=\s*\[", re.IGNORECASE)
_BARE_SAFE_RE = re.compile(r"[A-Za-z0-9_.:/@+-]+\Z")
_RESERVED_PREFIX = "CARINA_"
_RESERVED_NAMES = frozenset({"PATH", "IFS", "LD_PRELOAD", "LD_LIBRARY_PATH"})

CONTEXT_VAR_KEY = "APP_CONTEXT_VAR"
_RANKS = {"pack": "RUNNING_VMS", "stripe": "-RUNNING_VMS", "load": "FREE_CPU"}


class RenderError(ValueError):
    """A template or context variable that cannot be rendered; the message names the culprit."""


def _unwrap_outer(raw: str) -> str:
    """Drop the quotes the original needed around the whole context var (`"A=1, B=2"` -> `A=1, B=2`)."""
    text = raw.strip()
    if text[:1] in ('"', "'"):
        if len(text) < 2 or text[-1] != text[0]:
            raise RenderError(f"context var: unbalanced outer quote in {raw!r}")
        text = text[1:-1].strip()
    return text


def _split_items(text: str, raw: str) -> Iterator[str]:
    """Split on commas that are outside double quotes (a backslash escapes the next character in quotes)."""
    start, in_quote, i = 0, False, 0
    while i < len(text):
        ch = text[i]
        if in_quote and ch == "\\":
            i += 2
            continue
        if ch == '"':
            in_quote = not in_quote
        elif ch == "," and not in_quote:
            yield text[start:i]
            start = i + 1
        i += 1
    if in_quote:
        raise RenderError(f"context var: unterminated quote in {raw!r}")
    yield text[start:]


def _unquote(value: str, item: str) -> str:
    """`"a\\"b"` -> `a"b`; a bare value is returned as is."""
    if not value.startswith('"'):
        return value
    if len(value) < 2 or not value.endswith('"'):
        raise RenderError(f"context var item {item!r}: unterminated quoted value")
    return re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.DOTALL)


def check_name(name: str, what: str) -> str:
    """Return `name` if it is a valid attribute name, else raise RenderError naming `what`."""
    if not NAME_RE.match(name):
        raise RenderError(f"{what}: invalid name {name!r} (expected [A-Za-z_][A-Za-z0-9_]*)")
    return name


def parse_context_var(raw: str) -> list[tuple[str, str]]:
    """Parse a config context var (`'"A=1, B=\\/x, C="q,r""'`) into (name, value) pairs. Pure.

    Unwraps the outer quotes the original needed, turns `\\/` into `/`, splits on commas outside quotes,
    drops empty items, unquotes quoted values. Names must be identifiers and not reserved
    (`CARINA_*`, PATH, IFS, LD_*): RenderError names the offending item.
    """
    if not isinstance(raw, str):
        raise RenderError(f"context var: expected a string, got {type(raw).__name__}")
    text = _unwrap_outer(raw).replace("\\/", "/")
    pairs: list[tuple[str, str]] = []
    for item in _split_items(text, raw):
        item = item.strip()
        if not item:
            continue
        name, eq, value = item.partition("=")
        if not eq:
            raise RenderError(f"context var item {item!r}: expected NAME=VALUE")
        name = check_name(name.strip(), f"context var item {item!r}")
        if name.upper().startswith(_RESERVED_PREFIX) or name.upper() in _RESERVED_NAMES:
            raise RenderError(f"context var item {item!r}: name {name!r} is reserved")
        pairs.append((name, _unquote(value.strip(), item)))
    return pairs


def context_pairs(raw: str, role: str, *, master_ip: str = "", index: int = 0, num_slaves: int = 0,
                  deps: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """The context pairs of one VM: the parsed var with %MASTER% %SLAVE_INDEX% %NUM_SLAVES% resolved. Pure.

    Slaves get all three; the master gets %NUM_SLAVES% only. An empty var becomes MASTER=true / SLAVE=true.
    Each dependency `member -> url` is appended once as `<MEMBER>_URL` (replacing a same-named pair).
    """
    if role not in ("master", "slave"):
        raise RenderError(f"role: expected 'master' or 'slave', got {role!r}")
    subs = {"%NUM_SLAVES%": str(num_slaves)}
    if role == "slave":
        subs.update({"%SLAVE_INDEX%": str(index), "%MASTER%": master_ip})
    pairs = []
    for name, value in parse_context_var(raw):
        if role == "slave" and "%MASTER%" in value and not master_ip:
            raise RenderError(f"context var {name}: %MASTER% used but the master IP is not known")
        for key, sub in subs.items():
            value = value.replace(key, sub)
        pairs.append((name, value))
    if not pairs:
        pairs = [("MASTER" if role == "master" else "SLAVE", "true")]
    for member, url in (deps or {}).items():
        dep_name = re.sub(r"[^A-Za-z0-9_]", "_", member).upper() + "_URL"
        check_name(dep_name, f"dependency {member!r}")
        pairs = [(n, v) for n, v in pairs if n.upper() != dep_name] + [(dep_name, url)]
    return pairs


def quote(value: str) -> str:
    """`value` as an OpenNebula double-quoted string, `\\` and `"` escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_pairs(pairs: Iterable[tuple[str, str]]) -> str:
    """`K1 = "v1", K2 = "v2"` for a CONTEXT vector, values quoted and escaped. Pure."""
    return ", ".join(f"{check_name(n, 'context pair')} = {quote(v)}" for n, v in pairs)


def placement_lines(policy: str | None) -> list[str]:
    """SCHED_RANK (and the legacy RANK) lines for a placement policy; [] for None. Pure."""
    if policy is None:
        return []
    if policy not in _RANKS:
        raise RenderError(f"placement_policy: unknown policy {policy!r} (expected pack, stripe or load)")
    rank = quote(_RANKS[policy])
    return [f"SCHED_RANK = {rank}", f"RANK = {rank}"]


def _segments(template: str) -> Iterator[tuple[str, int, int]]:
    """Yield (kind, start, end) with kind 'code', 'quoted' (inside "...") or 'comment' (# to end of line)."""
    i, start, n = 0, 0, len(template)
    while i < n:
        ch = template[i]
        if ch == "#":
            end = template.find("\n", i)
            end = n if end < 0 else end
            yield "code", start, i
            yield "comment", i, end
            i = start = end
        elif ch == '"':
            j = i + 1
            while j < n and template[j] != '"':
                j += 2 if template[j] == "\\" else 1
            if j >= n:
                raise RenderError(f"template: unterminated quoted string at offset {i}")
            yield "code", start, i + 1
            yield "quoted", i + 1, j
            start, i = j, j + 1
        else:
            i += 1
    yield "code", start, n


def _escape_in_quotes(value: str) -> str:
    return quote(value)[1:-1]


def _substitute(text: str, kind: str, values: dict[str, str], pairs_text: str) -> str:
    """Replace the placeholders of one code/quoted segment; unresolved ones raise RenderError."""
    def repl(m: re.Match[str]) -> str:
        key = m.group(1)
        if key == CONTEXT_VAR_KEY:
            if kind == "quoted":
                raise RenderError("template: %APP_CONTEXT_VAR% must not be inside quotes")
            return pairs_text
        if key not in values:
            raise RenderError(f"template: unresolved placeholder %{key}%")
        value = str(values[key])
        if kind == "quoted":
            return _escape_in_quotes(value)
        return value if _BARE_SAFE_RE.match(value) else quote(value)

    return _PLACEHOLDER_RE.sub(repl, text)


def render_vm(template: str, values: dict[str, str], pairs: list[tuple[str, str]], *,
              context_extra: dict[str, str], tags: dict[str, str], placement: str | None) -> str:
    """Render a .vm template into the text given to one.vm.allocate. Pure, deterministic.

    Replaces each %KEY% of `values` (escaped for its position: inside quotes escaped, outside quoted unless
    a plain token) and %APP_CONTEXT_VAR% with format_pairs(pairs); puts `context_extra` first in the CONTEXT
    vector (adding CONTEXT if absent); appends `tags` as quoted top-level attributes and the placement lines.
    Raises RenderError naming any unresolved placeholder, bad name or clash with `context_extra`.
    """
    for key in values:
        check_name(key, "template value")
    extra_names = {check_name(k, "context extra").upper() for k in context_extra}
    for name, _ in pairs:
        if name.upper() in extra_names:
            raise RenderError(f"context var {name}: clashes with the reserved context attribute")
    pairs_text = format_pairs(pairs)
    extra_text = ", ".join(f"{k} = {quote(v)}" for k, v in context_extra.items())
    out: list[str] = []
    context_seen = False
    for kind, start, end in _segments(template):
        piece = template[start:end]
        if kind == "comment":
            out.append(piece)
            continue
        m = _CONTEXT_OPEN_RE.search(piece) if kind == "code" and extra_text and not context_seen else None
        if m:
            context_seen = True
            out.append(_substitute(piece[:m.end()], kind, values, pairs_text) + f" {extra_text},")
            piece = piece[m.end():]
        out.append(_substitute(piece, kind, values, pairs_text))
    text = "".join(out).rstrip("\n") + "\n"
    tail = [f"CONTEXT = [ {extra_text} ]"] if extra_text and not context_seen else []
    tail += [f"{check_name(k, 'tag')} = {quote(v)}" for k, v in tags.items()]
    tail += placement_lines(placement)
    return text + "".join(line + "\n" for line in tail)


def app_url(url: str, master_ip: str) -> str:
    """The environment's app URL with %MASTER% replaced by the master IP. Pure."""
    return (url or "").replace("%MASTER%", master_ip)
