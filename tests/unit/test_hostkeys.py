"""functions.model.hostkeys: the host key a VM reports, normalised, fingerprinted and matched. Pure."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from functions.model import hostkeys


def key_line(kind: str, payload: bytes) -> str:
    blob = struct.pack(">I", len(kind)) + kind.encode() + struct.pack(">I", len(payload)) + payload
    return f"{kind} {base64.b64encode(blob).decode()}"


@given(st.sampled_from(hostkeys.KEY_TYPES), st.binary(min_size=1, max_size=600), st.text("abc@.-", max_size=20))
def test_a_key_line_normalises_to_type_and_base64_and_matches_itself(kind, payload, comment):
    line = key_line(kind, payload)
    assert hostkeys.normalise(f"  {line} {comment}\n") == line
    assert hostkeys.matches(line, line) and hostkeys.matches(hostkeys.fingerprint(line), line)
    other = key_line(kind, payload + b"x")
    assert not hostkeys.matches(line, other) and not hostkeys.matches(hostkeys.fingerprint(line), other)


def test_fingerprint_is_the_one_ssh_keygen_prints():
    line = key_line("ssh-ed25519", bytes(32))
    digest = hashlib.sha256(base64.b64decode(line.split()[1])).digest()
    assert hostkeys.fingerprint(line) == "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
    assert len(hostkeys.fingerprint(line)) == 7 + 43 and hostkeys.normalise(hostkeys.fingerprint(line))


@pytest.mark.parametrize("text", [
    "", "ssh-ed25519", "ssh-dss AAAAB3NzaC1kc3MAAAAA", "ssh-ed25519 not*base64", "SHA256:tooshort",
    "SHA256:" + "A" * 44, "ssh-ed25519 " + "A" * (hostkeys.MAX_BASE64 + 4), "ssh-ed25519 AAA", "ssh-ed25519 A===",
    "ssh-ed25519 AAAAA", "SHA256:" + "A" * 42 + "=",
])
def test_anything_else_is_refused(text):
    with pytest.raises(hostkeys.BadHostKey):
        hostkeys.normalise(text)


def test_a_fingerprint_names_no_type_and_a_line_its_type():
    line = key_line("ecdsa-sha2-nistp256", b"k")
    assert hostkeys.key_type(line) == "ecdsa-sha2-nistp256"
    assert hostkeys.key_type(hostkeys.fingerprint(line)) is None
