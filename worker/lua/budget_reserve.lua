-- budget_reserve: count, for each user of a claim, what it may be sent now under the hourly budget
-- (worker/drain/budget.py decides the same way in Python, from what this returns).
--
-- KEYS  the shard's budget slot hashes, oldest first (the current slot and the six before it).
-- ARGV  limit, TTL ms, n users, the n user keys, k, then k pairs (position, wanted) for the users
--       that want more than one.
-- Reply only for the users that may not be sent all they want:
--       {position (0-based), allowed, count in each slot (oldest first)} per such user, flat.
--
-- What may go is counted in the current slot at once, so the common case is this one call.

local limit, ttl, n = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local wanted = {}
local k = tonumber(ARGV[4 + n])
for i = 0, k - 1 do wanted[tonumber(ARGV[5 + n + 2 * i]) + 1] = tonumber(ARGV[6 + n + 2 * i]) end
-- slot by slot: most users have nothing in most slots, and an empty field costs no conversion
local totals, current = {}, nil
for s = 1, #KEYS do
  local column = redis.call('HMGET', KEYS[s], unpack(ARGV, 4, 3 + n))
  for u = 1, n do
    local v = column[u]
    if v then totals[u] = (totals[u] or 0) + tonumber(v) end
  end
  if s == #KEYS then current = column end
end
local updates, out = {}, {}
for u = 1, n do
  local want = wanted[u] or 1
  local allowed = math.max(0, math.min(want, limit - (totals[u] or 0)))
  if allowed > 0 then
    updates[#updates + 1] = ARGV[3 + u]
    updates[#updates + 1] = tonumber(current[u] or 0) + allowed
  end
  if allowed < want then
    out[#out + 1] = u - 1
    out[#out + 1] = allowed
    for s = 1, #KEYS do out[#out + 1] = tonumber(redis.call('HGET', KEYS[s], ARGV[3 + u]) or 0) end
  end
end
if #updates > 0 then
  redis.call('HSET', KEYS[#KEYS], unpack(updates))
  redis.call('PEXPIRE', KEYS[#KEYS], ttl)
end
return out
