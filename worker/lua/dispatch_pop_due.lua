-- dispatch_pop_due: pop the shards whose drain is due (worker/dispatcher.py); each is then checked
-- on its own slot (dispatch_mark.lua) before a task is sent.
--
-- KEYS  wakeups, blocked.
-- ARGV  max shards to pop.
-- Reply {due shards..., -1, next due ms or -1, now ms}.
--
-- While a configuration error blocks sending, nobody is woken before the next probe is due: a due
-- shard is put back at that time.

local now = iq.now_ms()
local out = {}
local probe_at = tonumber(redis.call('HGET', KEYS[2], 'next_probe_ms') or '0')
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))) do
  if probe_at > now then
    redis.call('ZADD', KEYS[1], probe_at, m)
  else
    redis.call('ZREM', KEYS[1], m)
    out[#out + 1] = tonumber(m)
  end
end
out[#out + 1] = -1
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
out[#out + 1] = first[2] and tonumber(first[2]) or -1
out[#out + 1] = now
return out
