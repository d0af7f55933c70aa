"""Amplitude's per-user budget: at most N property updates per user per hour, or it drops the rest.

Amplitude silently drops a user's property updates beyond 1,800 an hour; no status code says so.
We count what each user was sent, and defer (keep, in order) what would pass the limit until the
budget allows it.  Counts are kept per user in slots of a sixth of the window (ten minutes for an
hour), in one Redis hash per shard and slot that expires after the window.

A rolling window of an hour overlaps at most seven ten-minute slots, so a user may be sent more
only while the counts of the current slot and the six before it stay within the limit: at most N
in any rolling hour, exactly, at the price of looking ten minutes further back than strictly
needed.  ``allowance`` is the decision, a pure function; ``BudgetStore`` reads the counts (one Lua
call per claim) and the settle script adds what was accepted.

Memory: one hash field per user per slot in which the user was sent something (bench/budget_memory.py
measures it; see the README).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

import redis

from producers.keys import ShardKeys
from producers.redis_conn import store_errors

#: Slots per window; the counts of the current slot and the SLOTS before it are summed.
SLOTS = 6
#: Users per Lua call: the script unpacks them into one command, and Lua's stack is limited.
CHUNK = 2000

# KEYS: the slot hashes, oldest first (SLOTS + 1); ARGV: limit, then per user: key, wanted.
# Returns {total_1, ..., total_n, then for each user whose wanted updates would pass the limit:
# its position (0-based), and its count in each slot, oldest first}.  Summing here keeps the
# reply small: only users near the limit need their counts per slot.
READ_LUA = """
local limit = tonumber(ARGV[1])
local users = {}
for i = 2, #ARGV, 2 do users[#users + 1] = ARGV[i] end
local per_slot = {}
for k = 1, #KEYS do per_slot[k] = redis.call('HMGET', KEYS[k], unpack(users)) end
local out, over = {}, {}
for u = 1, #users do
  local total = 0
  for k = 1, #KEYS do total = total + tonumber(per_slot[k][u] or 0) end
  out[u] = total
  if total + tonumber(ARGV[2 * u + 1]) > limit then over[#over + 1] = u end
end
for _, u in ipairs(over) do
  out[#out + 1] = u - 1
  for k = 1, #KEYS do out[#out + 1] = tonumber(per_slot[k][u] or 0) end
end
return out
"""


class Allowance(NamedTuple):
    #: How many of the wanted updates may be sent now.
    allowed: int
    #: When the next one may go, in ms from now (0: everything wanted is allowed).
    wait_ms: int


def allowance(counts: Sequence[int], wanted: int, limit: int, now_ms: int, slot_ms: int) -> Allowance:
    """How many of ``wanted`` updates a user may be sent now, and when the next may go.

    ``counts`` are the user's counts in the current slot and the ``len(counts) - 1`` before it,
    oldest first.  A slot stops counting once it is older than the ones summed.
    """
    used = sum(counts)
    allowed = max(0, min(wanted, limit - used))
    if allowed == wanted:
        return Allowance(wanted, 0)
    current_slot = now_ms // slot_ms
    oldest_slot = current_slot - (len(counts) - 1)
    # One more may go once this many of the counted updates (plus what goes now) have aged out.
    need = used + allowed + 1 - limit
    freed = 0
    for i, count in enumerate(counts):
        freed += count
        if freed >= need:
            return Allowance(allowed, (oldest_slot + i + len(counts)) * slot_ms - now_ms)
    # Only what goes now, in the current slot, stands in the way: wait for it to age out.
    return Allowance(allowed, (current_slot + len(counts)) * slot_ms - now_ms)


class BudgetStore:
    def __init__(self, client: redis.Redis, limit: int, window_s: float) -> None:
        self._script = client.register_script(READ_LUA)
        self.limit = limit
        self.slot_ms = max(1, int(window_s * 1000 / SLOTS))

    @property
    def ttl_ms(self) -> int:
        """A slot's hash must outlive the SLOTS after it, during which it is still summed."""
        return self.slot_ms * (SLOTS + 2)

    def slot(self, now_ms: int) -> int:
        return now_ms // self.slot_ms

    def allowances(self, keys: ShardKeys, wanted: dict[str, int]) -> dict[str, Allowance]:
        """For each user, how many of its wanted updates may go now (one Redis call per 2,000 users)."""
        now_ms = int(time.time() * 1000)
        current = self.slot(now_ms)
        slot_keys = [keys.budget(s) for s in range(current - SLOTS, current + 1)]
        users = list(wanted)
        out: dict[str, Allowance] = {}
        for start in range(0, len(users), CHUNK):
            out.update(self._read(slot_keys, users[start : start + CHUNK], wanted, now_ms))
        return out

    def _read(
        self, slot_keys: list[str], users: list[str], wanted: dict[str, int], now_ms: int
    ) -> dict[str, Allowance]:
        args: list[str | int] = [self.limit]
        for user in users:
            args += [user, wanted[user]]
        with store_errors("read the hourly budget"):
            reply = self._script(keys=slot_keys, args=args)
        totals = reply[: len(users)]
        out = {u: Allowance(wanted[u], 0) for u, t in zip(users, totals, strict=True) if t + wanted[u] <= self.limit}
        rest = reply[len(users) :]
        width = SLOTS + 2
        for start in range(0, len(rest), width):
            user = users[int(rest[start])]
            counts = [int(c) for c in rest[start + 1 : start + width]]
            out[user] = allowance(counts, wanted[user], self.limit, now_ms, self.slot_ms)
        return out
