"""A rate limit shared by every worker process on every machine: GCRA on Redis's clock.

The Generic Cell Rate Algorithm keeps, per limit, one timestamp in Redis: the "theoretical arrival
time" (TAT) of the next request.  A request of cost c is granted when the TAT, pushed by c
intervals, is not more than the tolerance ahead of now; granting stores the pushed TAT.  One Lua
script checks both limits (requests per second, records per second) and grants both or neither,
so a request never takes one limit's turn while waiting for the other.  A refused caller is told
exactly how long to wait and sleeps that long: no polling loop against Redis.

Requests: no burst; grants are spaced ``1.05 / rps`` apart.  Spaced exactly ``1 / rps``, N+1 grants
span one second, and a few milliseconds of network jitter between grant and arrival would let
Amplitude count N+1 in a second; the 5% keeps what Amplitude sees within the limit.
Records: the rate holds on average with bursts of at most one batch (a batch is one request and
cannot be split in time); the drain never cuts a batch larger than one second's records.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from producers.contract.keys import Keys
from producers.contract.scripts import Script

#: How much wider than 1/rps requests are spaced, so that network jitter cannot show N+1 in a second.
REQUEST_SPACING_MARGIN = 1.05
#: Longest single sleep; the caller is re-checked (and may stop) at least this often.
MAX_SLEEP_S = 1.0


class RateLimiter:
    def __init__(
        self, client: redis.Redis, keys: Keys, *, requests_per_s: float | None, records_per_s: float | None,
        max_batch: int, sleep: Callable[[float], None] = time.sleep,
    ) -> None:  # fmt: skip
        self._script = Script(client, "worker", "rate_limit")  # worker/lua/rate_limit.lua
        self._keys = [keys.ratelimit_requests, keys.ratelimit_records]
        self._req_interval_us = int(1e6 * REQUEST_SPACING_MARGIN / requests_per_s) if requests_per_s else 0
        self._rec_interval_us = int(1e6 / records_per_s) if records_per_s else 0
        self._rec_tolerance_us = self._rec_interval_us * max_batch
        self._sleep = sleep

    @property
    def enabled(self) -> bool:
        return bool(self._req_interval_us or self._rec_interval_us)

    def try_acquire(self, records: int) -> float:
        """Take a turn for one request of ``records``; 0 if granted, else seconds to wait first."""
        args = [self._req_interval_us, self._rec_interval_us, records, self._rec_tolerance_us]
        wait_us = int(self._script(self._keys, args, action="rate limit"))
        return wait_us / 1e6

    def acquire(
        self,
        records: int,
        should_stop: Callable[[], bool] = lambda: False,
        on_wait: Callable[[], object] = lambda: None,
    ) -> bool:
        """Wait for a turn; False if ``should_stop`` turned true while waiting.

        ``on_wait`` runs before each sleep (the drain renews its lease there).
        """
        if not self.enabled:
            return True
        while True:
            wait = self.try_acquire(records)
            if wait == 0:
                return True
            if should_stop():
                return False
            on_wait()
            self._sleep(min(wait, MAX_SLEEP_S))
