-- enqueue: append validated records to their shards, atomically with the cap, fingerprints and an
-- import job's progress.  Used by IdentifyProducer (producers/producer.py) and the importer.
--
-- KEYS  meta, total, wakeups, kick;
--       then per shard group: its queue, its sequence counter, its minutes;
--       then, with fingerprints, one fingerprint key per entry (in entry order);
--       then, with a job, the job's progress hash.
-- ARGV  1 shards, 2 layout, 3 cap, 4 count, 5 groups, 6 fingerprint TTL ms (0: none),
--       7 job run token ('': no job), 8 line, 9 offset, 10 rejected in this chunk, 11 job state,
--       12 job TTL ms;
--       then per group: shard id, n, the n entries' tails (producers/contract/entry.py);
--       then, with fingerprints, one value per entry: its fingerprint, or '' (never skipped).
-- Reply {written (1, or 0 when the cap refuses the chunk: nothing written), queued total, appended}.
-- Errors QUEUE_MISMATCH shards= layout= (another layout in Redis); IMPORT_TAKEN (another run owns the job).
--
-- Each appended entry gets its head here, `2|<seq>|<Redis ms>|`: the shard's next sequence number
-- and Redis's clock, so a shard's entries are numbered in the order Redis accepted them.

local shards, layout = ARGV[1], ARGV[2]
local stored = redis.call('HMGET', KEYS[1], 'shards', 'layout', 'linger_ms')
if stored[1] and (stored[1] ~= shards or stored[2] ~= layout) then
  return iq.fail('QUEUE_MISMATCH', 'shards', stored[1], 'layout', stored[2])
end
local cap, count, groups = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local fp_ttl, run = tonumber(ARGV[6]), ARGV[7]
local job = nil
if run ~= '' then
  job = KEYS[#KEYS]
  if redis.call('HGET', job, 'run') ~= run then return iq.fail('IMPORT_TAKEN') end
end
-- With fingerprints, an entry equal to what was last enqueued for its user is left out.  A user can
-- appear twice in one chunk, so the decision follows the chunk's own writes ('current').
local keep, appended = nil, count
local current, pending, touched = {}, {}, {}
local fp_keys, fp_values = 4 + 3 * groups, 12 + 2 * groups + count
if fp_ttl > 0 then
  keep, appended = {}, 0
  -- one MGET per thousand keys: a redis.call per key costs more than the lookup itself
  local before, i = {}, 1
  while i <= count do
    local j = math.min(i + 999, count)
    local got = redis.call('MGET', unpack(KEYS, fp_keys + i, fp_keys + j))
    for n = 1, #got do before[i + n - 1] = got[n] end
    i = j + 1
  end
  for j = 1, count do
    local key, value = KEYS[fp_keys + j], ARGV[fp_values + j]
    local now = current[key]
    if now == nil then now = before[j] or '' end
    if value ~= '' and value == now then
      keep[j] = false
    else
      keep[j] = true
      appended = appended + 1
      if pending[key] == nil then touched[#touched + 1] = key end
      pending[key] = value
    end
    current[key] = value
  end
end
local total = tonumber(redis.call('GET', KEYS[2]) or '0')
if total + appended > cap then return {0, total, 0} end
if not stored[1] then redis.call('HSET', KEYS[1], 'shards', shards, 'layout', layout) end
if appended > 0 then total = redis.call('INCRBY', KEYS[2], appended) end
local now_ms = iq.now_ms()
local due = now_ms + tonumber(stored[3] or '0')
local stamp = '|' .. now_ms .. '|'

-- Number the tails values[first..last] from the shard's counter and append them, in slices.
local function append(queue, seq_key, values, first, last)
  local n = last - first + 1
  if n <= 0 then return 0 end
  local seq = redis.call('INCRBY', seq_key, n) - n
  local i = first
  while i <= last do
    local j = math.min(i + 999, last)
    local slice = {}
    for x = i, j do
      seq = seq + 1
      slice[#slice + 1] = '2|' .. seq .. stamp .. values[x]
    end
    redis.call('RPUSH', queue, unpack(slice))
    i = j + 1
  end
  return n
end

local a, e = 13, 0
for g = 1, groups do
  local queue, seq_key, minutes = KEYS[2 + 3 * g], KEYS[3 + 3 * g], KEYS[4 + 3 * g]
  local shard, n = ARGV[a], tonumber(ARGV[a + 1])
  local first, last = a + 2, a + 1 + n
  local pushed
  if keep then
    local kept = {}
    for i = first, last do
      e = e + 1
      if keep[e] then kept[#kept + 1] = ARGV[i] end
    end
    pushed = append(queue, seq_key, kept, 1, #kept)
  else
    pushed = append(queue, seq_key, ARGV, first, last)
  end
  -- LT: never postpone a drain that is already due earlier (a retry or hold keeps its own time)
  if pushed > 0 then
    redis.call('ZADD', KEYS[3], 'LT', due, shard)
    iq.count_minute(minutes, 'e', pushed, now_ms)
  end
  a = last + 1
end
for _, key in ipairs(touched) do
  if pending[key] == '' then
    redis.call('DEL', key)
  else
    redis.call('SET', key, pending[key], 'PX', fp_ttl)
  end
end
if appended > 0 then iq.kick(KEYS[4]) end
if job then
  redis.call('HSET', job, 'line', ARGV[8], 'offset', ARGV[9], 'state', ARGV[11], 'updated_ms', now_ms)
  redis.call('HINCRBY', job, 'enqueued', appended)
  redis.call('HINCRBY', job, 'skipped', count - appended)
  redis.call('HINCRBY', job, 'rejected', tonumber(ARGV[10]))
  redis.call('PEXPIRE', job, ARGV[12])
end
return {1, total, appended}
