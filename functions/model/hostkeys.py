"""SSH host keys as a VM reports them in its network callback, and how a key the SSH server shows is checked
against one. Pure.

A key is written `<type> <base64>` (an OpenSSH public key line, comment dropped) or `SHA256:<base64>` (the
fingerprint `ssh-keygen -l` prints, unpadded base64 of the SHA-256 of the key blob). Only the shape is checked
here (what config/openapi.yaml can state); whether it is the VM's key is settled by the SSH handshake.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")
MAX_BASE64 = 2048            # an RSA-8192 public key is about 1400 characters
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})+(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")


class BadHostKey(ValueError):
    """Text that is neither a supported public key line nor a SHA256 fingerprint."""


def normalise(text: str) -> str:
    """`<type> <base64>` (comment dropped) or `SHA256:<base64>`; raises BadHostKey for anything else."""
    text = text.strip()
    if text.startswith("SHA256:"):
        if not _FINGERPRINT.fullmatch(text):
            raise BadHostKey("a fingerprint is SHA256: and 43 base64 characters")
        return text
    parts = text.split()
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        raise BadHostKey(f"expected `<type> <base64>` with a type among {', '.join(KEY_TYPES)}, or SHA256:...")
    data = parts[1]
    if len(data) > MAX_BASE64 or not _BASE64.fullmatch(data):
        raise BadHostKey(f"the key is not base64 (at most {MAX_BASE64} characters)")
    return f"{parts[0]} {data}"


def fingerprint(key_line: str) -> str:
    """`SHA256:<base64>` of a `<type> <base64>` key line (as `ssh-keygen -l` prints it)."""
    blob = base64.b64decode(key_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def is_fingerprint(expected: str) -> bool:
    return expected.startswith("SHA256:")


def key_type(expected: str) -> str | None:
    """The key type an expected key names, or None for a fingerprint (any type may match)."""
    return None if is_fingerprint(expected) else expected.split()[0]


def matches(expected: str, seen_line: str) -> bool:
    """True when the server's key `seen_line` (`<type> <base64>`) is the `expected` key or has its fingerprint."""
    if is_fingerprint(expected):
        return hmac.compare_digest(fingerprint(seen_line), expected)
    want, got = expected.split()[:2], seen_line.split()[:2]
    return len(want) == 2 and want[0] == got[0] and hmac.compare_digest(want[1], got[1])
