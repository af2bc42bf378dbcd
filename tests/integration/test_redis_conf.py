"""config/redis.conf caps Redis' memory and, when full, refuses writes rather than dropping state."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from tests.harness import free_port, wait_port

CONF = Path(__file__).resolve().parents[2] / "config" / "redis.conf"


def directives() -> dict[str, str]:
    """The conf's `name value` lines (comments and blanks skipped; the last one of a name wins)."""
    out: dict[str, str] = {}
    for line in CONF.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.strip().partition(" ")
            out[name.lower()] = value.strip()
    return out


def test_redis_conf_caps_memory_without_eviction() -> None:
    conf = directives()
    assert conf["maxmemory-policy"] == "noeviction"
    units = {"kb": 1000, "k": 1000, "mb": 10**6, "m": 10**6, "gb": 10**9, "g": 10**9}
    value = conf["maxmemory"].lower()
    unit = next((u for u in sorted(units, key=len, reverse=True) if value.endswith(u)), "")
    limit = int(value[: len(value) - len(unit)]) * units.get(unit, 1)
    assert 256 * 10**6 <= limit <= 64 * 10**9


def test_a_full_redis_refuses_writes_and_keeps_every_key(tmp_path: Path) -> None:
    """The conf's policy on a small cap: writes fail with OOM once full, and nothing written before is lost."""
    port = free_port()
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", "",
                             "--maxmemory", "4mb", "--maxmemory-policy", directives()["maxmemory-policy"]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        r = redis.Redis(port=port)
        written = 0
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for i in range(1000):
                r.set(f"k{i}", b"x" * 65536)
                written += 1
        assert 0 < written < 1000
        assert r.dbsize() == written and r.exists(*(f"k{i}" for i in range(written))) == written
        r.delete("k0")                                    # deleting still works, then a write fits again
        r.set("again", b"y")
    finally:
        proc.terminate()
        proc.wait(10)
