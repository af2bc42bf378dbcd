"""scripts.run_direct (a script call on a hot path) against a real redis-server: the same replies and errors as
scripts.run, and it recovers as run does from a script the server forgot and from a connection the server
dropped."""

from __future__ import annotations

import pytest
import redis

from functions.store import scripts
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


def test_a_script_error_is_raised_as_run_raises_it_and_the_client_goes_on(rdb: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError) as direct:
        scripts.run_direct(rdb, "lease_due", ["due"], ["not a number", "5", "30"])
    with pytest.raises(redis.ResponseError) as plain:
        scripts.run(rdb, "lease_due", ["due"], ["not a number", "5", "30"])
    assert type(direct.value) is type(plain.value)
    assert scripts.run_direct(rdb, "lease_due", ["due"], ["10", "5", "30"]) == []


def test_a_script_the_server_forgot_is_loaded_again(rdb: redis.Redis) -> None:
    assert scripts.run_direct(rdb, "lease_due", ["due"], ["10", "5", "30"]) == []
    rdb.script_flush()
    rdb.zadd("due", {"a": 1})
    assert scripts.run_direct(rdb, "lease_due", ["due"], ["10", "5", "30"]) == ["a"]


def test_a_connection_the_server_dropped_is_replaced(rdb: redis.Redis) -> None:
    rdb.zadd("due", {"a": 1})
    assert scripts.run_direct(rdb, "lease_due", ["due"], ["0", "5", "30"]) == []
    killer = twin(rdb, decode=True)
    mine = rdb.client_id()
    assert killer.client_kill_filter(_id=mine) == 1
    assert scripts.run_direct(rdb, "lease_due", ["due"], ["10", "5", "30"]) == ["a"]
    assert rdb.client_id() != mine
