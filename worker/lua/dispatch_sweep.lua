-- dispatch_sweep: when a shard that has work but no owner needs a drain (a drainer killed with
-- kill -9 leaves its shard so, once its lease expires); wake.lua (mode NX) adds the wake-up unless
-- the shard has one.
--
-- KEYS  the shard's lease, queue, inflight, parked.
-- Reply the time (ms) the shard needs a drain, or -1 for none (owned, or nothing to do).

if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
if redis.call('LLEN', KEYS[2]) > 0 or redis.call('LLEN', KEYS[3]) > 0 then return iq.now_ms() end
local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
if first[2] then return tonumber(first[2]) end
return -1
