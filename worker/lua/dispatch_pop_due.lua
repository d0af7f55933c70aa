-- dispatch_pop_due: pop the shards whose drain is due, for the dispatcher to send a task each
-- (worker/dispatcher.py).
--
-- KEYS  wakeups, blocked, then per shard s (in order 0..n-1): its lease, its state.
-- ARGV  max shards to pop, grace ms (how long a sent task is trusted to come).
-- Reply {due shards..., -1, next due ms or -1, now ms}.
--
-- A shard being drained, or whose task was sent and has not started, gets no second task; one
-- waiting to retry, or any while sending is blocked, is put back at its time.

local now = iq.now_ms()
local out = {}
local probe_at = tonumber(redis.call('HGET', KEYS[2], 'next_probe_ms') or '0')
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))) do
  redis.call('ZREM', KEYS[1], m)
  local s = tonumber(m)
  local lease, state = KEYS[3 + 2 * s], KEYS[4 + 2 * s]
  if lease and redis.call('EXISTS', lease) == 0 then
    local st = redis.call('HMGET', state, 'retry_at', 'dispatched_at')
    local retry_at, sent = tonumber(st[1] or '0'), tonumber(st[2] or '0')
    if probe_at > now then
      redis.call('ZADD', KEYS[1], probe_at, m)
    elseif retry_at > now then
      redis.call('ZADD', KEYS[1], retry_at, m)
    elseif now - sent >= tonumber(ARGV[2]) then
      redis.call('HSET', state, 'dispatched_at', now)
      out[#out + 1] = s
    end
  end
end
out[#out + 1] = -1
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
out[#out + 1] = first[2] and tonumber(first[2]) or -1
out[#out + 1] = now
return out
