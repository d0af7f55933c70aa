-- lease_release: give a shard back, and say when it next needs a drain.
--
-- KEYS  lease, queue, inflight, parked, state.
-- ARGV  token, retry in ms (0: none), wake in ms (0: none), clean (0/1).
-- Reply when the shard next needs a drain (ms since the epoch; 0: not until something is enqueued),
--       or -1 when the lease was not the caller's (nothing changed).  wake.lua records it.
--
-- With a retry time the whole shard waits (its batch failed): nothing of it is sent before.  With
-- a wake time it is only looked at again then (sending is blocked for everyone; when the block
-- lifts every wake-up is pulled forward).  With neither, it is woken as soon as it has work, or
-- when its first waiting user's time comes.  A clean release marks records left in flight as kept
-- on purpose; without the mark the next claim counts a recovery (the drainer died), which is how
-- poison records are found.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local now = iq.now_ms()
redis.call('DEL', KEYS[1])
if ARGV[4] == '1' and redis.call('LLEN', KEYS[3]) > 0 then redis.call('HSET', KEYS[5], 'kept', '1') end
local due = 0
local retry_in, wake_in = tonumber(ARGV[2]), tonumber(ARGV[3])
if retry_in > 0 then
  due = now + retry_in
  redis.call('HSET', KEYS[5], 'retry_at', due)
else
  redis.call('HDEL', KEYS[5], 'retry_at')
  if wake_in > 0 then
    due = now + wake_in
  elseif redis.call('LLEN', KEYS[2]) > 0 or redis.call('LLEN', KEYS[3]) > 0 then
    due = now
  else
    local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
    if first[2] then due = tonumber(first[2]) end
  end
end
return due
