-- dlq_replay: put dead letters of one shard back, each as a waiting update of its user, placed by
-- its seq: ahead of everything of that user not yet delivered (worker/deadletter.py).  The shard's
-- drain is woken by wake.lua, called after this.
--
-- KEYS  the shard's dlq:entries, dlq:index, dlq:counts, total, stats, layout, waiting, parked,
--       parked_why.
-- ARGV  cap per shard, layout (`<shards>|<format>`), then per entry: id, reason, user key, queue
--       entry (with its seq).
-- Reply {moved, 0} when done; {0, queued in the shard} when its cap would be passed (nothing moved).
-- Error QUEUE_MISMATCH shards= layout= when the shard was written with another layout (a user's
--       records in two shards would lose their order): nothing moved.
--
-- An entry already gone (replayed or purged meanwhile) is skipped, so a replay interrupted and run
-- again neither loses nor doubles one.  A replayed user is due at once, unless it already waits
-- (held, deferred): then its replayed updates wait with the others.
--! uses: waiting

local stored = redis.call('GET', KEYS[6])
if stored and stored ~= ARGV[2] then
  local shards, format = string.match(stored, '^(%d+)|(.*)$')
  return iq.fail('QUEUE_MISMATCH', 'shards', shards, 'layout', format)
end
local n = (#ARGV - 2) / 4
-- only the entries still there count against the cap: the others were replayed or purged
-- meanwhile (this call, run again after its answer was lost, finds its own entries gone)
local present = 0
for i = 0, n - 1 do present = present + redis.call('HEXISTS', KEYS[1], ARGV[3 + 4 * i]) end
local total = tonumber(redis.call('GET', KEYS[4]) or '0')
if present > 0 and total + present > tonumber(ARGV[1]) then return {0, total} end
local now = iq.now_ms()
local moved = 0
for i = 0, n - 1 do
  local id, reason, user, raw = ARGV[3 + 4 * i], ARGV[4 + 4 * i], ARGV[5 + 4 * i], ARGV[6 + 4 * i]
  if redis.call('HDEL', KEYS[1], id) == 1 then
    redis.call('ZREM', KEYS[2], id)
    if redis.call('HINCRBY', KEYS[3], reason, -1) <= 0 then redis.call('HDEL', KEYS[3], reason) end
    local seq = waiting.entry_user(raw)
    waiting.add(KEYS[7], user, seq, raw)
    if redis.call('ZADD', KEYS[8], 'NX', now, user) == 1 then redis.call('HSET', KEYS[9], user, 'replayed') end
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call('INCRBY', KEYS[4], moved)
  redis.call('HINCRBY', KEYS[5], 'replayed', moved)
end
return {moved, 0}
