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

# Fenced writes: change a hash only while ARGV[1] still owns the environment lock KEYS[1] (a holder that lost
# its lock during a long pause never writes after the new holder started).
LUA["hset_if_owner"] = """
-- KEYS[1] env lock, KEYS[2] hash; ARGV[1] owner token, ARGV[2..] field, value[, field, value ...].
-- Returns 1 if written (every pair), 0 if nothing was.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 2))
return 1
"""

LUA["hdel_if_owner"] = """
-- KEYS[1] env lock, KEYS[2] hash; ARGV[1] owner token, ARGV[2] field. Returns 1 if the owner still holds it.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[2])
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

# The minute refresh's write: the observed fields of a VM record (a flat JSON object written by json.dumps: a
# quoted key followed by ':' only occurs as a key, string values have their quotes escaped) replaced in place
# (every other field as stored now), only if its vmid and each field written still read what the refresh read
# and no step holds the env lock (a field another writer changed meanwhile is never overwritten; fields not
# written are not compared). A field is found by a plain search for its quoted key, its value by a match
# anchored right after it (not a pattern tried at every position).
LUA["observe_write"] = """
-- KEYS[1], KEYS[2] env lock, its VM records (and so on per env); ARGV[1] JSON: per env a list of
-- [slot, [vmid, one_state, vm_state, lcm_state, checked, one_ip] as read, the same six as they become]
-- (values are letters, digits and . : @ + - only). Returns per env the records written, -1 if the lock was held.
local NAMES = {'vmid', 'one_state', 'vm_state', 'lcm_state', 'checked', 'one_ip'}
local QUOTED = {false, true, false, false, true, true}
local function span(rec, k)
  local _, e = string.find(rec, '"' .. NAMES[k] .. '":', 1, true)
  if not e then return nil end
  if QUOTED[k] then return string.match(rec, '^%s*()"[^"]*"()', e + 1) end
  return string.match(rec, '^%s*()[^,}%s]*()', e + 1)
end
local function get(rec, k)
  local vs, ve = span(rec, k)
  if not vs then return '' end
  if QUOTED[k] then return string.sub(rec, vs + 1, ve - 2) end
  return string.sub(rec, vs, ve - 1)
end
local function put(rec, k, value)
  local text = QUOTED[k] and ('"' .. value .. '"') or value
  local vs, ve = span(rec, k)
  if not vs then return string.sub(rec, 1, -2) .. ', "' .. NAMES[k] .. '": ' .. text .. '}' end
  return string.sub(rec, 1, vs - 1) .. text .. string.sub(rec, ve)
end
local items = cjson.decode(ARGV[1])
local out = {}
for i = 1, #KEYS, 2 do
  local n = -1
  if redis.call('EXISTS', KEYS[i]) == 0 then
    n = 0
    for _, w in ipairs(items[(i + 1) / 2]) do
      local rec = redis.call('HGET', KEYS[i + 1], w[1])
      local same = rec ~= false
      for k = 1, #NAMES do
        if same and (k == 1 or w[3][k] ~= w[2][k]) and get(rec, k) ~= w[2][k] then same = false end
      end
      if same then
        for k = 1, #NAMES do
          if w[3][k] ~= w[2][k] then rec = put(rec, k, w[3][k]) end
        end
        redis.call('HSET', KEYS[i + 1], w[1], rec)
        n = n + 1
      end
    end
  end
  out[#out + 1] = n
end
return out
"""

# The minute refresh's CPU figures: many environments' env_cpu hashes in one call (one command instead of two
# per env); an environment whose records are gone (deleted since the read) gets none.
LUA["cpu_write"] = """
-- KEYS[1], KEYS[2] an env's VM records, its env_cpu hash (and so on per env); ARGV[1] TTL (s), then per env
-- the number of pairs n and n slot, entry pairs. Returns the number of envs written.
local a, done = 2, 0
for i = 1, #KEYS, 2 do
  local n = tonumber(ARGV[a])
  if n > 0 and redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HSET', KEYS[i + 1], unpack(ARGV, a + 1, a + 2 * n))
    redis.call('EXPIRE', KEYS[i + 1], ARGV[1])
    done = done + 1
  end
  a = a + 1 + 2 * n
end
return done
"""

# Write the policy state of many environments, each only if its policy_status and pol_minute are still the
# values the policy pass read (compare-and-set: a racing create end or a second pass never gets overwritten).
LUA["policy_write"] = """
-- KEYS[1], KEYS[2], ... env hashes; ARGV[1] JSON: per env [expected policy_status, expected pol_minute
-- ("" = absent), {field: value, ...}]. Returns a list of 1 (written) / 0 (gone or changed), one per env.
local items = cjson.decode(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local st, mi, fields = items[i][1], items[i][2], items[i][3]
  local ok = 0
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local cur = redis.call('HMGET', KEYS[i], 'policy_status', 'pol_minute')
    if (cur[1] or '') == st and (cur[2] or '') == mi then
      local args = {}
      for name, value in pairs(fields) do args[#args + 1] = name; args[#args + 1] = value end
      if #args > 0 then redis.call('HSET', KEYS[i], unpack(args)) end
      ok = 1
    end
  end
  out[i] = ok
end
return out
"""

# Start a policy's operation: the policy state, the env's op fields, the job and the in-flight mark in one
# step, only if the op guard is held by that job and the policy state is still the one read.
LUA["policy_start"] = """
-- KEYS[1] env hash, KEYS[2] op guard, KEYS[3] job hash, KEYS[4] service jobs, KEYS[5] in-flight set; ARGV below;
-- KEYS[6] the guard holder's job hash as read before (any key when there was none). ARGV: [1] expected policy_status,
-- [2] expected pol_minute, [3] jobid, [4] envid, [5] the holder read before ('' = none), [6] env field count c,
-- then c env field/value pairs, then the job's field/value pairs. Claims the guard (free, or held by that
-- holder whose job ended or was never written) and starts the job in one step. Returns 1 if started, else 0.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[5] then return 0 end
if holder then
  local s = redis.call('HGET', KEYS[6], 'status')
  if s and s ~= 'DONE' and s ~= 'FAIL' and s ~= 'ABORT' then return 0 end
end
local cur = redis.call('HMGET', KEYS[1], 'policy_status', 'pol_minute')
if (cur[1] or '') ~= ARGV[1] or (cur[2] or '') ~= ARGV[2] then return 0 end
local c = tonumber(ARGV[6])
redis.call('SET', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 7, 6 + 2 * c))
redis.call('HSET', KEYS[3], unpack(ARGV, 7 + 2 * c, #ARGV))
redis.call('ZADD', KEYS[4], tonumber(ARGV[3]), ARGV[3])
redis.call('SADD', KEYS[5], ARGV[4])
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


# ---------------------------------------------------------------- callbacks applied in batches (ops.cbinbox)

# What the gateway needs to authorize a VM's callback, in one call: the env's service and endpoint, and the VM
# records that may be the caller: every record (ARGV[3] = '1': the gateway learns the env's roster), or the one
# the VM index names (when the caller knew the endpoint: one HGET), else every record whose "vmid" matches or is not
# set yet (a scan). The gateway still checks the record and the token.
LUA["callback_lookup"] = """
-- KEYS[1] env hash, KEYS[2] env's VM records, KEYS[3] VM index entry; ARGV[1] vmid, ARGV[2] envid, ARGV[3] all.
-- KEYS[2]: hash slot -> JSON; KEYS[3]: the VM index entry of (the env's endpoint, ARGV[1]) when the caller knows the
-- endpoint, else any absent key; ARGV[1]: the callback's vmid (digits); ARGV[3]: '1' = return every record.
-- Returns {service or false, endpoint, {JSON of the records whose vmid is ARGV[1], then of those with no vmid yet}}
-- (or of every record). Plain substring searches, for both JSON layouts (a pattern scan costs ~2 us a record).
local env = redis.call('HMGET', KEYS[1], 'service', 'endpoint')
if not env[1] then return {false, '', {}} end
if ARGV[3] == '1' then return {env[1], env[2] or '', redis.call('HVALS', KEYS[2])} end
local function has(text, value)
  for _, sep in ipairs({'": ', '":'}) do
    local needle = '"vmid' .. sep .. value
    local i = string.find(text, needle, 1, true)
    if i then
      local c = string.sub(text, i + #needle, i + #needle)
      if c == ',' or c == '}' or c == ' ' then return true end
    end
  end
  return false
end
local idx = redis.call('GET', KEYS[3])
if idx then
  local sp = string.find(idx, ' ', 1, true)
  if sp and string.sub(idx, 1, sp - 1) == ARGV[2] then
    local text = redis.call('HGET', KEYS[2], string.sub(idx, sp + 1))
    if text and has(text, ARGV[1]) then return {env[1], env[2] or '', {text}} end
  end
end
local hit, free = {}, {}
for _, text in ipairs(redis.call('HVALS', KEYS[2])) do
  if has(text, ARGV[1]) then hit[#hit + 1] = text elseif has(text, 'null') then free[#free + 1] = text end
end
for _, text in ipairs(free) do hit[#hit + 1] = text end
return {env[1], env[2] or '', hit}
"""

# A VM's callback at the gateway, in one call: take a token from its bucket, tell a repeat of the last report of its
# kind from a new one, then (queued) append it to the env's inbox, remember it as the last of its kind, and lease a
# drain unless one is pending. A gateway that authorized this VM before (and skipped callback_lookup) has the script
# check first that the VM record it authorized is still there.
LUA["callback_ingest"] = """
-- KEYS[1] the VM's callback gate, KEYS[2..5] and ARGV[1..13] below.
-- KEYS[2] the env's callback inbox, KEYS[3] the drains schedule, KEYS[4] the env's VM records, KEYS[5] env hash.
-- ARGV[1] now (s), ARGV[2] tokens a second, ARGV[3] burst, ARGV[4] kind, ARGV[5] the callback's values (canonical
-- JSON), ARGV[6] the gate's TTL (s), ARGV[7] seconds between two "throttled" notes, ARGV[8] the inbox entry
-- (JSON), ARGV[9] envid, ARGV[10] until when a new drain is leased (epoch), ARGV[11] slot to check ('' = none),
-- ARGV[12] its nonce, ARGV[13] the callback's vmid.
-- Returns {code, ms, note, drain}: code 1 appended and remembered; 2 same values as the last queued report of that
-- kind (nothing queued); 0 throttled (ms until a token is back, note = 1 when no refusal was noted for ARGV[7] s);
-- 3 the env, or the record of ARGV[11] with nonce ARGV[12] and vmid ARGV[13] (or none yet), is gone (nothing done:
-- authorize again). drain = 1 when no drain of the env was pending (now one is, leased until ARGV[10]: the caller
-- queues it).
if ARGV[11] ~= '' then
  local text = redis.call('EXISTS', KEYS[5]) == 1 and redis.call('HGET', KEYS[4], ARGV[11])
  local rec = text and cjson.decode(text)
  if not rec or rec.nonce ~= ARGV[12] or not (rec.vmid == cjson.null or tostring(rec.vmid) == ARGV[13]) then
    return {3, 0, 0, 0}
  end
end
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local function num(x) return string.format('%.17g', x) end
local g = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'noted', 'last:' .. ARGV[4])
local tokens = tonumber(g[1]) or burst
local ts = tonumber(g[2]) or now
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
if tokens < 1 - 1e-9 then
  local note = 0
  if (not g[3]) or now - tonumber(g[3]) >= tonumber(ARGV[7]) then
    note = 1
    redis.call('HSET', KEYS[1], 'noted', num(now))
  end
  redis.call('HSET', KEYS[1], 'tokens', num(tokens), 'ts', num(ts))
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  return {0, math.ceil((1 - tokens) / rate * 1000), note, 0}
end
redis.call('HSET', KEYS[1], 'tokens', num(math.max(tokens - 1, 0)), 'ts', num(ts))
if g[4] == ARGV[5] then
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  return {2, 0, 0, 0}
end
redis.call('HSET', KEYS[1], 'last:' .. ARGV[4], ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('RPUSH', KEYS[2], ARGV[8])
local drain = 0
if not redis.call('ZSCORE', KEYS[3], ARGV[9]) then
  redis.call('ZADD', KEYS[3], ARGV[10], ARGV[9])
  drain = 1
end
return {1, 0, 0, drain}
"""

# One step of a drain, atomically and only while the drain holds the env lock: write the batch it folded (changed
# VM records, env status, events) and take that batch off the inbox's head, then take the next batch with only the
# VM records its entries name (by the slot each token proved), or, the inbox being empty, forget the env's pending
# drain (a callback appended later finds none and queues one).
LUA["callback_step"] = """
-- KEYS[1] env lock, KEYS[2] the env's VM records, KEYS[3] env hash, KEYS[4] inbox; ARGV[1..8] and the rest below.
-- KEYS[5] env events, KEYS[6] service events, KEYS[7] drains schedule. ARGV[1] fence (the lock's owner token),
-- ARGV[2] how many entries the batch written now took from the inbox's head (0: none), ARGV[3] the env's new
-- status ('' = unchanged), ARGV[4] the streams' MAXLEN (approximate), ARGV[5] envid, ARGV[6] next batch size,
-- ARGV[7] lease end (epoch: the pending drain is pushed on to it if sooner), ARGV[8] record count c, then c
-- slot/JSON pairs, then each event as a JSON array of field, value, field, value...
-- Returns {1, service, {next entries}, {JSON of the records they name by slot, or of every record when one names
-- no slot}}; {3} the inbox is empty, the pending drain forgotten; {0} the fence lost the lock (nothing written);
-- {2} the env is gone (its inbox and pending drain dropped).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
local svc = redis.call('HGET', KEYS[3], 'service')
if not svc then
  redis.call('DEL', KEYS[4])
  redis.call('ZREM', KEYS[7], ARGV[5])
  return {2}
end
local c = tonumber(ARGV[8])
if c > 0 then redis.call('HSET', KEYS[2], unpack(ARGV, 9, 8 + 2 * c)) end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[3], 'status', ARGV[3]) end
for i = 9 + 2 * c, #ARGV do
  local fields = cjson.decode(ARGV[i])
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*', unpack(fields))
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[4], '*', unpack(fields))
end
if tonumber(ARGV[2]) > 0 then redis.call('LTRIM', KEYS[4], tonumber(ARGV[2]), -1) end
local entries = redis.call('LRANGE', KEYS[4], 0, tonumber(ARGV[6]) - 1)
if #entries == 0 then
  redis.call('ZREM', KEYS[7], ARGV[5])
  return {3}
end
local cur = redis.call('ZSCORE', KEYS[7], ARGV[5])
if cur and tonumber(cur) < tonumber(ARGV[7]) then redis.call('ZADD', KEYS[7], ARGV[7], ARGV[5]) end
local seen, slots = {}, {}
for _, e in ipairs(entries) do
  local ok, d = pcall(cjson.decode, e)
  local s = ok and type(d) == 'table' and d['s']
  if type(s) ~= 'string' or s == '' then return {1, svc, entries, redis.call('HVALS', KEYS[2])} end
  if not seen[s] then seen[s] = true slots[#slots + 1] = s end
end
local out = {}
for _, rec in ipairs(redis.call('HMGET', KEYS[2], unpack(slots))) do if rec then out[#out + 1] = rec end end
return {1, svc, entries, out}
"""

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
