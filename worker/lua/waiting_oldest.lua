-- waiting_oldest: for each user of a claim, the seq of its oldest waiting update, so that the
-- drainer sends an update only if nothing older of its user waits (worker/drain/waiting.py).
--
-- KEYS  parked, waiting.
-- ARGV  user keys.
-- Reply per user, in ARGV's order: that seq, or -1 for a user that does not wait.
--! uses: waiting

local scores = redis.call('ZMSCORE', KEYS[1], unpack(ARGV))
local out = {}
for i, user in ipairs(ARGV) do
  out[i] = -1
  if scores[i] then out[i] = waiting.oldest(KEYS[2], user) end
end
return out
