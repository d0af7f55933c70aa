-- import_advance: record that every shard has an import job's records up to a line (written after
-- the chunk's enqueue calls, enqueue.lua, succeeded), with the job's counts and state.
--
-- KEYS  the job's hash.
-- ARGV  this run's token, line, byte offset, enqueued, skipped, rejected (in the chunk), state,
--       TTL ms.
-- Reply 1.
-- Error IMPORT_TAKEN when another run owns the job now.

local job = redis.call('HMGET', KEYS[1], 'run', 'line')
if job[1] ~= ARGV[1] then return iq.fail('IMPORT_TAKEN') end
-- A chunk with any count moves the line forward: one not past the line recorded was counted
-- already (its call run again after its answer was lost: redis-py sends it again by default).
if tonumber(ARGV[2]) > tonumber(job[2] or '-1') then
  redis.call('HINCRBY', KEYS[1], 'enqueued', tonumber(ARGV[4]))
  redis.call('HINCRBY', KEYS[1], 'skipped', tonumber(ARGV[5]))
  redis.call('HINCRBY', KEYS[1], 'rejected', tonumber(ARGV[6]))
  redis.call('HSET', KEYS[1], 'line', ARGV[2], 'offset', ARGV[3])
end
redis.call('HSET', KEYS[1], 'state', ARGV[7], 'updated_ms', iq.now_ms())
redis.call('PEXPIRE', KEYS[1], ARGV[8])
return 1
