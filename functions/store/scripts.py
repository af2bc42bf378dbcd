"""Every Lua script Carina runs in Redis, by name, and `run` to call one atomically (EVALSHA, loaded on first use).

Each script opens with a legend of its KEYS and ARGV. Scripts are constants: only keys and arguments vary,
never script text, and no user text is ever evaluated.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import redis
from redis.commands.core import Script

LUA: dict[str, str] = {}

# Compare-and-delete: release a lock or guard only if ARGV[1] still owns it.
LUA["release_if_owner"] = """
-- KEYS[1] lock or guard key; ARGV[1] owner token. Returns 1 if deleted.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Compare-and-renew: extend a lock (ms) only if ARGV[1] still owns it.
LUA["renew_if_owner"] = """
-- KEYS[1] lock key; ARGV[1] owner token, ARGV[2] new TTL (ms). Returns 1 if renewed.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# Leave the in-flight set only if the environment's current job is still the one that finished.
LUA["clear_inflight"] = """
-- KEYS[1] env hash, KEYS[2] in-flight set; ARGV[1] envid, ARGV[2] jobid that finished.
local job = redis.call('HGET', KEYS[1], 'job')
if (not job) or job == ARGV[2] then redis.call('SREM', KEYS[2], ARGV[1]) return 1 end
return 0
"""

# The envid of member ARGV[1]: the one recorded, else a fresh one from the env counter, recorded.
LUA["member_envid"] = """
-- KEYS[1] group hash, KEYS[2] envid counter; ARGV[1] member index. Returns the envid or nil.
local e = redis.call('HGET', KEYS[1], 'env:' .. ARGV[1])
if e then return e end
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
e = tostring(redis.call('INCR', KEYS[2]))
redis.call('HSET', KEYS[1], 'env:' .. ARGV[1], e)
return e
"""

# Set the pending mark unless one is already due no later than ours (+ slack). Returns 1 if set.
LUA["kick_mark"] = """
-- KEYS[1] pending-kick mark; ARGV[1] due time, ARGV[2] slack (s), ARGV[3] mark TTL (s).
local cur = redis.call('GET', KEYS[1])
if cur and tonumber(cur) <= tonumber(ARGV[1]) + tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""

# Clear the pending mark if it stands for the running job (same due time) or is due by now.
LUA["kick_clear"] = """
-- KEYS[1] pending-kick mark; ARGV[1] now + early slack, ARGV[2] the running job's due time.
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local due = tonumber(cur)
if due <= tonumber(ARGV[1]) or math.abs(due - tonumber(ARGV[2])) < 0.002 then
  redis.call('DEL', KEYS[1]) return 1
end
return 0
"""

# Take (and remove) up to ARGV[2] members due by ARGV[1] from a schedule zset.
LUA["pop_due"] = """
-- KEYS[1] schedule zset; ARGV[1] now, ARGV[2] batch size. Returns the members taken.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(due) do redis.call('ZREM', KEYS[1], m) end
return due
"""

# Take the due retries: push their due time RETRY_LEASE seconds on (a pumper killed before enqueueing them
# leaves them due again later, so a retry is never lost) and return them.
LUA["lease_due"] = """
-- KEYS[1] retry zset; ARGV[1] now, ARGV[2] batch size, ARGV[3] lease (s). Returns the members leased.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(due) do redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[3]), m) end
return due
"""

# For a deleted environment: drop its in-flight mark and take (GETDEL) its op guard.
LUA["finish_vanished"] = """
-- KEYS[1] env hash, KEYS[2] op guard, KEYS[3] in-flight set; ARGV[1] envid. Returns the guard's jobid.
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
redis.call('SREM', KEYS[3], ARGV[1])
return redis.call('GETDEL', KEYS[2])
"""

# Move a job to a final state unless it already has one.
LUA["finish_job"] = """
-- KEYS[1] job hash; ARGV[1] final status, ARGV[2] end time, ARGV[3] info. Returns 1 if it ended now.
local s = redis.call('HGET', KEYS[1], 'status')
if (not s) or s == 'DONE' or s == 'FAIL' or s == 'ABORT' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'end', ARGV[2], 'info', ARGV[3])
return 1
"""

# Set hash fields only if the hash exists (never resurrect a deleted environment).
LUA["hset_if_exists"] = """
-- KEYS[1] hash; ARGV field, value, field, value... Returns 1.
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], unpack(ARGV)) end
return 1
"""

# Take an environment out of the watch set only if its entry still is the one read (a newer drive's stays).
LUA["unwatch_if_equals"] = """
-- KEYS[1] watch hash, KEYS[2] next-check zset; ARGV[1] envid, ARGV[2] entry read. Returns 1 if taken out.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# Take the watcher's next pass if it is due and something is watched: lease it (push the due time on by
# ARGV[2] s, so one pass is queued at a time and a lost one comes back). Returns 1 if taken.
LUA["watch_take"] = """
-- KEYS[1] watch schedule zset (member 'watch'), KEYS[2] watch hash; ARGV[1] now, ARGV[2] lease (s).
if redis.call('HLEN', KEYS[2]) == 0 then return 0 end
local due = redis.call('ZSCORE', KEYS[1], 'watch')
if due and tonumber(due) > tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), 'watch')
return 1
"""


_REGISTERED: weakref.WeakKeyDictionary[redis.Redis, dict[str, Script]] = weakref.WeakKeyDictionary()


def _script(client: redis.Redis, name: str) -> Script:
    """Script `name` registered once per client (its SHA computed once; EVALSHA, loaded on first NOSCRIPT)."""
    scripts = _REGISTERED.setdefault(client, {})
    if name not in scripts:
        scripts[name] = client.register_script(LUA[name])
    return scripts[name]


def run(client: redis.Redis, name: str, keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
    """Run script `name` with `keys` and `args` on `client` (one atomic Redis call)."""
    return _script(client, name)(keys=list(keys), args=list(args), client=client)
