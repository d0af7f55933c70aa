-- budget_refund: give back budget reserved for updates that were not sent, or surely not applied.
--
-- KEYS  the slot hash the reservation was counted in.
-- ARGV  pairs (user key, count).
-- Reply 1.

for i = 1, #ARGV, 2 do
  if redis.call('HINCRBY', KEYS[1], ARGV[i], -tonumber(ARGV[i + 1])) <= 0 then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
-- a slot left with its mark only counts nobody: without it, the marks stay low
if redis.call('HLEN', KEYS[1]) == 1 and redis.call('HEXISTS', KEYS[1], '#max') == 1 then
  redis.call('DEL', KEYS[1])
end
return 1
