"""The request size in force: what a 413 taught every worker, and how it recovers.

A 413 halves the size of the request that drew it, for every worker (stored in ``meta`` by
worker/lua/request_size.lua).  One bad day must not shrink every request for ever: after each
quiet period without a new 413 (``IDENTIFY_REQUEST_SIZE_RECOVERY_S``, an hour by default) the
limit doubles again, up to the configured size, and a 413 at the larger size lowers it once more.
"""

from __future__ import annotations

import redis

from producers.contract.keys import Keys
from producers.contract.scripts import Script

#: The smallest request size a 413 can teach us (below it, records are sent one by one anyway).
MIN_LEARNED_BYTES = 1024


def request_size_limit(configured: int, learned: int, learned_age_ms: int, recovery_ms: int) -> int:
    """The size in force: ``learned`` (0 for nothing) doubled for each quiet period since, at most
    ``configured``."""
    if not learned:
        return configured
    periods = min(learned_age_ms // max(recovery_ms, 1), 30)
    return min(configured, learned << periods)


class RequestSizes:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.keys = keys
        self._lower = Script(client, "worker", "request_size")

    def lower(self, limit: int, quiet_ms: int) -> int:
        """Lower the request size every worker uses; returns the size in force."""
        return int(self._lower([self.keys.meta], [limit, quiet_ms], action="lower the request size"))
