-- lease_lost: a drainer found its lease lost (it stalled past the TTL; it did not crash).
--
-- KEYS  lease, state.
-- ARGV  the token of the drainer that lost it.
-- Reply 1 when a newer owner's recovery count was taken back, 2 when nobody owns the shard yet and
--       its claim is marked kept (as a clean release would), 0 when neither applies.
--
-- A lost lease must not count toward dead-lettering a record as poison.

local st = redis.call('HMGET', KEYS[2], 'recovered_from', 'claimer', 'recoveries')
if st[1] == ARGV[1] then
  if tonumber(st[3] or '0') > 0 then redis.call('HINCRBY', KEYS[2], 'recoveries', -1) end
  redis.call('HDEL', KEYS[2], 'recovered_from')
  return 1
end
if redis.call('EXISTS', KEYS[1]) == 0 and st[2] == ARGV[1] then
  redis.call('HSET', KEYS[2], 'kept', '1')
  return 2
end
return 0
