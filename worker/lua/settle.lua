-- settle: what one answer changes, in one step (worker/drain/settle.py).
--
-- KEYS  lease, inflight, total, stats, state, dlq_entries, dlq_index, dlq_counts, parked, parked_why,
--       waiting, dlq_seq, minutes (all the shard's), then the import fingerprint of each
--       dead-lettered record's user (deleted, so that `import --skip-unchanged` sends that user's
--       update again instead of skipping it as already sent).
-- ARGV  token, shard, delivered, requests, last error ('' for none), failed-at ms (Redis's clock),
--       trim (entries done at the head of inflight), replace (-1: inflight stays as trimmed; n: it
--       becomes the n entries that follow),
--       n_dead, then per dead letter: reason, JSON;
--       n_park, then per user: user key, hold ms (from now), reason ('': unchanged), n, n waiting
--       members (worker/drain/waiting.py);
--       then the request's HTTP status ('no_answer' without one; '' or absent: not counted by status).
-- Reply the ids given to the dead letters, in order: `<shard>-<n>`, n counted per shard.
-- Error LEASE_LOST when the lease is not the caller's: then nothing is changed.
--! uses: waiting

if redis.call('GET', KEYS[1]) ~= ARGV[1] then return iq.fail('LEASE_LOST') end
local now = iq.now_ms()
local delivered, requests = tonumber(ARGV[3]), tonumber(ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[4], 'last_error', ARGV[5], 'last_error_ms', now) end
local trim, replace = tonumber(ARGV[7]), tonumber(ARGV[8])
local a = 9
if replace >= 0 then
  redis.call('DEL', KEYS[2])
  iq.push(KEYS[2], ARGV, a, a + replace - 1)
  a = a + replace
elseif trim > 0 then
  redis.call('LTRIM', KEYS[2], trim, -1)
end
if redis.call('LLEN', KEYS[2]) == 0 then redis.call('HDEL', KEYS[5], 'recoveries', 'recovered_from') end

local n_dead = tonumber(ARGV[a])
a = a + 1
local ids = {}
for d = 1, n_dead do
  local id = ARGV[2] .. '-' .. redis.call('INCR', KEYS[12])
  redis.call('HSET', KEYS[6], id, ARGV[a + 1])
  redis.call('ZADD', KEYS[7], ARGV[6], id)
  redis.call('HINCRBY', KEYS[8], ARGV[a], 1)
  ids[d] = id
  a = a + 2
end

local n_park = tonumber(ARGV[a])
a = a + 1
for _ = 1, n_park do
  local user, release, reason, n = ARGV[a], now + tonumber(ARGV[a + 1]), ARGV[a + 2], tonumber(ARGV[a + 3])
  a = a + 4
  waiting.add_members(KEYS[11], ARGV, a, a + n - 1)
  a = a + n
  waiting.hold(KEYS[9], KEYS[10], user, release, reason)
end

local status = ARGV[a]
if requests > 0 and status and status ~= '' then redis.call('HINCRBY', KEYS[4], 'status:' .. status, requests) end

for f = 14, #KEYS do redis.call('DEL', KEYS[f]) end
local done = delivered + n_dead
if done > 0 then redis.call('DECRBY', KEYS[3], done) end
if delivered > 0 then
  redis.call('HINCRBY', KEYS[4], 'delivered', delivered)
  redis.call('HSET', KEYS[4], 'last_delivery_ms', now)
  iq.count_minute(KEYS[13], 'd', delivered, now)
end
if n_dead > 0 then redis.call('HINCRBY', KEYS[4], 'dead_lettered', n_dead) end
if requests > 0 then redis.call('HINCRBY', KEYS[4], 'requests', requests) end
return ids
