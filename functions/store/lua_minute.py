"""The Lua scripts of the minute tick: the VM refresh's writes and the policy pass's compare-and-set writes.

Registered into functions.store.scripts.LUA (the one table of every script; `scripts.run` calls them by name).
Each script opens with a legend of its KEYS and ARGV; scripts are constants, never built from user text.
"""

from __future__ import annotations

LUA: dict[str, str] = {}

# The minute refresh's write: the observed fields of a VM record (a flat JSON object written by json.dumps: a
# quoted key followed by ':' only occurs as a key, string values have their quotes escaped) replaced in place
# (every other field as stored now), only if its vmid and each field written still read what the refresh read
# and no step holds the env lock (a field another writer changed meanwhile is never overwritten; fields not
# written are not compared). A field is found by a plain search for its quoted key, its value by a match
# anchored right after it (not a pattern tried at every position).
LUA["observe_write"] = """
-- KEYS[1], KEYS[2] env lock, its VM records (and so on per env); ARGV[1] JSON: per env a list of [slot, [vmid,
-- one_state, vm_state, lcm_state, checked, one_ip] as read, the same six as they become] (values are letters,
-- digits and . : @ + - only), ARGV[2..] the envids. The last two KEYS: vms_gen and vms_dirty (an env with a record
-- written is marked changed). Returns per env the records written, -1 if the lock was held.
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
local gen, dirty = KEYS[#KEYS - 1], KEYS[#KEYS]
for i = 1, #KEYS - 2, 2 do
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
    if n > 0 then redis.call('ZADD', dirty, redis.call('INCR', gen), ARGV[(i + 3) / 2]) end
  end
  out[#out + 1] = n
end
return out
"""

# The minute refresh's CPU figures: many environments' env_cpu strings in one call (one command instead of two
# per env); an environment whose records are gone (deleted since the read) gets none.
LUA["cpu_write"] = """
-- KEYS[1], KEYS[2] an env's VM records, its env_cpu string (and so on per env); ARGV[1] TTL (s), then per env its
-- figures (JSON). Returns the number of envs written.
local done = 0
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('SET', KEYS[i + 1], ARGV[(i + 3) / 2], 'EX', ARGV[1])
    done = done + 1
  end
end
return done
"""

# The policy pass's read of many environments' heads: the fields it asks for and the op guard's holder, one
# command per batch instead of two per environment.
LUA["policy_heads"] = """
-- KEYS[1], KEYS[2] an env hash, its op guard (and so on per env); ARGV the field names. Returns per env the
-- fields' values (false when absent) then the guard's holder (false when free), flat.
local out = {}
for i = 1, #KEYS, 2 do
  for _, value in ipairs(redis.call('HMGET', KEYS[i], unpack(ARGV))) do out[#out + 1] = value end
  out[#out + 1] = redis.call('GET', KEYS[i + 1])
end
return out
"""

# The state of many jobs at once (the policy pass asks for each env's guard holder and last job): one flat
# answer parses far faster than thousands of pipelined HMGET replies.
LUA["job_states"] = """
-- KEYS[1], KEYS[2], ... job hashes; ARGV none. Returns per job its status then its end (false when absent), flat.
local out = {}
for i = 1, #KEYS do
  local found = redis.call('HMGET', KEYS[i], 'status', 'end')
  out[2 * i - 1] = found[1]
  out[2 * i] = found[2]
end
return out
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
