-- enqueue: append validated records to their shards, atomically with each shard's cap, the users'
-- fingerprints and an import job's progress in that shard, and (on one Redis) wake the drains of
-- the shards it wrote.  Used by IdentifyProducer (producers/producer.py) and the importer.  On
-- Redis Cluster a call holds one shard (one slot), and its shard's drain is woken by wake.lua,
-- called after this (the wake-ups are in another slot); on one Redis a call may hold several
-- shards, is then atomic across them, and wakes their drains itself: a second script in the same
-- round trip cost a lone call a third of its Redis time.
--
-- KEYS  per group (one shard): layout, queue, seq, total, minutes, then the job's progress in the
--       shard (with a job), then one fingerprint key per record (with fingerprints); then, when the
--       cap is the whole queue's (one Redis), the total of every shard; then, when it wakes the
--       drains, meta, wakeups and kick (as wake.lua takes them).
-- ARGV  1 layout (`<shards>|<format>`), 2 cap, 3 groups, 4 fingerprint TTL ms (0: none),
--       5 job run token ('': no job), 6 job TTL ms, 7 line and 8 byte offset the chunk ends at,
--       9 how many shard totals follow the groups' KEYS (0: the cap is each shard's, as on a Redis
--       Cluster, where one call sees one slot), 10 1 to wake the drains of the shards written (due
--       now plus the workers' linger, never postponing one due earlier: wake.lua's LT), else 0;
--       11 with a job, '' when each record's line follows, else the line the chunk starts after;
--       then per group: its shard id, n, then per record: its line (with a job, when ARGV 11 is
--       ''), its fingerprint (with fingerprints; '': none) and the entry's tail
--       (producers/contract/entry.py).  Arguments no call uses are not sent: each costs the
--       producer and Redis as much as a short record.
-- Reply {1, appended, skipped as unchanged, left out as already enqueued} when written;
--       {0, shard, queued in it} when a shard's cap refuses the call, {0, -1, queued in all} when the
--       whole queue's does (nothing written, in any group).
-- Errors QUEUE_MISMATCH shards= layout= (a shard was written with another layout); IMPORT_TAKEN
--       (another run of the import job has taken the shard over); IMPORT_AHEAD shard= line= (the
--       records' lines were not sent, and a shard has a line past the chunk's start: only the
--       records' own lines can tell which of them it has).
--
-- Each appended entry gets its head here, `2|<seq>|<Redis ms>|`: the shard's next sequence number
-- and Redis's clock, so a shard's entries are numbered in the order Redis accepted them.  With a
-- job, a record whose line the shard already has (an earlier run enqueued it before it stopped) is
-- left out, so a resumed import enqueues each line exactly once; the lines are sent only when a
-- shard may have some (after an interruption, or a Redis Cluster part written before another
-- shard's refusal), as they cost about a tenth of an import's Redis time.  With fingerprints, a
-- record equal to what was last enqueued for its user is left out; a user can appear twice in one
-- call, so the decision follows the call's own writes.

local layout, cap, groups = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local fp_ttl, run, job_ttl = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local job = run ~= ''
local whole, wake = tonumber(ARGV[9]), ARGV[10] == '1'
local lines = job and ARGV[11] == ''
local start = tonumber(ARGV[11])

-- pass 1: check every group and decide what it appends; nothing is written unless all may go
local plans, k, a = {}, 1, 12
for g = 1, groups do
  local plan = {layout = KEYS[k], queue = KEYS[k + 1], seq = KEYS[k + 2], total = KEYS[k + 3],
                minutes = KEYS[k + 4], shard = ARGV[a], n = tonumber(ARGV[a + 1]), kept = {}, fps = {}}
  k = k + 5
  a = a + 2
  local stored = redis.call('GET', plan.layout)
  plan.laid_out = stored ~= false
  if stored and stored ~= layout then
    local shards, format = string.match(stored, '^(%d+)|(.*)$')
    return iq.fail('QUEUE_MISMATCH', 'shards', shards, 'layout', format)
  end
  local from_line = -1
  if job then
    plan.progress = KEYS[k]
    k = k + 1
    local progress = redis.call('HMGET', plan.progress, 'run', 'line')
    if progress[1] and progress[1] ~= run then return iq.fail('IMPORT_TAKEN') end
    from_line = tonumber(progress[2] or '-1')
    if not lines and from_line > start then return iq.fail('IMPORT_AHEAD', 'shard', plan.shard, 'line', from_line) end
    plan.from_line = from_line
  end
  local current = {}
  local before = {}
  if fp_ttl > 0 then
    -- one MGET per thousand keys: a redis.call per key costs more than the lookup itself, and
    -- Lua's C stack takes a few thousand values at most
    local fp_keys = {}
    for i = 1, plan.n do fp_keys[i] = KEYS[k + i - 1] end
    local i = 1
    while i <= plan.n do
      local j = math.min(i + 999, plan.n)
      local got = redis.call('MGET', unpack(fp_keys, i, j))
      for x = i, j do before[x] = got[x - i + 1] end
      i = j + 1
    end
    plan.fp_keys = fp_keys
  end
  -- counted here: Lua 5.1's # searches the table, a tenth of an append's time in a chunk's loop
  local kept, n_kept = plan.kept, 0
  for i = 1, plan.n do
    local keep, fingerprint = true, ''
    if lines then
      keep = tonumber(ARGV[a]) > from_line
      a = a + 1
    end
    if fp_ttl > 0 then
      fingerprint = ARGV[a]
      a = a + 1
    end
    local tail = ARGV[a]
    a = a + 1
    if not keep then plan.already = (plan.already or 0) + 1 end
    if keep and fp_ttl > 0 then
      local key = plan.fp_keys[i]
      local last = current[key]
      if last == nil then last = before[i] or '' end
      if fingerprint ~= '' and fingerprint == last then
        keep = false
      else
        current[key] = fingerprint
        plan.fps[key] = fingerprint
      end
    end
    if keep then
      n_kept = n_kept + 1
      kept[n_kept] = tail
    end
  end
  if fp_ttl > 0 then k = k + plan.n end
  if whole == 0 then
    local queued = tonumber(redis.call('GET', plan.total) or '0')
    if queued + #plan.kept > cap then return {0, tonumber(plan.shard), queued} end
  end
  plans[g] = plan
end
if whole > 0 then
  local queued, adding = 0, 0
  for _, count in ipairs(redis.call('MGET', unpack(KEYS, k, k + whole - 1))) do
    queued = queued + tonumber(count or '0')
  end
  for _, plan in ipairs(plans) do adding = adding + #plan.kept end
  if queued + adding > cap then return {0, -1, queued} end
end

-- pass 2: write, the wake-ups first: a Redis user without the right to write them is refused
-- before anything is appended
local now = iq.now_ms()
if wake then
  local meta, wakeups, kick = KEYS[k + whole], KEYS[k + whole + 1], KEYS[k + whole + 2]
  local due = now + tonumber(redis.call('HGET', meta, 'linger_ms') or '0')
  local changed = 0
  for _, plan in ipairs(plans) do
    if #plan.kept > 0 then changed = changed + redis.call('ZADD', wakeups, 'LT', 'CH', due, plan.shard) end
  end
  if changed > 0 then iq.kick(kick) end
end
local stamp = '|' .. now .. '|'
-- Lua writes a number as text with a printf, which cost as much as the rest of an append: a run
-- of sequence numbers is written as its tens (formatted once every ten numbers) and a last digit.
local digits = {[0] = '0', '1', '2', '3', '4', '5', '6', '7', '8', '9'}
local appended, skipped, already = 0, 0, 0
for _, plan in ipairs(plans) do
  local kept, n = plan.kept, #plan.kept
  if n > 0 then
    local seq = redis.call('INCRBY', plan.seq, n) - n
    local tens
    local i = 1
    while i <= n do
      local j = math.min(i + 999, n)
      local slice, at = {}, 1 - i
      for x = i, j do
        seq = seq + 1
        local last = seq % 10
        if last == 0 or not tens then
          tens = seq >= 10 and tostring((seq - last) / 10) or ''
        end
        slice[at + x] = '2|' .. tens .. digits[last] .. stamp .. kept[x]
      end
      redis.call('RPUSH', plan.queue, unpack(slice))
      i = j + 1
    end
    redis.call('INCRBY', plan.total, n)
    iq.count_minute(plan.minutes, 'e', n, now)
  end
  for key, fingerprint in pairs(plan.fps) do
    if fingerprint == '' then
      redis.call('DEL', key)
    else
      redis.call('SET', key, fingerprint, 'PX', fp_ttl)
    end
  end
  -- a call into Redis costs about as much as the append itself: the layout is written once
  if not plan.laid_out then redis.call('SET', plan.layout, layout) end
  if plan.progress then
    -- the line never moves back: a resumed run's chunk may end before what the shard already has
    if tonumber(ARGV[7]) > plan.from_line then
      redis.call('HSET', plan.progress, 'run', run, 'line', ARGV[7], 'offset', ARGV[8])
    else
      redis.call('HSET', plan.progress, 'run', run)
    end
    redis.call('HINCRBY', plan.progress, 'enqueued', n)
    redis.call('PEXPIRE', plan.progress, job_ttl)
  end
  appended = appended + n
  already = already + (plan.already or 0)
  skipped = skipped + plan.n - n - (plan.already or 0)
end
return {1, appended, skipped, already}
