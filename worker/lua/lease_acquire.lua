-- lease_acquire: take a shard's lease if it is free (worker/drain/lease.py).
--
-- KEYS  lease, state.
-- ARGV  token, TTL ms.
-- Reply 1 when taken, 0 when another drainer holds it.
--
-- Whether or not the lease is free, the task sent for this shard has come: the mark that stops
-- the dispatcher from sending another is cleared.

redis.call('HDEL', KEYS[2], 'dispatched_at')
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
