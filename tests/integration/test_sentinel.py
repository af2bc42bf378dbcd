"""REDIS_URL may name a Sentinel-managed master (ARCHITECTURE §3): a real redis-server in sentinel mode
monitors the test master (which requires a password, given in the URL); Carina's clients and an RQ worker go
through it."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from config.settings import Settings
from functions.store.runtime import JsonJob, connect, parse_sentinel_url
from tests.harness import RedisServer, free_port, wait_port


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[tuple[RedisServer, int]]:
    master = RedisServer(tmp_path / "master").start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor carina 127.0.0.1 {master.port} 1\nsentinel auth-pass carina {master.password}\n")
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield master, port
    finally:
        proc.terminate()
        proc.wait(5)
        master.stop()


def test_clients_and_rq_work_through_sentinel(sentinel: tuple[RedisServer, int]) -> None:
    master, port = sentinel
    rt = connect(Settings(redis_url=f"redis+sentinel://:{master.password}@127.0.0.1:{port}/carina/0"))
    rt.text.set("carina:probe", "through-sentinel")
    assert redis.Redis.from_url(master.url, decode_responses=True).get("carina:probe") == "through-sentinel"
    job = rt.queue.enqueue("functions.views.tables.render_table", ["A"], [["1"]])
    SimpleWorker([rt.queue], connection=rt.raw, serializer=JSONSerializer, job_class=JsonJob).work(burst=True)
    assert JsonJob.fetch(job.id, connection=rt.raw).return_value() == "A\n-\n1\n"


@pytest.mark.parametrize(("url", "hosts", "master", "db", "password"), [
    ("redis+sentinel://h1:26379,h2:26380/mymaster/2", [("h1", 26379), ("h2", 26380)], "mymaster", 2, None),
    ("redis+sentinel://:s%40cret@h1/mymaster", [("h1", 26379)], "mymaster", 0, "s@cret"),
])
def test_sentinel_urls_parse(url: str, hosts: list[tuple[str, int]], master: str, db: int,
                             password: str | None) -> None:
    s = parse_sentinel_url(url)
    assert (s.hosts, s.master, s.db, s.password) == (hosts, master, db, password)


@pytest.mark.parametrize("url", ["redis+sentinel://h1:x/m", "redis+sentinel://h1:26379", "redis+sentinel://h1/m/zz"])
def test_bad_sentinel_urls_name_redis_url(url: str) -> None:
    with pytest.raises(ValueError, match="REDIS_URL"):
        parse_sentinel_url(url)
