"""Every Lua script Carina runs in Redis, by name, and `run` to call one atomically (EVALSHA, loaded on first use).
The minute tick's scripts live in functions.store.lua_minute, the callbacks' in functions.store.lua_callbacks;
LUA here holds them all.

Each script opens with a legend of its KEYS and ARGV. Scripts are constants: only keys and arguments vary,
never script text, and no user text is ever evaluated.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import redis
from redis.commands.core import Script

from functions.store import lua_callbacks, lua_minute

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

# Take the due entries of a schedule (callback retries, delayed kicks): push their due time the lease on (a
# pumper killed before enqueueing them leaves them due again later, so none is lost) and return them.
LUA["lease_due"] = """
-- KEYS[1] schedule zset; ARGV[1] now, ARGV[2] batch size, ARGV[3] lease (s). Returns the members leased.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(due) do redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[3]), m) end
return due
"""

# Forget a leased schedule entry unless it was re-scheduled meanwhile (its score is no longer the lease's).
LUA["zrem_if_score"] = """
-- KEYS[1] schedule zset; ARGV[1] member, ARGV[2] the score its lease gave it. Returns 1 if removed.
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) == tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
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

# A VM record written or deleted (every writer of env_vms but the refresh and the callback drain, which mark the
# same way), fenced when ARGV[1] is not '': only while that token still owns the environment lock KEYS[1] (a
# holder that lost its lock during a long pause never writes after the new holder started). The write bumps
# vms_gen and marks the env in vms_dirty in the same step (readers that remember records see what changed).
LUA["vm_put"] = """
-- KEYS[1] env lock, KEYS[2] the env's VM records, KEYS[3] vms_gen, KEYS[4] vms_dirty; ARGV[1] owner token
-- ('' = unfenced), ARGV[2] envid, ARGV[3..] slot, JSON[, slot, JSON ...]. Returns 1 if written (every pair), 0 if
-- nothing was.
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[3]), ARGV[2])
return 1
"""

LUA["vm_del"] = """
-- KEYS[1] env lock, KEYS[2] the env's VM records, KEYS[3] vms_gen, KEYS[4] vms_dirty; ARGV[1] owner token
-- ('' = unfenced), ARGV[2] envid, ARGV[3] slot. Returns 1 unless the fence lost the lock.
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('HDEL', KEYS[2], ARGV[3]) == 1 then
  redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[3]), ARGV[2])
end
return 1
"""

# Move a job to a final state unless it already has one, only while ARGV[4] still owns the env lock KEYS[2].
LUA["finish_job_if_owner"] = """
-- KEYS[1] job hash, KEYS[2] env lock; ARGV[1] final status, ARGV[2] end time, ARGV[3] info, ARGV[4] owner token.
-- Returns 1 if it ended now, 0 if already final, -1 if the lock is lost.
if redis.call('GET', KEYS[2]) ~= ARGV[4] then return -1 end
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

# The bytes a service's uploaded files take: the counter, or (missing) the sum over both file hashes.
_UPLOAD_USAGE = """
local function usage(counter, a, b)
  local used = redis.call('GET', counter)
  if used then return tonumber(used) end
  used = 0
  for _, h in ipairs({a, b}) do
    for _, f in ipairs(redis.call('HKEYS', h)) do used = used + redis.call('HSTRLEN', h, f) end
  end
  return used
end
"""

# Store one uploaded file unless it breaks the per-kind file cap or the service's byte quota; keeps the counter.
LUA["save_file"] = """
-- KEYS[1] the kind's file hash, KEYS[2] the other kind's file hash, KEYS[3] the service's byte counter; ARGV[1]
-- file name, ARGV[2] content (as stored), ARGV[3] max files per kind, ARGV[4] quota (bytes).
-- Returns {1, usage after} stored; {-1, usage} too many files; {-2, usage} over the quota (nothing written).
""" + _UPLOAD_USAGE + """
local used = usage(KEYS[3], KEYS[1], KEYS[2])
local old = redis.call('HSTRLEN', KEYS[1], ARGV[1])
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return {-1, used}
end
local after = used - old + string.len(ARGV[2])
if after > tonumber(ARGV[4]) and after > used then return {-2, used} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SET', KEYS[3], after)
return {1, after}
"""

# The service's upload usage, recounted from both file hashes when ARGV[1] is "1" or the counter is missing.
LUA["upload_usage"] = """
-- KEYS[1] .vm file hash, KEYS[2] context file hash, KEYS[3] byte counter; ARGV[1] "1" = recount.
-- Returns the bytes in use (and stores them when recounted).
""" + _UPLOAD_USAGE + """
if ARGV[1] == '1' then redis.call('DEL', KEYS[3]) end
if redis.call('EXISTS', KEYS[3]) == 1 then return tonumber(redis.call('GET', KEYS[3])) end
local used = usage(KEYS[3], KEYS[1], KEYS[2])
redis.call('SET', KEYS[3], used)
return used
"""

# The global scheduler: move a request to a new status, keeping the status sets and the usage counters of its
# pool and service in step in the same atomic call (so the counters always equal what ALLOCATED requests hold).
LUA["gs_move"] = """
-- KEYS[1] request hash, KEYS[2..3] pool/service usage, KEYS[4..7] status sets, KEYS[8] lock; ARGV[1..6] below.
-- KEYS[4..7]: the sets of PEND, ALLOCATED, RELEASED, CANCELLED; KEYS[8]: the allocator lock.
-- ARGV[1] statuses it may be in now (space-separated), ARGV[2] new status, ARGV[3] pool (to ALLOCATED),
-- ARGV[4] reason, ARGV[5] now, ARGV[6] lock token ('' = unfenced).
-- Returns 'ok', 'gone', 'fenced', or the current status when it is not allowed (nothing changed).
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return 'gone' end
local allowed = false
for s in string.gmatch(ARGV[1], '%S+') do if s == cur then allowed = true end end
if not allowed then return cur end
if ARGV[6] ~= '' and redis.call('GET', KEYS[8]) ~= ARGV[6] then return 'fenced' end
local index = {PEND = KEYS[4], ALLOCATED = KEYS[5], RELEASED = KEYS[6], CANCELLED = KEYS[7]}
local new = ARGV[2]
if not index[new] then return redis.error_reply('gs_move: unknown status ' .. new) end
local id = redis.call('HGET', KEYS[1], 'id')
local svc = redis.call('HGET', KEYS[1], 'service')
local v = tonumber(redis.call('HGET', KEYS[1], 'vcpus')) or 0
local m = tonumber(redis.call('HGET', KEYS[1], 'memory')) or 0
local function hold(pool, sign)
  redis.call('HINCRBY', KEYS[2], pool .. ':vcpus', sign * v)
  redis.call('HINCRBY', KEYS[2], pool .. ':mem', sign * m)
  redis.call('HINCRBY', KEYS[3], svc .. ':vcpus', sign * v)
  redis.call('HINCRBY', KEYS[3], svc .. ':mem', sign * m)
end
if cur == 'ALLOCATED' and new ~= 'ALLOCATED' then hold(redis.call('HGET', KEYS[1], 'pool'), -1) end
if new == 'ALLOCATED' and cur ~= 'ALLOCATED' then
  redis.call('HSET', KEYS[1], 'pool', ARGV[3])
  hold(ARGV[3], 1)
end
redis.call('HSET', KEYS[1], 'status', new, 'reason', ARGV[4])
if new == 'RELEASED' or new == 'CANCELLED' then redis.call('HSET', KEYS[1], 'ended', ARGV[5]) end
if new ~= cur then
  redis.call('ZREM', index[cur], id)
  redis.call('ZADD', index[new], id, id)
end
return 'ok'
"""


# Delete a hash field only while it still holds ARGV[2] (a binding replaced meanwhile is kept).
LUA["hdel_if_equal"] = """
-- KEYS[1] hash; ARGV[1] field, ARGV[2] expected value. Returns 1 if deleted.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
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


LUA.update(lua_minute.LUA)
LUA.update(lua_callbacks.LUA)

_REGISTERED: weakref.WeakKeyDictionary[redis.Redis, dict[str, Script]] = weakref.WeakKeyDictionary()


def _script(client: redis.Redis, name: str) -> Script:
    """Script `name` registered once per client (its SHA computed once; EVALSHA, loaded on first NOSCRIPT)."""
    scripts = _REGISTERED.get(client)
    if scripts is None:
        scripts = _REGISTERED.setdefault(client, {})
    if name not in scripts:
        scripts[name] = client.register_script(LUA[name])
    return scripts[name]


def run(client: redis.Redis, name: str, keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
    """Run script `name` with `keys` and `args` on `client` (one atomic Redis call)."""
    return _script(client, name)(keys=list(keys), args=list(args), client=client)
