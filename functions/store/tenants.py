"""Services (tenants): tokens, the controller SSH keypair, the stored configuration, .vm and context files.

Every key comes from `functions.store.keys`; `r` is a decode_responses Redis client. Tokens are stored only
as sha256 hex digests. Context files are stored base64-encoded so binary content survives.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from functions.errors import BadInput, CarinaError, Conflict, NotFound
from functions.model.clock import Clock, system_clock
from functions.store import keys, scripts

CLASSES = ("bronze", "silver", "gold", "platinum")
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
FILE_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
RESERVED_FILES = frozenset({"authorized_keys"})
MAX_FILES = 256          # per service and per kind (.vm, context)
UPLOAD_QUOTA = 64 * 1024 * 1024   # default bytes of uploaded files per service, as stored (settings.upload_quota)
ADMIN_FILE = "admin.token"


class QuotaExceeded(CarinaError):
    """An upload that would take the service's stored files over its byte quota (the gateway answers 413)."""

    def __init__(self, filename: str, size: int, usage: int, quota: int) -> None:
        super().__init__(f"upload: storing {filename} ({size} bytes as stored) would exceed the service's upload "
                         f"quota: {usage} of its {quota} bytes are in use; replace or shrink files, or ask the "
                         "operator for a larger CARINA_UPLOAD_QUOTA", "upload")
        self.size, self.usage, self.quota = size, usage, quota


def hash_token(token: str) -> str:
    """sha256 hex digest of a token: the only form a token is stored in."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: object, field: str = "name") -> str:
    """`name` if it is a valid service name, else BadInput naming `field`."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise BadInput(f"{field}: a service name is 1-32 characters of A-Z a-z 0-9 _ -", field)
    return name


def check_class(cls: object, field: str = "class") -> str:
    """`cls` if it is a known priority class, else BadInput naming `field`."""
    if cls not in CLASSES:
        raise BadInput(f"{field}: must be one of {', '.join(CLASSES)}", field)
    return str(cls)


def check_filename(filename: object, field: str = "name") -> str:
    """`filename` if it is a plain file name (`[A-Za-z0-9._-]{1,64}`, no leading dot, no path)."""
    if not isinstance(filename, str) or not FILE_RE.fullmatch(filename):
        raise BadInput(
            f"{field}: a file name is 1-64 characters of A-Z a-z 0-9 . _ -, not starting with a dot, no path", field)
    return filename


def generate_keypair(comment: str) -> tuple[str, str]:
    """A new ed25519 keypair: (OpenSSH PEM private key, `ssh-ed25519 AAAA... comment` public line)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
    return pem, f"{public} {comment}"


def add_service(r: redis.Redis, name: str, cls: str = "silver", clock: Clock = system_clock,
                max_memory: int = 0, max_vcpus: int = 0) -> str:
    """Create service `name` with a token and a controller keypair; returns the token.

    Not repeatable: a second call for the same name raises Conflict and changes nothing.
    """
    check_name(name)
    check_class(cls)
    for field, value in (("max_memory", max_memory), ("max_vcpus", max_vcpus)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BadInput(f"{field}: must be a non-negative integer", field)
    token = secrets.token_urlsafe(32)
    token_hash = hash_token(token)
    private, public = generate_keypair(f"carina-{name}")
    record = {"name": name, "class": cls, "token_hash": token_hash, "created": str(clock()),
              "max_memory": str(max_memory), "max_vcpus": str(max_vcpus)}

    def write(pipe: Any) -> None:
        if pipe.exists(keys.service(name)):
            raise Conflict(f"name: service {name!r} already exists", "name")
        pipe.multi()
        pipe.hset(keys.service(name), mapping=record)
        pipe.hset(keys.service_key(name), mapping={"private": private, "public": public})
        pipe.set(keys.token(token_hash), name)
        pipe.sadd(keys.services(), name)

    r.transaction(write, keys.service(name))
    return token


def get_service(r: redis.Redis, name: str) -> dict[str, str] | None:
    """The service record without its token hash, or None."""
    record = r.hgetall(keys.service(name)) if NAME_RE.fullmatch(name or "") else {}
    if not record:
        return None
    record.pop("token_hash", None)
    return record


def list_services(r: redis.Redis) -> list[dict[str, str]]:
    """Every service record (without token hashes), sorted by name."""
    records = [get_service(r, name) for name in sorted(r.smembers(keys.services()))]
    return [rec for rec in records if rec]


def service_names(r: redis.Redis) -> list[str]:
    """Every service name, sorted (one read)."""
    return sorted(r.smembers(keys.services()))


def _require(r: redis.Redis, name: str) -> None:
    if get_service(r, check_name(name)) is None:
        raise NotFound(f"name: no service {name!r}", "name")


def remove_service(r: redis.Redis, name: str) -> None:
    """Delete service `name` and all its keys (config, files, keypair, token, jobs, events).

    Refused (Conflict) while the service still has environments. A second call raises NotFound.
    """
    _require(r, name)
    envs_key = keys.service_envs(name)

    def delete(pipe: Any) -> None:
        if pipe.zcard(envs_key):
            raise Conflict(f"name: service {name!r} still has environments; remove them first", "name")
        token_hash = pipe.hget(keys.service(name), "token_hash")
        jobids = pipe.zrange(keys.service_jobs(name), 0, -1)
        pipe.multi()
        if token_hash:
            pipe.delete(keys.token(token_hash))
        for jobid in jobids:
            pipe.delete(keys.job(jobid))
        pipe.delete(keys.service(name), keys.service_key(name), keys.config(name), keys.vm_files(name),
                    keys.context_files(name), keys.upload_bytes(name), keys.service_jobs(name),
                    keys.service_events(name), envs_key)
        pipe.srem(keys.services(), name)

    r.transaction(delete, envs_key, keys.service(name), keys.service_jobs(name))


def rotate_token(r: redis.Redis, name: str) -> str:
    """Give service `name` a new token and invalidate the old one; returns the new token. Each call rotates again."""
    _require(r, name)
    token = secrets.token_urlsafe(32)
    new_hash = hash_token(token)

    def swap(pipe: Any) -> None:
        old_hash = pipe.hget(keys.service(name), "token_hash")
        if old_hash is None:
            raise NotFound(f"name: no service {name!r}", "name")
        pipe.multi()
        pipe.delete(keys.token(old_hash))
        pipe.set(keys.token(new_hash), name)
        pipe.hset(keys.service(name), "token_hash", new_hash)

    r.transaction(swap, keys.service(name))
    return token


def service_for_token(r: redis.Redis, token: str) -> str | None:
    """The service that owns `token`, or None. Read-only."""
    if not token:
        return None
    token_hash = hash_token(token)
    name = r.get(keys.token(token_hash))
    if not name:
        return None
    stored = r.hget(keys.service(name), "token_hash") or ""
    return name if hmac.compare_digest(stored, token_hash) else None


def ensure_admin_token(r: redis.Redis, home: Path) -> str:
    """The admin token from `home/admin.token` (created mode 0600 if missing); its hash is (re)stored in Redis.

    Safe to run twice: an existing file is kept and its token stays valid.
    """
    path = Path(home) / ADMIN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if not token:
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
    os.chmod(path, 0o600)
    r.set(keys.admin_token(), hash_token(token))
    return token


def is_admin(r: redis.Redis, token: str) -> bool:
    """True when `token` is the admin token. Read-only."""
    stored = r.get(keys.admin_token())
    return bool(token and stored) and hmac.compare_digest(stored, hash_token(token))


def service_keypair(r: redis.Redis, name: str) -> tuple[str, str]:
    """(private PEM, public OpenSSH line) of the service's controller key; NotFound if the service has none."""
    pair = r.hgetall(keys.service_key(check_name(name)))
    if not pair.get("private") or not pair.get("public"):
        raise NotFound(f"name: no service {name!r}", "name")
    return pair["private"], pair["public"]


def save_config(r: redis.Redis, name: str, normalized: dict, source: str, kind: str,
                clock: Clock = system_clock) -> None:
    """Replace the service's configuration atomically (one MULTI). Safe to run twice."""
    if kind not in ("rb", "yaml"):
        raise BadInput("kind: must be rb or yaml", "kind")
    _require(r, name)
    record = {"current": json.dumps(normalized), "source": source, "kind": kind, "uploaded_at": str(clock())}
    with r.pipeline(transaction=True) as pipe:
        pipe.delete(keys.config(name))
        pipe.hset(keys.config(name), mapping=record)
        pipe.execute()


def get_config(r: redis.Redis, name: str) -> dict | None:
    """The service's normalized configuration, or None when none was uploaded."""
    raw = r.hget(keys.config(check_name(name)), "current")
    return json.loads(raw) if raw else None


def config_with_time(r: redis.Redis, name: str) -> tuple[dict | None, str]:
    """(the service's normalized configuration or None, its uploaded_at epoch string or "") in one read."""
    raw, uploaded = r.hmget(keys.config(check_name(name)), ["current", "uploaded_at"])
    return (json.loads(raw) if raw else None), (uploaded or "")


def _save_file(r: redis.Redis, name: str, kind: str, filename: str, value: str, field: str, quota: int) -> None:
    """Store one file and count its bytes in one atomic script; BadInput past MAX_FILES, QuotaExceeded past
    `quota` (a replacement counts only its change; shrinking is always allowed)."""
    mine, other = keys.vm_files(name), keys.context_files(name)
    if kind != "vm":
        mine, other = other, mine
    code, used = scripts.run(r, "save_file", [mine, other, keys.upload_bytes(name)],
                             [filename, value, MAX_FILES, quota])
    if code == -1:
        raise BadInput(f"{field}: at most {MAX_FILES} files of this kind per service", field)
    if code == -2:
        raise QuotaExceeded(filename, len(value.encode()), int(used), quota)


def upload_usage(r: redis.Redis, name: str, recount: bool = False) -> int:
    """Bytes (as stored: context files base64) of the service's uploaded files. The counter is recounted from
    the files when missing or when `recount`, and stored. Safe to run twice."""
    args = [keys.vm_files(check_name(name)), keys.context_files(name), keys.upload_bytes(name)]
    return int(scripts.run(r, "upload_usage", args, ["1" if recount else "0"]))


def recount_uploads(r: redis.Redis, name: str) -> int:
    """Recompute the service's upload counter from its stored files; returns it. Safe to run twice."""
    return upload_usage(r, name, recount=True)


def save_vm_file(r: redis.Redis, name: str, filename: str, text: str, field: str = "name",
                 quota: int = UPLOAD_QUOTA) -> None:
    """Store (or replace) VM template `filename` of service `name`, within `quota` bytes. Safe to run twice."""
    check_filename(filename, field)
    if not filename.endswith(".vm"):
        raise BadInput(f"{field}: a VM template name ends in .vm", field)
    _require(r, name)
    _save_file(r, name, "vm", filename, text, field, quota)


def get_vm_file(r: redis.Redis, name: str, filename: str) -> str | None:
    """The text of VM template `filename`, or None."""
    if not FILE_RE.fullmatch(filename or ""):
        return None
    return r.hget(keys.vm_files(check_name(name)), filename)


def list_vm_files(r: redis.Redis, name: str) -> list[str]:
    """Sorted names of the service's VM templates."""
    return sorted(r.hkeys(keys.vm_files(check_name(name))))


def save_context_file(r: redis.Redis, name: str, filename: str, data: bytes, field: str = "name",
                      quota: int = UPLOAD_QUOTA) -> None:
    """Store (or replace) context file `filename` (any bytes) of service `name`, within `quota` bytes (as
    stored: base64, 4/3 of the size). Safe to run twice."""
    check_filename(filename, field)
    if filename in RESERVED_FILES:
        raise BadInput(f"{field}: {filename} is generated by Carina (the controller key) and cannot be uploaded",
                           field)
    _require(r, name)
    _save_file(r, name, "context", filename, base64.b64encode(data).decode("ascii"), field, quota)


def get_context_file(r: redis.Redis, name: str, filename: str) -> bytes | None:
    """The bytes of context file `filename`, or None."""
    if not FILE_RE.fullmatch(filename or ""):
        return None
    raw = r.hget(keys.context_files(check_name(name)), filename)
    return base64.b64decode(raw) if raw is not None else None


def list_context_files(r: redis.Redis, name: str) -> list[str]:
    """Sorted names of the service's uploaded context files."""
    return sorted(r.hkeys(keys.context_files(check_name(name))))
