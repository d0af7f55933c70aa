-- budget_reserve: count, for each user of a claim, what it may be sent now under the hourly budget
-- (worker/drain/budget.py decides the same way in Python, from what this returns).
--
-- KEYS  the shard's budget slot hashes, oldest first (the current slot and the six before it).
-- ARGV  limit, TTL ms, n users, the n user keys, k, then k pairs (position, wanted) for the users
--       that want more than one.
-- Reply only for the users that may not be sent all they want:
--       {position (0-based), allowed, count in each slot (oldest first)} per such user, flat.
--
-- What may go is counted in the current slot at once, so the common case is this one call.  Each
-- slot hash also holds '#max' (no user key starts with '#'), the highest count in it.

local limit, ttl, n = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local wanted = {}
local k = tonumber(ARGV[4 + n])
local most = 1
for i = 0, k - 1 do
  local want = tonumber(ARGV[6 + n + 2 * i])
  wanted[tonumber(ARGV[5 + n + 2 * i]) + 1] = want
  if want > most then most = want end
end
local current_key = KEYS[#KEYS]

-- Redis writes a Lua number out with a printf (a sixth of this script's time for a claim of new
-- users): the counts, small integers and most of them 1, go to Redis as text, each formatted once.
local texts, numbers = {}, {}
local function text(v)
  local t = texts[v]
  if not t then
    t = tostring(v)
    texts[v] = t
  end
  return t
end

-- Count what goes in the current slot, and raise the slot's mark (the highest count of any user in
-- it: a bound, since a refund lowers a count and never the mark).
-- ``allowed``: per user, what may go; nil: all that each wants.
local function count(column, allowed_by_user)
  -- m counts the pairs: Lua 5.1's # searches the table, and this loop runs for every user
  local updates, m, high = {}, 0, tonumber(redis.call('HGET', current_key, '#max') or '0')
  local argv = ARGV
  for u = 1, n do
    local allowed = allowed_by_user and allowed_by_user[u] or (wanted[u] or 1)
    if allowed > 0 then
      -- a count read back as text, converted once per distinct text (a strtod each time otherwise)
      local had, value = column[u], allowed
      if had then
        local v = numbers[had]
        if not v then
          v = tonumber(had)
          numbers[had] = v
        end
        value = v + allowed
      end
      if value > high then high = value end
      local t = texts[value]  -- text(value), inline in the loop over every user
      if not t then
        t = tostring(value)
        texts[value] = t
      end
      updates[m + 1] = argv[3 + u]
      updates[m + 2] = t
      m = m + 2
    end
  end
  if m > 0 then
    updates[m + 1] = '#max'
    updates[m + 2] = text(high)
    redis.call('HSET', current_key, unpack(updates, 1, m + 2))
    redis.call('PEXPIRE', current_key, ttl)
  end
end

-- Far below the limit (the common case), no user of the call can reach it: each slot's mark bounds
-- every user's count in it, so when the marks and the most anyone wants stay within the limit, every
-- user may have all it wants, the same decision as counting each one, and only the current slot
-- is read.  Reading six older slots for every user was most of the drain's Redis time.
local marks, present = 0, {}
for s = 1, #KEYS do
  local high = redis.call('HGET', KEYS[s], '#max')
  if high then
    marks = marks + tonumber(high)
    present[s] = true
  elseif redis.call('EXISTS', KEYS[s]) == 1 then
    marks = limit  -- counts without a mark (written before marks existed): count each user
    present[s] = true
  end
end
if marks + most <= limit then
  count(present[#KEYS] and redis.call('HMGET', current_key, unpack(ARGV, 4, 3 + n)) or {}, nil)
  return {}
end

-- slot by slot, the slots that exist: most users have nothing in most slots, and an empty field
-- costs no conversion
local totals, current = {}, {}
for s = 1, #KEYS do
  if present[s] then
    local column = redis.call('HMGET', KEYS[s], unpack(ARGV, 4, 3 + n))
    for u = 1, n do
      local v = column[u]
      if v then totals[u] = (totals[u] or 0) + tonumber(v) end
    end
    if s == #KEYS then current = column end
  end
end
local allowed, out = {}, {}
for u = 1, n do
  local want = wanted[u] or 1
  allowed[u] = math.max(0, math.min(want, limit - (totals[u] or 0)))
  if allowed[u] < want then
    out[#out + 1] = u - 1
    out[#out + 1] = allowed[u]
    for s = 1, #KEYS do
      out[#out + 1] = present[s] and tonumber(redis.call('HGET', KEYS[s], ARGV[3 + u]) or 0) or 0
    end
  end
end
count(current, allowed)
return out
