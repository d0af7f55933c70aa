-- lib/waiting: every read and write of a shard's waiting users (worker/drain/waiting.py states the
-- invariant these keep).  Scripts that need it say `--! uses: waiting`.
--
-- `waiting` (ZSET, all at score 0) holds members `<user key length>:<user key>|<seq, 15 digits>|<entry>`,
-- so a user's waiting entries are one contiguous run, oldest first; `parked` (ZSET) maps each
-- waiting user to the time it may go; `parked_why` (HASH) says why it waits.

local waiting = {}

function waiting.prefix(user)
  return #user .. ':' .. user .. '|'
end

-- An entry's seq (as text) and user key, read from its head; nil for an entry that is not ours.
function waiting.entry_user(raw)
  local seq, klen, pos = string.match(raw, '^2|(%d+)|%d+|%d+|(%d+)|()')
  if not seq then return nil end
  return seq, string.sub(raw, pos, pos + tonumber(klen) - 1)
end

-- Put an entry among its user's waiting ones, by its seq.
function waiting.add(set, user, seq, raw)
  redis.call('ZADD', set, 0, waiting.prefix(user) .. string.rep('0', 15 - #seq) .. seq .. '|' .. raw)
end

-- Put members (built by worker/drain/waiting.py) at values[first..last], one ZADD per slice.
function waiting.add_members(set, values, first, last)
  local i = first
  while i <= last do
    local j = math.min(i + 499, last)
    local scored = {}
    for x = i, j do
      scored[#scored + 1] = 0
      scored[#scored + 1] = values[x]
    end
    redis.call('ZADD', set, unpack(scored))
    i = j + 1
  end
end

-- The user waits until release_ms at least (GT: a hold extends a wait, never shortens it, and
-- adds a user that did not wait); reason '' leaves the reason as it was.
function waiting.hold(parked, why, user, release_ms, reason)
  redis.call('ZADD', parked, 'GT', release_ms, user)
  if reason ~= '' then redis.call('HSET', why, user, reason) end
end

-- Take up to n of a user's waiting entries, oldest first; a user with none left waits no more.
function waiting.take(set, parked, why, user, n)
  local prefix = waiting.prefix(user)
  local low, high = '[' .. prefix, '[' .. prefix .. '\255'
  local members = redis.call('ZRANGEBYLEX', set, low, high, 'LIMIT', 0, n)
  local out = {}
  for i, m in ipairs(members) do out[i] = string.sub(m, #prefix + 17) end
  if #members > 0 then redis.call('ZREMRANGEBYLEX', set, '[' .. members[1], '[' .. members[#members]) end
  if #members < n or #redis.call('ZRANGEBYLEX', set, low, high, 'LIMIT', 0, 1) == 0 then
    redis.call('ZREM', parked, user)
    redis.call('HDEL', why, user)
  end
  return out
end

-- The seq of a user's oldest waiting entry, or -1 when it has none.
function waiting.oldest(set, user)
  local prefix = waiting.prefix(user)
  local first = redis.call('ZRANGEBYLEX', set, '[' .. prefix, '[' .. prefix .. '\255', 'LIMIT', 0, 1)[1]
  if not first then return -1 end
  return tonumber(string.sub(first, #prefix + 1, #prefix + 15))
end
