"""Every Redis operation a drainer performs on its shard, in one handle; each is one Lua script.

    lease.py         acquire, renew, release, lost
    claim.py         begin: blocked? the probe? the learned request size (global keys, once per task);
                     claim: what the next request can carry (the shard's keys)
    settle.py        settle: what one answer changes
    waiting.py       the oldest waiting update of each claimed user
    blocking.py      block, unblock, probe_now: sending stopped for a configuration error
    request_size.py  lower: the request size a 413 taught
    clock.py         Redis's clock, as the last claim read it

Every script that changes a shard is fenced by the lease (LeaseLost, worker/errors.py), and none
does work that grows with a backlog: a claim reads at most what one request carries, a settle
touches only what it changes, and waiting users are reached by their key, never by a walk.
"""

from __future__ import annotations

import time

import redis

from producers.contract.keys import Keys
from worker.drain.blocking import Block, Blocking
from worker.drain.claim import Begin, Beginnings, Claim, Claims
from worker.drain.clock import RedisClock
from worker.drain.lease import Leases
from worker.drain.request_size import RequestSizes
from worker.drain.settle import Settlement, Settlements
from worker.drain.waiting import WaitingUsers


class ShardStore:
    def __init__(self, client: redis.Redis, keys: Keys, lease_ttl_s: float) -> None:
        self.keys = keys
        self.clock = RedisClock()
        self._leases = Leases(client, keys, lease_ttl_s)
        self._claims = Claims(client, keys)
        self._beginnings = Beginnings(client, keys, probe_hold_ms=self._leases.ttl_ms)
        self._settlements = Settlements(client, keys)
        self._waiting = WaitingUsers(client, keys)
        self._blocking = Blocking(client, keys)
        self._sizes = RequestSizes(client, keys)

    def acquire(self, shard: int) -> str | None:
        return self._leases.acquire(shard)

    def renew(self, shard: int, token: str) -> None:
        self._leases.renew(shard, token)

    def release(self, shard: int, token: str, *, retry_in_ms: int = 0, wake_in_ms: int = 0, clean: bool = True) -> None:
        self._leases.release(shard, token, retry_in_ms=retry_in_ms, wake_in_ms=wake_in_ms, clean=clean)

    def lost(self, shard: int, token: str) -> None:
        self._leases.lost(shard, token)

    def begin(self) -> Begin:
        asked = time.monotonic()
        begin = self._beginnings.begin()
        self.clock.sync(begin.now_ms, asked)
        return begin

    def claim(self, shard: int, token: str, max_entries: int, max_bytes: int) -> Claim:
        asked = time.monotonic()
        claim = self._claims.claim(shard, token, max_entries, max_bytes)
        self.clock.sync(claim.now_ms, asked)
        return claim

    def settle(self, shard: int, token: str, settlement: Settlement) -> list[str]:
        return self._settlements.settle(shard, token, settlement)

    def oldest_waiting(self, shard: int, users: list[str], waiting: int | None = None) -> dict[str, int]:
        return self._waiting.oldest(shard, users, waiting)

    def block(
        self, reason: str, detail: str, status: int | None, *, base_s: float, cap_s: float, jitter: float
    ) -> Block:
        return self._blocking.block(reason, detail, status, base_s=base_s, cap_s=cap_s, jitter=jitter)

    def unblock(self) -> int:
        return self._blocking.unblock()

    def probe_now(self) -> bool:
        return self._blocking.probe_now()

    def lower_max_request_bytes(self, limit: int, quiet_ms: int) -> int:
        return self._sizes.lower(limit, quiet_ms)
