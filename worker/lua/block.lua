-- block: stop every worker sending (a configuration error such as an invalid API key); one
-- request probes again after a backoff.
--
-- KEYS  blocked.
-- ARGV  reason, detail, HTTP status ('' for none), backoff base ms, cap ms, jitter (0..1).
-- Reply {newly blocked (0/1), probes so far, ms until the next probe}.

local now = iq.now_ms()
local new = redis.call('EXISTS', KEYS[1]) == 0
if new then redis.call('HSET', KEYS[1], 'since_ms', now, 'probes', 0) end
local probes = redis.call('HINCRBY', KEYS[1], 'probes', 1)
local step = math.min(tonumber(ARGV[5]), tonumber(ARGV[4]) * 2 ^ math.min(probes - 1, 40))
local delay = math.floor(step / 2 + step / 2 * tonumber(ARGV[6]))
redis.call('HSET', KEYS[1], 'reason', ARGV[1], 'detail', ARGV[2], 'status', ARGV[3], 'next_probe_ms', now + delay)
return {new and 1 or 0, probes, delay}
