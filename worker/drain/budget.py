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

Amplitude counts a request when it arrives, and a claim's requests can arrive later than its
reservation (turns under the rate limit, a slow answer).  So a claim that ends in a later slot than
it reserved in moves what it sent there (``move``): a user's count then stops counting a window
after the last of its requests arrived, never earlier.  With ten-minute slots that is a claim in
thousands; the usual claim closes with nothing to do.

Memory: one hash field per user per slot in which the user was sent something (bench/memory.py
measures it; see docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import redis

from producers.contract.keys import ShardKeys
from producers.contract.scripts import Script

#: Slots per window; the counts of the current slot and the SLOTS before it are summed.
SLOTS = 6
#: Users per Lua call: the script unpacks them into one command, and Lua's stack is limited.
CHUNK = 2000


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
        self._reserve = Script(client, "worker", "budget_reserve")  # worker/lua/budget_reserve.lua
        self._refund = Script(client, "worker", "budget_refund")
        self._move = Script(client, "worker", "budget_move")
        self.limit = limit
        self.slot_ms = max(1, int(window_s * 1000 / SLOTS))

    @property
    def ttl_ms(self) -> int:
        """A slot's hash must outlive the SLOTS after it, during which it is still summed."""
        return self.slot_ms * (SLOTS + 2)

    def slot_key(self, keys: ShardKeys, now_ms: int) -> str:
        """The slot hash a reservation at ``now_ms`` (Redis's clock) is counted in."""
        return keys.budget(now_ms // self.slot_ms)

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
        users, wants = list(wanted), list(wanted.values())
        limited: dict[str, Allowance] = {}
        for start in range(0, len(users), CHUNK):
            chunk, chunk_wants = users[start : start + CHUNK], wants[start : start + CHUNK]
            args: list[str | int] = [self.limit, self.ttl_ms, len(chunk), *chunk]
            # Most users of a claim want one (merging makes one of a run): max() spares the scan.
            several = [(i, n) for i, n in enumerate(chunk_wants) if n > 1] if max(chunk_wants) > 1 else []
            args.append(len(several))
            for i, n in several:
                args += [i, n]
            reply = self._reserve(slot_keys, args, action="reserve the hourly budget")
            # the usual case: one call, and every user may have all it wants
            one = not reply and len(chunk) == len(users)
            granted = wanted if one else dict(zip(chunk, chunk_wants, strict=True))
            width = SLOTS + 3
            for at in range(0, len(reply), width):
                user = chunk[int(reply[at])]
                # the counts as read, before this reservation: the same decision as the script's
                counts = [int(c) for c in reply[at + 2 : at + width]]
                limited[user] = allowance(counts, wanted[user], self.limit, now_ms, self.slot_ms)
                granted[user] = limited[user].allowed
            if not reserved or reserved.keys().isdisjoint(granted):
                reserved.update(granted)  # the usual case, a claim's first reservation: in C
            else:
                for user, n in granted.items():
                    reserved[user] = reserved.get(user, 0) + n
        return Reservation(slot_keys[-1], limited)

    def refund(self, slot_key: str, counts: dict[str, int]) -> None:
        args: list[str | int] = []
        for user, count in counts.items():
            if count > 0:
                args += [user, count]
        if args:
            self._refund([slot_key], args, action="refund the hourly budget")

    def move(
        self, keys: ShardKeys, slot_key: str, within_ms: tuple[int, int], reserved: dict[str, int], sent: dict[str, int]
    ) -> None:
        """Close a reservation counted in ``slot_key`` when the claim may have ended in a later slot:
        give back what was not sent, and count what was sent (per user) in the slot Redis's clock
        is in now, which ``within_ms`` bounds (the worker cannot know it better: see clock.py)."""
        first, last = (ms // self.slot_ms for ms in within_ms)
        args: list[str | int] = [self.slot_ms, first, self.ttl_ms]
        for user, count in reserved.items():
            args += [user, count, sent.get(user, 0)]
        slot_keys = [slot_key, *(keys.budget(s) for s in range(first, last + 1))]
        self._move(slot_keys, args, action="count the hourly budget where a claim ended")
