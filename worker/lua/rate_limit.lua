-- rate_limit: one turn under the global limits shared by every worker, GCRA on Redis's clock
-- (worker/drain/limiter.py).
--
-- KEYS  the requests TAT, the records TAT.
-- ARGV  request interval us (0: no request limit), record interval us (0: none), records in this
--       request, record tolerance us.
-- Reply 0 when granted (both limits, or neither), else the microseconds to wait before asking again.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local req_interval, rec_interval = tonumber(ARGV[1]), tonumber(ARGV[2])
local wait = 0
local req_tat, rec_tat = 0, 0
if req_interval > 0 then
  req_tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
  wait = math.max(wait, req_tat - now)
end
if rec_interval > 0 then
  rec_tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now) + tonumber(ARGV[3]) * rec_interval
  wait = math.max(wait, rec_tat - tonumber(ARGV[4]) - now)
end
if wait > 0 then return math.ceil(wait) end
-- each TAT lives until it is in the past, and a minute more: a slow limit's TAT can be far ahead
if req_interval > 0 then
  local tat = req_tat + req_interval
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 60000)
end
if rec_interval > 0 then
  redis.call('SET', KEYS[2], string.format('%.0f', rec_tat), 'PX', math.ceil((rec_tat - now) / 1000) + 60000)
end
return 0
