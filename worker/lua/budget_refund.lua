-- budget_refund: give back budget reserved for updates that were not sent, or surely not applied.
--
-- KEYS  the slot hash the reservation was counted in.
-- ARGV  pairs (user key, count).
-- Reply 1.
--! uses: budget_slot

for i = 1, #ARGV, 2 do
  budget_slot.give_back(KEYS[1], ARGV[i], tonumber(ARGV[i + 1]))
end
budget_slot.drop_if_mark_only(KEYS[1])
return 1
