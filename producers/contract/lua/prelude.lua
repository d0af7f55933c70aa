-- The prelude: put before every script of identify-queue (producers/contract/scripts.py).
--
-- Every identify-queue script runs inside Redis, atomically, and blocks every other client while
-- it runs: each one touches what its call is about, never a whole backlog.  Keys come in KEYS,
-- always; a script never builds a key name.  An error reply is `<CODE> key=value ...`, and the
-- code names an exception of the error tree (`code = "..."` on the class).

local iq = {}

-- Redis's clock in milliseconds: the one clock every decision on time reads.
function iq.now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- An error reply the caller maps to its exception: iq.fail('QUEUE_MISMATCH', 'shards', 16).
function iq.fail(code, ...)
  local parts = {code}
  local fields = {...}
  for i = 1, #fields, 2 do parts[#parts + 1] = tostring(fields[i]) .. '=' .. tostring(fields[i + 1]) end
  return redis.error_reply(table.concat(parts, ' '))
end

-- RPUSH values[first..last] onto key, in slices: Lua's C stack takes a few thousand values at most.
function iq.push(key, values, first, last)
  local i = first
  while i <= last do
    local j = math.min(i + 999, last)
    redis.call('RPUSH', key, unpack(values, i, j))
    i = j + 1
  end
end

-- Wake a dispatcher blocked on the kick list (it holds at most one element).
function iq.kick(kick)
  if redis.call('LLEN', kick) == 0 then redis.call('RPUSH', kick, '1') end
end

-- Count n records of a kind ('d' delivered, 'e' enqueued) in the current minute of a shard's
-- `minutes` hash: a ring of 64 minutes (fields m<i>, d<i>, e<i>), so it never grows.
function iq.count_minute(key, kind, n, now_ms)
  local minute = math.floor(now_ms / 60000)
  local i = minute % 64
  if tonumber(redis.call('HGET', key, 'm' .. i) or '-1') ~= minute then
    redis.call('HSET', key, 'm' .. i, minute, 'd' .. i, 0, 'e' .. i, 0)
  end
  redis.call('HINCRBY', key, kind .. i, n)
end
