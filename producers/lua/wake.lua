-- wake: say when shards next need a drain, and wake a dispatcher (worker/dispatcher.py).  Called
-- after an enqueue (due after the workers' linger), after a drainer gives a shard back (due at its
-- retry time, at its first waiting user's release, or now), and by the dispatcher's sweep.
--
-- KEYS  meta, wakeups, kick.
-- ARGV  mode (LT: never postpone a wake-up due earlier; NX: only a shard with none), then pairs
--       (shard, due ms since the epoch, or 'linger': now plus the workers' linger).
-- Reply the number of wake-ups added or moved.

local now = iq.now_ms()
local linger = nil
local changed = 0
for i = 2, #ARGV, 2 do
  local due = ARGV[i + 1]
  if due == 'linger' then
    if linger == nil then linger = tonumber(redis.call('HGET', KEYS[1], 'linger_ms') or '0') end
    due = now + linger
  end
  changed = changed + redis.call('ZADD', KEYS[2], ARGV[1], 'CH', due, ARGV[i])
end
if changed > 0 then iq.kick(KEYS[3]) end
return changed
