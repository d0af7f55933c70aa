-- dispatch_mark: whether a due shard gets a drain task now (worker/dispatcher.py).
--
-- KEYS  the shard's lease, state.
-- ARGV  grace ms (how long a task sent and not yet started is trusted to come).
-- Reply {1, 0}: send a task (marked as sent); {0, ms}: not now, wake it again at that time;
--       {0, 0}: not now, and no wake-up needed (its drainer, or a task already sent, will see it).

local now = iq.now_ms()
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, 0} end
local st = redis.call('HMGET', KEYS[2], 'retry_at', 'dispatched_at')
local retry_at, sent = tonumber(st[1] or '0'), tonumber(st[2] or '0')
if retry_at > now then return {0, retry_at} end
if now - sent < tonumber(ARGV[1]) then return {0, 0} end
redis.call('HSET', KEYS[2], 'dispatched_at', now)
return {1, 0}
