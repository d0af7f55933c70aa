-- lease_renew: extend the caller's lease (before every request, and while it waits for a turn).
--
-- KEYS  lease.
-- ARGV  token, TTL ms.
-- Reply 1.  Error LEASE_LOST when the lease is not the caller's any more.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then return iq.fail('LEASE_LOST') end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
