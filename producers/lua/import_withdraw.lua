-- import_withdraw: forget a job this run started and never advanced (stopped by a flag mistake
-- before its first line), so that the next run starts afresh instead of "resuming" nothing.
--
-- KEYS  the job's progress hash.
-- ARGV  this run's token.
-- Reply 1 when forgotten, 0 otherwise.

if redis.call('HGET', KEYS[1], 'run') == ARGV[1] and redis.call('HGET', KEYS[1], 'line') == '0' then
  return redis.call('DEL', KEYS[1])
end
return 0
