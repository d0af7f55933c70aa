-- unblock: let every worker send again (a probe got an answer that is not a configuration error).
--
-- KEYS  blocked, wakeups, kick.
-- Reply how long sending was blocked (ms), or -1 if it was not.
--
-- Every shard waiting for the next probe can go now: its wake-up is pulled forward (one per
-- shard: bounded by the shard count).

local now = iq.now_ms()
local since = redis.call('HGET', KEYS[1], 'since_ms')
if not since then return -1 end
redis.call('DEL', KEYS[1])
for _, shard in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do redis.call('ZADD', KEYS[2], 'XX', now, shard) end
iq.kick(KEYS[3])
return now - tonumber(since)
