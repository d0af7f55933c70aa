-- waiting_oldest: for each user of a claim, the seq of its oldest waiting update, so that the
-- drainer sends an update only if nothing older of its user waits (worker/drain/waiting.py).
--
-- KEYS  parked, waiting.
-- ARGV  user keys.
-- Reply for each user that waits, in ARGV's order: its position in ARGV (0-based) and that seq,
--       flat.  Most users of a claim do not wait: a number for each of them cost the drainer more
--       than the lookup.
--! uses: waiting

local scores = redis.call('ZMSCORE', KEYS[1], unpack(ARGV))
local out = {}
for i = 1, #ARGV do
  if scores[i] then
    local seq = waiting.oldest(KEYS[2], ARGV[i])
    if seq >= 0 then
      out[#out + 1] = i - 1
      out[#out + 1] = seq
    end
  end
end
return out
