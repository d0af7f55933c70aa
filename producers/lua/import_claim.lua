-- import_claim: a run that has taken an import job (import_take.lua) takes the job's progress in
-- one shard, so that an older run still going is refused there (IMPORT_TAKEN) at its next chunk.
--
-- KEYS  the job's progress in the shard.
-- ARGV  this run's token, TTL ms, fresh (1: the job starts over, forget what the shard had).
-- Reply 1.

if ARGV[3] == '1' then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'run', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
