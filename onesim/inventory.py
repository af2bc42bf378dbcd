"""The simulator's inventory (hosts, virtual networks, images, users) read from YAML.

Every error names the field, e.g. ``hosts[1].cores: must be a positive integer``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_INVENTORY = Path(__file__).resolve().parent.parent / "config" / "onesim.yaml"
_ATTR_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


class InventoryError(ValueError):
    """The inventory file is invalid; `errors` lists every problem, each naming its field."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class HostSpec:
    id: int
    name: str
    cores: int
    memory_mb: int
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NetworkSpec:
    id: int
    name: str
    ip_start: str
    size: int
    bridge: str = "lo"
    gateway: str = ""
    dns: str = ""
    mask: str = "255.0.0.0"
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageSpec:
    id: int
    name: str
    size_mb: int


@dataclass(frozen=True)
class UserSpec:
    id: int
    name: str
    password: str
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Inventory:
    hosts: list[HostSpec]
    networks: list[NetworkSpec]
    images: list[ImageSpec]
    users: list[UserSpec]
    default_rank: str = "- RUNNING_VMS"


class _Check:
    """Collects field errors while reading a YAML mapping."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def get(self, item: dict, where: str, key: str, kind: type, default: Any = None, positive: bool = False) -> Any:
        if key not in item:
            if default is None:
                self.errors.append(f"{where}.{key}: required")
            return default
        value = item[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            self.errors.append(f"{where}.{key}: must be an integer")
            return default
        if kind is str and not isinstance(value, str):
            self.errors.append(f"{where}.{key}: must be a string")
            return default
        if positive and value <= 0:
            self.errors.append(f"{where}.{key}: must be a positive integer")
            return default
        return value

    def attrs(self, item: dict, where: str) -> dict[str, str]:
        raw = item.get("attributes", {}) or {}
        if not isinstance(raw, dict):
            self.errors.append(f"{where}.attributes: must be a mapping")
            return {}
        out = {}
        for key, value in raw.items():
            name = str(key).upper()
            if not _ATTR_NAME.fullmatch(name):
                self.errors.append(f"{where}.attributes.{key}: bad attribute name")
            elif isinstance(value, dict | list) or value is None:
                self.errors.append(f"{where}.attributes.{key}: must be a scalar")
            else:
                out[name] = str(value)
        return out

    def items(self, data: dict, key: str) -> list[tuple[str, dict]]:
        raw = data.get(key, []) or []
        if not isinstance(raw, list):
            self.errors.append(f"{key}: must be a list")
            return []
        out = []
        for i, item in enumerate(raw):
            if isinstance(item, dict):
                out.append((f"{key}[{i}]", item))
            else:
                self.errors.append(f"{key}[{i}]: must be a mapping")
        return out


def _hosts(c: _Check, data: dict) -> list[HostSpec]:
    hosts = []
    for i, (where, item) in enumerate(c.items(data, "hosts")):
        hosts.append(HostSpec(id=i, name=c.get(item, where, "name", str, f"host{i}"),
                              cores=c.get(item, where, "cores", int, 1, positive=True),
                              memory_mb=c.get(item, where, "memory_mb", int, 1, positive=True),
                              attributes=c.attrs(item, where)))
    if not hosts:
        c.errors.append("hosts: at least one host is required")
    return hosts


def _networks(c: _Check, data: dict) -> list[NetworkSpec]:
    nets = []
    for where, item in c.items(data, "networks"):
        ip_start = c.get(item, where, "ip_start", str, "127.0.1.1")
        size = c.get(item, where, "size", int, 1, positive=True)
        try:
            first = ipaddress.IPv4Address(ip_start)
            if int(first) + size - 1 > int(ipaddress.IPv4Address("255.255.255.255")):
                c.errors.append(f"{where}.size: range runs past 255.255.255.255")
        except ValueError:
            c.errors.append(f"{where}.ip_start: not an IPv4 address")
        nets.append(NetworkSpec(id=c.get(item, where, "id", int, len(nets)),
                                name=c.get(item, where, "name", str, f"net{len(nets)}"),
                                ip_start=ip_start, size=size,
                                bridge=c.get(item, where, "bridge", str, "lo"),
                                gateway=c.get(item, where, "gateway", str, ""),
                                dns=c.get(item, where, "dns", str, ""),
                                mask=c.get(item, where, "mask", str, "255.0.0.0"),
                                attributes=c.attrs(item, where)))
    return nets


def parse_inventory(data: Any, auth: str) -> Inventory:
    """Build an Inventory from parsed YAML; user 0 comes from `auth` ("user:password")."""
    c = _Check()
    if not isinstance(data, dict):
        raise InventoryError(["inventory: must be a mapping"])
    hosts = _hosts(c, data)
    nets = _networks(c, data)
    images = [ImageSpec(id=c.get(item, where, "id", int, n), name=c.get(item, where, "name", str, f"image{n}"),
                        size_mb=c.get(item, where, "size_mb", int, 1024, positive=True))
              for n, (where, item) in enumerate(c.items(data, "images"))]
    name, sep, password = auth.partition(":")
    if not sep or not name or not password:
        c.errors.append("auth: must be user:password")
    users = [UserSpec(id=0, name=name, password=password)]
    for n, (where, item) in enumerate(c.items(data, "users"), start=1):
        users.append(UserSpec(id=c.get(item, where, "id", int, n), name=c.get(item, where, "name", str, ""),
                              password=c.get(item, where, "password", str, ""), attributes=c.attrs(item, where)))
    for label, ids in (("networks", [n.id for n in nets]), ("images", [i.id for i in images]),
                       ("users", [u.id for u in users]), ("users (names)", [u.name for u in users])):
        if len(set(ids)) != len(ids):
            c.errors.append(f"{label}: duplicate id or name")
    rank = data.get("default_rank", "- RUNNING_VMS")
    if not isinstance(rank, str):
        c.errors.append("default_rank: must be a string")
    unknown = set(data) - {"hosts", "networks", "images", "users", "default_rank"}
    c.errors.extend(f"{key}: unknown key" for key in sorted(map(str, unknown)))
    if c.errors:
        raise InventoryError(c.errors)
    return Inventory(hosts=hosts, networks=nets, images=images, users=users, default_rank=str(rank))


def load_inventory(path: Path | None, auth: str) -> Inventory:
    """Read and validate an inventory YAML file (default config/onesim.yaml)."""
    path = path or DEFAULT_INVENTORY
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InventoryError([f"{path}: cannot read ({exc.strerror})"]) from None
    except yaml.YAMLError as exc:
        raise InventoryError([f"{path}: not valid YAML ({exc})"]) from None
    return parse_inventory(data, auth)
