"""scripts.run_direct (a script call on a hot path, on a connection each thread keeps) against a real redis-server:
the same replies and errors as scripts.run, each thread's replies its own, and it recovers as run does from a
script the server forgot and from a connection the server dropped."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
import redis
from redis.connection import Encoder, PythonRespSerializer

from functions.store import keys, scripts
from tests.harness import twin


def test_same_replies_as_run(rdb: redis.Redis) -> None:
    rdb.set("lock", "me")
    assert scripts.run_direct(rdb, "release_if_owner", ["lock"], ["other"]) == 0
    assert scripts.run_direct(rdb, "release_if_owner", ["lock"], ["me"]) == 1 and rdb.get("lock") is None
    rdb.zadd("due", {"a": 1, "b": 2, "c": 50})
    assert scripts.run_direct(rdb, "lease_due", ["due"], ["10", "5", "30"]) == ["a", "b"]
    raw = twin(rdb)
    rdb.zadd("due2", {"a": 1})
    assert scripts.run_direct(raw, "lease_due", ["due2"], ["10", "5", "30"]) == [b"a"]
    assert scripts.run(raw, "lease_due", ["due2"], ["100", "5", "30"]) == [b"a"]


def test_a_script_error_is_raised_as_run_raises_it_and_the_connection_stays(rdb: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError) as direct:
        scripts.run_direct(rdb, "lease_due", ["due"], ["not a number", "5", "30"])
    kept = scripts._held.conns[rdb.connection_pool]
    assert kept.is_connected                        # the error was read whole: nothing to close
    with pytest.raises(redis.ResponseError) as plain:
        scripts.run(rdb, "lease_due", ["due"], ["not a number", "5", "30"])
    assert type(direct.value) is type(plain.value) and str(direct.value) == str(plain.value)
    assert scripts.run_direct(rdb, "lease_due", ["due"], ["10", "5", "30"]) == []
    assert scripts._held.conns[rdb.connection_pool] is kept


def test_a_script_the_server_forgot_is_loaded_again(rdb: redis.Redis) -> None:
    assert scripts.run_direct(rdb, "lease_due", ["due"], ["10", "5", "30"]) == []
    rdb.script_flush()
    rdb.zadd("due", {"a": 1})
    assert scripts.run_direct(rdb, "lease_due", ["due"], ["10", "5", "30"]) == ["a"]


def test_a_connection_the_server_dropped_is_replaced_and_the_call_runs_once(rdb: redis.Redis) -> None:
    assert scripts.run_direct(rdb, "lease_due", ["due"], ["0", "5", "30"]) == []    # this thread keeps a connection
    killer = twin(rdb, decode=True)
    assert killer.client_kill_filter(_type="normal", skipme=True) >= 1
    rdb.zadd("due", {"a": 1})
    assert scripts.run_direct(rdb, "lease_due", ["due"], ["10", "5", "30"]) == ["a"]    # once: leased to 40
    assert scripts.run_direct(rdb, "lease_due", ["due"], ["10", "5", "30"]) == []


def _new_envid(r: redis.Redis, member: int) -> str:
    return scripts.run_direct(r, "member_envid", [keys.group("g"), keys.env_seq()], [str(member)])


def test_each_thread_gets_its_own_replies(rdb: redis.Redis) -> None:
    rdb.hset(keys.group("g"), "name", "g")
    got: dict[int, str] = {}
    go = threading.Barrier(4)

    def run(first: int) -> None:
        go.wait()
        for member in range(first, first + 100):
            got[member] = _new_envid(rdb, member)

    threads = [threading.Thread(target=run, args=(100 * t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {m: rdb.hget(keys.group("g"), f"env:{m}") for m in range(400)}
    assert len(set(got.values())) == 400


def _child(r: redis.Redis, out: multiprocessing.queues.Queue) -> None:
    out.put((len(scripts._held.conns), _new_envid(r, 7)))


def test_a_forked_child_does_not_use_its_parents_connection(rdb: redis.Redis) -> None:
    rdb.hset(keys.group("g"), "name", "g")
    first = _new_envid(rdb, 1)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_child, args=(rdb, out))
    child.start()
    kept, envid = out.get(timeout=30)
    child.join(30)
    assert kept == 0 and envid == rdb.hget(keys.group("g"), "env:7") and envid != first
    assert _new_envid(rdb, 1) == first and _new_envid(rdb, 2) not in (first, envid)


def test_a_connection_packing_commands_in_python_gets_the_same_replies(rdb: redis.Redis) -> None:
    kw = rdb.connection_pool.connection_kwargs
    encoder = Encoder("utf-8", "strict", True)
    pool = redis.ConnectionPool(host=kw["host"], port=kw["port"], password=kw["password"], decode_responses=True,
                                command_packer=PythonRespSerializer(6000, encoder.encode))
    client = redis.Redis(connection_pool=pool)
    rdb.zadd("due", {"a": 1, "é": 2})
    assert scripts.run_direct(client, "lease_due", ["due"], ["10", "5", "30"]) == ["a", "é"]
    assert type(scripts._held.conns[pool]._command_packer) is PythonRespSerializer
    pool.disconnect()
