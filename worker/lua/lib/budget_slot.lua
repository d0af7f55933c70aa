-- lib/budget_slot: what the budget scripts that give counts back share (worker/drain/budget.py).
-- Scripts that need it say `--! uses: budget_slot`.
--
-- A slot hash holds one count per user and `#max`, the highest count in it (a bound: a count
-- given back lowers a count, never the mark).

local budget_slot = {}

-- Give back n of a user's count; a count that reaches 0 (or less: the slot expired meanwhile and
-- was written again) is removed.
function budget_slot.give_back(key, user, n)
  if redis.call('HINCRBY', key, user, -n) <= 0 then
    redis.call('HDEL', key, user)
  end
end

-- A slot left with its mark only counts nobody: without it, the sum of the marks stays low, and
-- claims near the limit are not counted user by user for nothing.
function budget_slot.drop_if_mark_only(key)
  if redis.call('HLEN', key) == 1 and redis.call('HEXISTS', key, '#max') == 1 then
    redis.call('DEL', key)
  end
end
