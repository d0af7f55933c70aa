-- request_size: lower the request size every worker uses, after a 413 (worker/drain/batcher.py
-- doubles it again after each quiet period).
--
-- KEYS  meta.
-- ARGV  bytes, quiet period ms.
-- Reply the size in force: ARGV's, unless a smaller one was learned within the quiet period.

local now = iq.now_ms()
local stored = redis.call('HMGET', KEYS[1], 'max_request_bytes', 'max_request_bytes_ms')
local current, at = tonumber(stored[1] or '0'), tonumber(stored[2] or '0')
local bytes = tonumber(ARGV[1])
if current == 0 or bytes < current or now - at >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'max_request_bytes', bytes, 'max_request_bytes_ms', now)
  return bytes
end
return current
