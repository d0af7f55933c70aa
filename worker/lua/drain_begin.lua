-- drain_begin: what every drain of a shard must know first, from the global keys: whether a
-- configuration error blocks sending (and whether this drain is the probe), and the request size
-- a 413 taught (worker/drain/loop.py).  The claim itself touches only the shard's keys.
--
-- KEYS  blocked, meta.
-- ARGV  probe hold ms.
-- Reply {now ms, wait ms (0: go on), probe (0/1), learned request bytes (0: none), its age ms}.
--
-- While sending is blocked, nobody sends before the next probe is due; the first drain after that
-- is the probe, and holds the next one back by `probe hold`, so that one request probes at a time.

local now = iq.now_ms()
local learned = redis.call('HMGET', KEYS[2], 'max_request_bytes', 'max_request_bytes_ms')
local learned_bytes = tonumber(learned[1] or '0')
local learned_age = learned[2] and now - tonumber(learned[2]) or 0
local probe = 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  local next_probe = tonumber(redis.call('HGET', KEYS[1], 'next_probe_ms') or '0')
  if now < next_probe then return {now, next_probe - now, 0, learned_bytes, learned_age} end
  redis.call('HSET', KEYS[1], 'next_probe_ms', now + tonumber(ARGV[1]))
  probe = 1
end
return {now, 0, probe, learned_bytes, learned_age}
