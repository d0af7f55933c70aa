-- import_take: take an import job, only if its progress is still what the run read (run token,
-- line, state), so that two runs cannot both go on from one position (producers/importer/job.py).
--
-- KEYS  the job's progress hash.
-- ARGV  expected run, line, state (all '' when nothing was recorded); action (start | resume | keep);
--       this run's token; TTL ms; then, to start, the field/value pairs of a fresh progress.
-- Reply 1 when taken, 0 when the progress moved meanwhile (read again and decide again).

local now = redis.call('HMGET', KEYS[1], 'run', 'line', 'state')
-- this run's token (new for each run) already there: this call ran before and its answer was lost
if now[1] == ARGV[5] then return 1 end
if (now[1] or '') ~= ARGV[1] or (now[2] or '') ~= ARGV[2] or (now[3] or '') ~= ARGV[3] then return 0 end
if ARGV[4] == 'start' then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'run', ARGV[5], unpack(ARGV, 7))
elseif ARGV[4] == 'resume' then
  redis.call('HSET', KEYS[1], 'run', ARGV[5])
end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
return 1
