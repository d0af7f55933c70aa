"""A shard's lease: one drainer at a time owns a shard, so a user's updates go out one settled
batch after another.

The lease is a random token with a TTL (``IDENTIFY_LEASE_TTL_S``), renewed before every request
and while waiting for a turn under the rate limit.  Every script that changes a shard checks that
the lease still holds the caller's token and refuses with LEASE_LOST otherwise, so a drainer that
stalled past its TTL can never acknowledge, park or dead-letter records a newer owner works on.

    acquire   take it if free (worker/lua/lease_acquire.lua)
    renew     extend it (lease_renew.lua)
    release   give it back, and say when the shard next needs a drain (lease_release.lua, then
              producers/lua/wake.lua on the global keys)
    lost      a drainer that found it lost did not crash: no recovery is counted (lease_lost.lua)
"""

from __future__ import annotations

import contextlib
import secrets

import redis

from producers.contract.errors import StoreError
from producers.contract.keys import Keys
from producers.contract.scripts import Script


class Leases:
    def __init__(self, client: redis.Redis, keys: Keys, ttl_s: float) -> None:
        self.keys = keys
        self.ttl_ms = int(ttl_s * 1000)
        self._acquire = Script(client, "worker", "lease_acquire")
        self._renew = Script(client, "worker", "lease_renew")
        self._release = Script(client, "worker", "lease_release")
        self._wake = Script(client, "producers", "wake")
        self._lost = Script(client, "worker", "lease_lost")

    def acquire(self, shard: int) -> str | None:
        """Take the shard's lease; None when another drainer holds it."""
        token = secrets.token_hex(8)
        k = self.keys.shard(shard)
        try:
            ok = self._acquire([k.lease, k.state], [token, self.ttl_ms], action="acquire lease")
        except StoreError:
            # The call may have run and its answer been lost: give back what it may have taken, so
            # that the shard does not wait out the lease (a release with a token not holding the
            # lease changes nothing; unclean, so a recovery is still counted for what is in flight)
            with contextlib.suppress(StoreError):
                self.release(shard, token, clean=False)
            raise
        return token if ok else None

    def renew(self, shard: int, token: str) -> None:
        self._renew([self.keys.shard(shard).lease], [token, self.ttl_ms], action="renew lease")

    def release(self, shard: int, token: str, *, retry_in_ms: int = 0, wake_in_ms: int = 0, clean: bool = True) -> None:
        """Give the shard back.  With ``retry_in_ms`` the whole shard waits that long (Redis's clock);
        otherwise it is woken as soon as it has work, or when its first waiting user's time comes."""
        k = self.keys.shard(shard)
        keys = [k.lease, k.queue, k.inflight, k.parked, k.state]
        due = int(self._release(keys, [token, retry_in_ms, wake_in_ms, 1 if clean else 0], action="release lease"))
        if due > 0:
            self.wake(shard, due)

    def wake(self, shard: int, due_ms: int) -> None:
        """The shard needs a drain at ``due_ms`` (Redis's clock), unless one is due earlier."""
        keys = [self.keys.meta, self.keys.wakeups, self.keys.kick]
        self._wake(keys, ["LT", shard, due_ms], action="wake the shard")

    def lost(self, shard: int, token: str) -> None:
        """Say that this drainer lost its lease (it did not crash): no recovery is counted for it."""
        k = self.keys.shard(shard)
        self._lost([k.lease, k.state], [token], action="report a lost lease")
