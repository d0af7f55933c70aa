"""Amplitude's per-user budget: at most N property updates per user per hour, or it drops the rest.

Amplitude silently drops a user's property updates beyond 1,800 an hour; no status code says so.
We count what each user was sent, and defer (keep, in order) what would pass the limit until the
budget allows it.  Counts are kept per user in slots of a sixth of the window (ten minutes for an
hour), in one Redis hash per shard and slot that expires after the window.

A rolling window of an hour overlaps at most seven ten-minute slots, so a user may be sent more
only while the counts of the current slot and the six before it stay within the limit: at most N
in any rolling hour, exactly, at the price of looking ten minutes further back than strictly
needed.  ``allowance`` is the decision, a pure function; ``BudgetStore.reserve`` reads the counts
and counts what may go, in one Lua call per claim; what is then not sent is refunded.

Memory: one hash field per user per slot in which the user was sent something (bench/memory.py
measures it; see the README).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import redis

from producers.keys import ShardKeys
from producers.redis_conn import store_errors

#: Slots per window; the counts of the current slot and the SLOTS before it are summed.
SLOTS = 6
#: Users per Lua call: the script unpacks them into one command, and Lua's stack is limited.
CHUNK = 2000

# KEYS: the slot hashes, oldest first (SLOTS + 1); the last is the current slot
# ARGV: limit, ttl ms, n users, the n user keys, then k, then k pairs (position, wanted) for the
#       users that want more than one
# Reserves, in the current slot, what each user may be sent now, and returns, only for the users
# that may not be sent all they want: {position (0-based), allowed, count in each slot...}.
# Reserving while reading keeps the common case to one call, with no second one after sending.
RESERVE_LUA = """
local limit, ttl, n = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local users = {}
for i = 1, n do users[i] = ARGV[3 + i] end
local wanted = {}
local k = tonumber(ARGV[4 + n])
for i = 0, k - 1 do wanted[tonumber(ARGV[5 + n + 2 * i]) + 1] = tonumber(ARGV[6 + n + 2 * i]) end
-- slot by slot: most users have nothing in most slots, and an empty field costs no conversion
local totals, now_counts = {}, nil
for s = 1, #KEYS do
  local column = redis.call('HMGET', KEYS[s], unpack(users))
  for u = 1, n do
    local v = column[u]
    if v then totals[u] = (totals[u] or 0) + tonumber(v) end
  end
  if s == #KEYS then now_counts = column end
end
local updates, out = {}, {}
for u = 1, n do
  local total = totals[u] or 0
  local want = wanted[u] or 1
  local allowed = math.max(0, math.min(want, limit - total))
  if allowed > 0 then
    updates[#updates + 1] = users[u]
    updates[#updates + 1] = tonumber(now_counts[u] or 0) + allowed
  end
  if allowed < want then
    out[#out + 1] = u - 1
    out[#out + 1] = allowed
    for s = 1, #KEYS do out[#out + 1] = tonumber(redis.call('HGET', KEYS[s], users[u]) or 0) end
  end
end
if #updates > 0 then
  redis.call('HSET', KEYS[#KEYS], unpack(updates))
  redis.call('PEXPIRE', KEYS[#KEYS], ttl)
end
return out
"""

# KEYS: the slot a reservation was made in; ARGV: pairs (user, count) to give back
REFUND_LUA = """
for i = 1, #ARGV, 2 do
  if redis.call('HINCRBY', KEYS[1], ARGV[i], -tonumber(ARGV[i + 1])) <= 0 then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return 1
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


class Reservation(NamedTuple):
    #: The slot hash the reservation was counted in (a refund goes back to it).
    slot_key: str
    #: Users that may not be sent all they wanted now: how many they may, and when the next may go.
    limited: dict[str, Allowance]


class BudgetStore:
    def __init__(self, client: redis.Redis, limit: int, window_s: float) -> None:
        self._reserve = client.register_script(RESERVE_LUA)
        self._refund = client.register_script(REFUND_LUA)
        self.limit = limit
        self.slot_ms = max(1, int(window_s * 1000 / SLOTS))

    @property
    def ttl_ms(self) -> int:
        """A slot's hash must outlive the SLOTS after it, during which it is still summed."""
        return self.slot_ms * (SLOTS + 2)

    def reserve(self, keys: ShardKeys, wanted: dict[str, int], now_ms: int, reserved: dict[str, int]) -> Reservation:
        """Count, for each user, what it may be sent now; one Redis call per 2,000 users.

        ``now_ms`` is Redis's clock (shard_store.RedisClock): every worker puts an update in the
        same slot whatever its own clock says.  What each call reserved is added to ``reserved``
        (user -> identifications) as soon as the call returns, so that a failure in a later call
        leaves nothing reserved that the caller does not know of and cannot refund.

        What is reserved and then not sent (held, refused, still waiting) is given back with
        ``refund``; what was sent, or may have been applied (an answer that never came), stays
        counted, so the budget errs on the safe side.
        """
        current = now_ms // self.slot_ms
        slot_keys = [keys.budget(s) for s in range(current - SLOTS, current + 1)]
        users = list(wanted)
        limited: dict[str, Allowance] = {}
        for start in range(0, len(users), CHUNK):
            chunk = users[start : start + CHUNK]
            args: list[str | int] = [self.limit, self.ttl_ms, len(chunk), *chunk]
            several = [(i, wanted[u]) for i, u in enumerate(chunk) if wanted[u] > 1]
            args.append(len(several))
            for i, count in several:
                args += [i, count]
            with store_errors("reserve the hourly budget"):
                reply = self._reserve(keys=slot_keys, args=args)
            granted = {user: wanted[user] for user in chunk}
            width = SLOTS + 3
            for at in range(0, len(reply), width):
                user = chunk[int(reply[at])]
                # the counts as read, before this reservation: the same decision as the script's
                counts = [int(c) for c in reply[at + 2 : at + width]]
                limited[user] = allowance(counts, wanted[user], self.limit, now_ms, self.slot_ms)
                granted[user] = limited[user].allowed
            for user, n in granted.items():
                reserved[user] = reserved.get(user, 0) + n
        return Reservation(slot_keys[-1], limited)

    def refund(self, slot_key: str, counts: dict[str, int]) -> None:
        args: list[str | int] = []
        for user, count in counts.items():
            if count > 0:
                args += [user, count]
        if args:
            with store_errors("refund the hourly budget"):
                self._refund(keys=[slot_key], args=args)
