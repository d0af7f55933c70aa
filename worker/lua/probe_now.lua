-- probe_now: a worker that starts may bring the fix for a configuration error: if sending is
-- blocked, probe at once, and look at every waiting shard now.
--
-- KEYS  blocked, wakeups, kick.
-- Reply 1 when sending was blocked, 0 otherwise.

local now = iq.now_ms()
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'next_probe_ms', 0)
for _, shard in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do redis.call('ZADD', KEYS[2], 'XX', now, shard) end
iq.kick(KEYS[3])
return 1
