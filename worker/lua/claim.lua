-- claim: take what the next request of a shard can carry (worker/drain/claim.py).
--
-- KEYS  lease, queue, inflight, state, parked, parked_why, waiting.
-- ARGV  token, max entries, max bytes, max users released per claim.
-- Reply {now ms, recoveries, retry wait ms, users that wait, entries...}: a header of four, then
--       the entries.
-- Error LEASE_LOST when the lease is not the caller's.
--
-- Inflight not empty: it is returned as it is, read again first (left by a clean release waiting
-- to retry, or by a drainer that died: then a recovery is counted, which is how poison records are
-- found).  Otherwise users whose wait has ended give their oldest waiting updates first (at most
-- half the claim while the queue has entries too, so that one user's long backlog cannot stall
-- everybody else), then the queue's head, up to the counts and bytes one request carries.  A wait
-- means nothing was claimed: the shard's own retry time has not come.  Whether sending is blocked
-- (and whether this drain is the probe) is asked once per drain, of the global slot, by
-- drain_begin.lua: on a Redis Cluster a shard's script cannot read it.
-- The drainer puts back behind a user's waiting updates whatever is newer than them.
--! uses: waiting

if redis.call('GET', KEYS[1]) ~= ARGV[1] then return iq.fail('LEASE_LOST') end
local now = iq.now_ms()
local function header(recoveries, wait)
  return {now, recoveries, wait, redis.call('ZCARD', KEYS[5])}
end

local in_flight = redis.call('LLEN', KEYS[3])
local due_users = {}
if redis.call('ZCARD', KEYS[5]) > 0 then
  due_users = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
end
local queued = redis.call('LLEN', KEYS[2])
if in_flight == 0 and #due_users == 0 and queued == 0 then return header(0, 0) end
local retry_at = tonumber(redis.call('HGET', KEYS[4], 'retry_at') or '0')
if retry_at > now then return header(0, retry_at - now) end
local previous = redis.call('HGET', KEYS[4], 'claimer')
redis.call('HSET', KEYS[4], 'claimer', ARGV[1])

if in_flight > 0 then
  local recoveries = 0
  if redis.call('HGET', KEYS[4], 'kept') then
    redis.call('HDEL', KEYS[4], 'kept')
  else
    recoveries = redis.call('HINCRBY', KEYS[4], 'recoveries', 1)
    if previous then redis.call('HSET', KEYS[4], 'recovered_from', previous) end
  end
  local out = header(recoveries, 0)
  for _, e in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do out[#out + 1] = e end
  return out
end

local out = header(0, 0)
local room, bytes, max_bytes = tonumber(ARGV[2]), 0, tonumber(ARGV[3])
local release_room = room
if queued > 0 then release_room = math.ceil(room / 2) end
for _, user in ipairs(due_users) do
  if release_room <= 0 or bytes >= max_bytes then break end
  local taken = waiting.take(KEYS[7], KEYS[5], KEYS[6], user, release_room)
  for _, e in ipairs(taken) do
    out[#out + 1] = e
    bytes = bytes + #e
  end
  release_room = release_room - #taken
  room = room - #taken
end
if room > 0 and queued > 0 and bytes < max_bytes then
  local items = redis.call('LRANGE', KEYS[2], 0, room - 1)
  local n = 0
  for i, e in ipairs(items) do
    if bytes > 0 and bytes + #e > max_bytes then break end
    bytes = bytes + #e
    n = i
  end
  redis.call('LTRIM', KEYS[2], n, -1)
  local at = #out  -- once: Lua 5.1's # searches the table, a tenth of a record's time here
  for i = 1, n do out[at + i] = items[i] end
end
out[4] = redis.call('ZCARD', KEYS[5])  -- after the releases
if #out > 4 then iq.push(KEYS[3], out, 5, #out) end
return out
