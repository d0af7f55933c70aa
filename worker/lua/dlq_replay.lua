-- dlq_replay: put dead letters of one shard back, each as a waiting update of its user, placed by
-- its seq: ahead of everything of that user not yet delivered (worker/deadletter.py).
--
-- KEYS  dlq_entries, dlq_index, dlq_counts, total, wakeups, kick, stats, meta, then the shard's
--       waiting, parked, parked_why.
-- ARGV  cap, shards, shard, then per entry: id, reason, user key, queue entry (with its seq).
-- Reply {moved, 0} when done; {0, queued total} when the cap would be passed (nothing moved).
-- Error QUEUE_MISMATCH shards= when the queue has another shard count (a user's records in two
--       shards would lose their order): nothing moved.
--
-- An entry already gone (replayed or purged meanwhile) is skipped, so a replay interrupted and run
-- again neither loses nor doubles one.  A replayed user is due at once, unless it already waits
-- (held, deferred): then its replayed updates wait with the others.
--! uses: waiting

local stored = redis.call('HGET', KEYS[8], 'shards')
if stored and stored ~= ARGV[2] then return iq.fail('QUEUE_MISMATCH', 'shards', stored) end
local n = (#ARGV - 3) / 4
local total = tonumber(redis.call('GET', KEYS[4]) or '0')
if total + n > tonumber(ARGV[1]) then return {0, total} end
local now = iq.now_ms()
local moved = 0
for i = 0, n - 1 do
  local id, reason, user, raw = ARGV[4 + 4 * i], ARGV[5 + 4 * i], ARGV[6 + 4 * i], ARGV[7 + 4 * i]
  if redis.call('HDEL', KEYS[1], id) == 1 then
    redis.call('ZREM', KEYS[2], id)
    if redis.call('HINCRBY', KEYS[3], reason, -1) <= 0 then redis.call('HDEL', KEYS[3], reason) end
    local seq = waiting.entry_user(raw)
    waiting.add(KEYS[9], user, seq, raw)
    if redis.call('ZADD', KEYS[10], 'NX', now, user) == 1 then redis.call('HSET', KEYS[11], user, 'replayed') end
    redis.call('INCR', KEYS[4])
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call('ZADD', KEYS[5], 'LT', now, ARGV[3])
  redis.call('HINCRBY', KEYS[7], 'replayed', moved)
  iq.kick(KEYS[6])
end
return {moved, 0}
