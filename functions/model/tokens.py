"""Per-VM callback tokens (pure): HMAC-SHA256 over envid, slot and the slot incarnation's nonce.

OpenNebula assigns the VM id only after the template (with its CONTEXT) is fixed, so the token binds the
VM's slot incarnation (envid, slot, nonce); the callback's vmid must be the one recorded for that incarnation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def vm_token(secret: bytes, envid: str, slot: str, nonce: str) -> str:
    """The token injected as CONTEXT CARINA_TOKEN for one VM incarnation."""
    mac = hmac.new(secret, f"{envid}:{slot}:{nonce}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def token_matches(secret: bytes, envid: str, slot: str, nonce: str, presented: str) -> bool:
    """Constant-time check of a presented token."""
    return hmac.compare_digest(vm_token(secret, envid, slot, nonce), presented or "")
