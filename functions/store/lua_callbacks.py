"""The Lua scripts of VM callbacks: the gateway's lookup and ingest, the drain's step (functions.ops.cbinbox).

Registered into functions.store.scripts.LUA (the one table of every script; `scripts.run` calls them by name).
Each script opens with a legend of its KEYS and ARGV; scripts are constants, never built from user text.
"""

from __future__ import annotations

LUA: dict[str, str] = {}

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
-- KEYS[5] env events, KEYS[6] service events, KEYS[7] drains schedule, KEYS[8] vms_gen, KEYS[9] vms_dirty (the
-- records written mark the env changed). ARGV[1] fence (the lock's owner token),
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
if c > 0 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 9, 8 + 2 * c))
  redis.call('ZADD', KEYS[9], redis.call('INCR', KEYS[8]), ARGV[5])
end
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
