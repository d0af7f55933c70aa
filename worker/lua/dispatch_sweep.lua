-- dispatch_sweep: wake every shard that has work but neither a wake-up nor an owner (a drainer
-- killed with kill -9 leaves its shard so, once its lease expires).
--
-- KEYS  wakeups, then per shard: its lease, queue, inflight, parked.
-- ARGV  the shard ids, in the same order.
-- Reply the number of shards woken.

local now = iq.now_ms()
local added = 0
for i = 1, #ARGV do
  local base = 2 + (i - 1) * 4
  local lease, queue, inflight, parked = KEYS[base], KEYS[base + 1], KEYS[base + 2], KEYS[base + 3]
  if redis.call('EXISTS', lease) == 0 and not redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    local due = nil
    if redis.call('LLEN', queue) > 0 or redis.call('LLEN', inflight) > 0 then
      due = now
    else
      local first = redis.call('ZRANGE', parked, 0, 0, 'WITHSCORES')
      if first[2] then due = tonumber(first[2]) end
    end
    if due then
      redis.call('ZADD', KEYS[1], due, ARGV[i])
      added = added + 1
    end
  end
end
return added
