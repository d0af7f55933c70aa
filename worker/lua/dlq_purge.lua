-- dlq_purge: delete dead letters for good.
--
-- KEYS  dlq_entries, dlq_index, dlq_counts.
-- ARGV  per entry: id, reason.
-- Reply the number deleted (an entry already gone is skipped).

local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZREM', KEYS[2], ARGV[i])
    if redis.call('HINCRBY', KEYS[3], ARGV[i + 1], -1) <= 0 then redis.call('HDEL', KEYS[3], ARGV[i + 1]) end
    removed = removed + 1
  end
end
return removed
