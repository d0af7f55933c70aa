-- budget_move: close the reservation of a claim that may have outlasted its slot
-- (worker/drain/budget.py).  What was not sent is given back; what was sent, or may have been
-- applied, is counted in the slot the claim ends in, by Redis's clock now: no request of the claim
-- arrived later, and a slot stops counting a window after it, so a late request stops counting a
-- window after it arrived, never earlier.
--
-- KEYS  the slot hash the reservation was counted in, then the hashes of consecutive slots from
--       ``first``: the worker's bounds on Redis's clock now (clamped to them).
-- ARGV  slot ms, first, TTL ms, then triples (user key, reserved, sent).
-- Reply 1 if what was sent moved, 0 if the claim ended in the slot it reserved in.

local t = redis.call('TIME')
local slot = math.floor((tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)) / tonumber(ARGV[1]))
local at = math.max(0, math.min(slot - tonumber(ARGV[2]), #KEYS - 2))
local to, ttl = KEYS[2 + at], ARGV[3]
local moved = to ~= KEYS[1]
local high = moved and tonumber(redis.call('HGET', to, '#max') or '0') or 0
local any = false
for i = 4, #ARGV, 3 do
  local user, sent = ARGV[i], tonumber(ARGV[i + 2])
  local back = tonumber(ARGV[i + 1]) - (moved and 0 or sent)
  if back ~= 0 and redis.call('HINCRBY', KEYS[1], user, -back) <= 0 then
    redis.call('HDEL', KEYS[1], user)
  end
  if moved and sent > 0 then
    local value = redis.call('HINCRBY', to, user, sent)
    if value > high then high = value end
    any = true
  end
end
-- a slot left with its mark only counts nobody: without it, the marks stay low
if redis.call('HLEN', KEYS[1]) == 1 and redis.call('HEXISTS', KEYS[1], '#max') == 1 then
  redis.call('DEL', KEYS[1])
end
if any then
  redis.call('HSET', to, '#max', high)
  redis.call('PEXPIRE', to, ttl)
end
return moved and 1 or 0
