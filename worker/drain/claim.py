"""A claim: what the next request of a shard can carry, moved into ``inflight`` in one script.

``inflight`` empty: users whose wait has ended give their oldest waiting updates first, then the
queue's head, at most ``max_entries`` and about ``max_bytes`` (what one request carries, within
the records-per-second limit).  ``inflight`` not empty: it is returned as it is, read again first
(a crashed owner's batch, or one waiting to retry).  The script is worker/lua/claim.lua; its work
is bounded by the claim, never by the queue or a user's backlog, and touches the shard's keys only.

What every drain must know from the global keys first (is sending blocked, is this drain the
probe, what request size a 413 taught) comes from ``Claims.begin`` (worker/lua/drain_begin.lua),
once per drain task.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from producers.contract.keys import Keys
from producers.contract.scripts import Script

#: Users whose wait ended, released by one claim (each gives its oldest entries first).
RELEASED_USERS_PER_CLAIM = 100

#: The reply's header, in order, before the entries (worker/lua/claim.lua).
HEADER = ("now_ms", "recoveries", "wait_ms", "waiting_users")


@dataclass
class Claim:
    entries: list[bytes]
    #: Redis's clock when the claim ran (ms).
    now_ms: int
    #: How many times a claim found this batch in flight with no clean release (the drain died).
    recoveries: int
    #: Nothing was claimed: the shard waits to retry its batch; ask again this much later.
    wait_ms: int = 0
    #: How many users of the shard wait (held, deferred, replayed); 0 spares the drainer a look.
    waiting_users: int = 0


@dataclass
class Begin:
    """What a drain task reads from the global keys before it claims (worker/lua/drain_begin.lua)."""

    now_ms: int
    #: Sending is blocked by a configuration error and the next probe is not due: wait this long.
    wait_ms: int
    #: This drain is the probe of a blocked sender: its first answer decides whether sending resumes.
    probe: bool
    #: A request size learned from a 413 (0: none learned), and how long ago it was learned.
    learned_request_bytes: int
    learned_age_ms: int


class Claims:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.keys = keys
        self._script = Script(client, "worker", "claim")

    def claim(self, shard: int, token: str, max_entries: int, max_bytes: int) -> Claim:
        k = self.keys.shard(shard)
        keys = [k.lease, k.queue, k.inflight, k.state, k.parked, k.parked_why, k.waiting]
        args = [token, max_entries, max_bytes, RELEASED_USERS_PER_CLAIM]
        reply = self._script(keys, args, action="claim")
        head = dict(zip(HEADER, (int(v) for v in reply[: len(HEADER)]), strict=True))
        return Claim(entries=reply[len(HEADER) :], now_ms=head["now_ms"], recoveries=head["recoveries"],
                     wait_ms=head["wait_ms"], waiting_users=head["waiting_users"])  # fmt: skip


class Beginnings:
    def __init__(self, client: redis.Redis, keys: Keys, probe_hold_ms: int) -> None:
        self.keys = keys
        self._probe_hold_ms = probe_hold_ms
        self._script = Script(client, "worker", "drain_begin")

    def begin(self) -> Begin:
        now, wait, probe, learned, age = self._script([self.keys.blocked, self.keys.meta], [self._probe_hold_ms],
                                                      action="begin a drain")  # fmt: skip
        return Begin(int(now), int(wait), probe == 1, int(learned), int(age))
