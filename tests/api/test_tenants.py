"""functions.store.tenants on the real redis-server: services, tokens, keypair, stored config and files."""

from __future__ import annotations

import io
import os
import stat

import paramiko
import pytest

from functions import errors
from functions.model.clock import FakeClock
from functions.store import keys, tenants


def test_add_list_get_service(rdb):
    clock = FakeClock(1000.0)
    token = tenants.add_service(rdb, "oneenv1", "gold", clock=clock, max_memory=64000, max_vcpus=12)
    tenants.add_service(rdb, "arch")
    assert len(token) >= 40
    assert [s["name"] for s in tenants.list_services(rdb)] == ["arch", "oneenv1"]
    rec = tenants.get_service(rdb, "oneenv1")
    assert rec == {"name": "oneenv1", "class": "gold", "created": "1000.0", "max_memory": "64000", "max_vcpus": "12"}
    assert tenants.service_for_token(rdb, token) == "oneenv1"
    # only the hash is stored
    assert token not in str(rdb.hgetall(keys.service("oneenv1")))
    assert rdb.get(keys.token(tenants.hash_token(token))) == "oneenv1"


@pytest.mark.parametrize(("name", "cls", "field"), [
    ("bad name", "silver", "name"), ("", "silver", "name"), ("x" * 33, "silver", "name"), ("a/b", "silver", "name"),
    (None, "silver", "name"), ("ok", "tin", "class"), ("ok", None, "class"),
])
def test_add_service_refuses_bad_input_naming_the_field(rdb, name, cls, field):
    with pytest.raises(errors.BadInput) as err:
        tenants.add_service(rdb, name, cls)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}:")
    assert rdb.scard(keys.services()) == 0


def test_bad_limits_and_duplicates(rdb):
    with pytest.raises(errors.BadInput, match="max_vcpus"):
        tenants.add_service(rdb, "a", max_vcpus=-1)
    first = tenants.add_service(rdb, "a")
    with pytest.raises(errors.Conflict, match="already exists"):
        tenants.add_service(rdb, "a")
    assert tenants.service_for_token(rdb, first) == "a"  # the duplicate attempt changed nothing


def test_rotate_token_invalidates_the_old_one(rdb):
    old = tenants.add_service(rdb, "a")
    new = tenants.rotate_token(rdb, "a")
    assert new != old
    assert tenants.service_for_token(rdb, old) is None
    assert tenants.service_for_token(rdb, new) == "a"
    assert tenants.service_for_token(rdb, "") is None
    with pytest.raises(errors.NotFound):
        tenants.rotate_token(rdb, "nobody")


def test_remove_service_deletes_every_key_and_refuses_with_envs(rdb):
    token = tenants.add_service(rdb, "a")
    tenants.add_service(rdb, "b")
    tenants.save_vm_file(rdb, "a", "x.vm", "CPU=1")
    tenants.save_context_file(rdb, "a", "init.sh", b"#!/bin/sh\n")
    tenants.save_config(rdb, "a", {"ENVIRONMENT": {}}, "ENVIRONMENT = {}", "rb")
    rdb.zadd(keys.service_envs("a"), {"7": 7})
    with pytest.raises(errors.Conflict, match="environments"):
        tenants.remove_service(rdb, "a")
    assert tenants.service_for_token(rdb, token) == "a"
    rdb.zrem(keys.service_envs("a"), "7")
    rdb.hset(keys.job("3"), "service", "a")
    rdb.zadd(keys.service_jobs("a"), {"3": 3})
    tenants.remove_service(rdb, "a")
    assert tenants.service_for_token(rdb, token) is None
    assert [k for k in rdb.keys("carina:*") if ":svc:a" in k or k == keys.job("3")] == []
    assert tenants.get_service(rdb, "b") is not None
    with pytest.raises(errors.NotFound):
        tenants.remove_service(rdb, "a")


def test_keypair_is_a_usable_ed25519_pair(rdb):
    tenants.add_service(rdb, "a")
    tenants.add_service(rdb, "b")
    private, public = tenants.service_keypair(rdb, "a")
    key = paramiko.Ed25519Key.from_private_key(io.StringIO(private))
    kind, blob, comment = public.split(" ")
    assert (kind, blob, comment) == ("ssh-ed25519", key.get_base64(), "carina-a")
    assert tenants.service_keypair(rdb, "b")[1] != public
    signature = key.sign_ssh_data(b"hello")
    assert paramiko.Ed25519Key(data=key.asbytes()).verify_ssh_sig(b"hello", paramiko.Message(signature.asbytes()))
    with pytest.raises(errors.NotFound):
        tenants.service_keypair(rdb, "nobody")


def test_admin_token_file_is_private_and_stable(rdb, tmp_path):
    token = tenants.ensure_admin_token(rdb, tmp_path)
    path = tmp_path / "admin.token"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().strip() == token
    assert tenants.is_admin(rdb, token)
    assert not tenants.is_admin(rdb, token + "x")
    assert not tenants.is_admin(rdb, "")
    rdb.flushall()  # Redis lost its state: the file re-arms the same token
    assert tenants.ensure_admin_token(rdb, tmp_path) == token
    assert tenants.is_admin(rdb, token)
    svc = tenants.add_service(rdb, "a")
    assert not tenants.is_admin(rdb, svc)
    assert tenants.service_for_token(rdb, token) is None


def test_config_round_trip_and_atomic_replace(rdb):
    tenants.add_service(rdb, "a")
    assert tenants.get_config(rdb, "a") is None
    tenants.save_config(rdb, "a", {"ENVIRONMENT": {"t": {"type": "compute"}}}, "src1", "rb")
    tenants.save_config(rdb, "a", {"ENVIRONMENT": {"u": {"type": "data"}}}, "src2", "yaml")
    assert tenants.get_config(rdb, "a") == {"ENVIRONMENT": {"u": {"type": "data"}}}
    assert rdb.hget(keys.config("a"), "source") == "src2"
    with pytest.raises(errors.BadInput, match="kind"):
        tenants.save_config(rdb, "a", {}, "", "json")
    with pytest.raises(errors.NotFound):
        tenants.save_config(rdb, "nobody", {}, "", "rb")


def test_files_binary_safe_and_names_checked(rdb):
    tenants.add_service(rdb, "a")
    blob = bytes(range(256)) * 3
    tenants.save_context_file(rdb, "a", "pkg.tar.gz", blob)
    tenants.save_vm_file(rdb, "a", "example.vm", "CPU = %CPU%\n")
    assert tenants.get_context_file(rdb, "a", "pkg.tar.gz") == blob
    assert tenants.get_vm_file(rdb, "a", "example.vm") == "CPU = %CPU%\n"
    assert tenants.list_context_files(rdb, "a") == ["pkg.tar.gz"]
    assert tenants.list_vm_files(rdb, "a") == ["example.vm"]
    assert tenants.get_context_file(rdb, "a", "../etc/passwd") is None
    assert tenants.get_vm_file(rdb, "a", "missing.vm") is None
    for bad in ("../x", ".hidden", "a/b", "", "x" * 65, "sp ace", "é.sh"):
        with pytest.raises(errors.BadInput, match="^upload:"):
            tenants.save_context_file(rdb, "a", bad, b"x", field="upload")
    with pytest.raises(errors.BadInput, match="authorized_keys"):
        tenants.save_context_file(rdb, "a", "authorized_keys", b"ssh-rsa evil")
    with pytest.raises(errors.BadInput, match=r"\.vm"):
        tenants.save_vm_file(rdb, "a", "example.txt", "x")
    with pytest.raises(errors.NotFound):
        tenants.save_context_file(rdb, "nobody", "x.sh", b"x")


def test_file_count_cap(rdb, monkeypatch):
    monkeypatch.setattr(tenants, "MAX_FILES", 2)
    tenants.add_service(rdb, "a")
    tenants.save_context_file(rdb, "a", "1.sh", b"1")
    tenants.save_context_file(rdb, "a", "2.sh", b"2")
    tenants.save_context_file(rdb, "a", "2.sh", b"two")  # replacing is fine
    with pytest.raises(errors.BadInput, match="at most 2"):
        tenants.save_context_file(rdb, "a", "3.sh", b"3")


def test_upload_quota_counts_stored_bytes_atomically(rdb):
    tenants.add_service(rdb, "a")
    tenants.add_service(rdb, "b")
    tenants.save_vm_file(rdb, "a", "x.vm", "C" * 400, quota=1000)
    tenants.save_context_file(rdb, "a", "p.bin", b"\x00" * 300, quota=1000)         # stored base64: 400 bytes
    assert tenants.upload_usage(rdb, "a") == 800
    with pytest.raises(tenants.QuotaExceeded) as info:
        tenants.save_context_file(rdb, "a", "q.bin", b"\x01" * 300, quota=1000)
    assert (info.value.usage, info.value.quota, info.value.size) == (800, 1000, 400)
    assert info.value.field == "upload" and "800 of its 1000 bytes" in info.value.message
    assert tenants.list_context_files(rdb, "a") == ["p.bin"]                        # nothing stored
    tenants.save_vm_file(rdb, "a", "x.vm", "C" * 100, quota=1000)                   # a replacement counts its change
    assert tenants.upload_usage(rdb, "a") == 500
    tenants.save_context_file(rdb, "a", "q.bin", b"\x01" * 300, quota=1000)
    assert tenants.upload_usage(rdb, "a") == 900 and tenants.upload_usage(rdb, "b") == 0
    with pytest.raises(tenants.QuotaExceeded):
        tenants.save_vm_file(rdb, "a", "x.vm", "C" * 300, quota=1000)              # growing past the quota
    tenants.save_vm_file(rdb, "a", "x.vm", "C" * 50, quota=600)                      # shrinking is always fine
    assert tenants.upload_usage(rdb, "a") == 850


def test_upload_usage_is_recomputed_when_the_counter_is_lost_or_wrong(rdb):
    tenants.add_service(rdb, "a")
    tenants.save_vm_file(rdb, "a", "x.vm", "C" * 10)
    tenants.save_context_file(rdb, "a", "y.sh", b"12345")                            # base64: 8 bytes
    rdb.delete(keys.upload_bytes("a"))
    assert tenants.upload_usage(rdb, "a") == 18                                      # recounted on read
    rdb.set(keys.upload_bytes("a"), 999)
    assert tenants.recount_uploads(rdb, "a") == 18 and tenants.upload_usage(rdb, "a") == 18
    rdb.delete(keys.upload_bytes("a"))
    tenants.save_vm_file(rdb, "a", "z.vm", "C" * 2)                                  # recounted by the write
    assert rdb.get(keys.upload_bytes("a")) == "20"
    tenants.remove_service(rdb, "a")
    assert not rdb.exists(keys.upload_bytes("a"))
