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

from producers.keys import Keys
from producers.redis_conn import store_errors

#: How much wider than 1/rps requests are spaced, so that network jitter cannot show N+1 in a second.
REQUEST_SPACING_MARGIN = 1.05
#: Longest single sleep; the caller is re-checked (and may stop) at least this often.
MAX_SLEEP_S = 1.0

# KEYS: requests TAT, records TAT
# ARGV: request interval us (0: no request limit), record interval us (0: no record limit),
#       records in this request, record tolerance us
# Returns 0 when granted, else the microseconds to wait before asking again.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local req_interval, rec_interval = tonumber(ARGV[1]), tonumber(ARGV[2])
local wait = 0
local req_tat, rec_tat = 0, 0
if req_interval > 0 then
  req_tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
  wait = math.max(wait, req_tat - now)
end
if rec_interval > 0 then
  rec_tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now) + tonumber(ARGV[3]) * rec_interval
  wait = math.max(wait, rec_tat - tonumber(ARGV[4]) - now)
end
if wait > 0 then return math.ceil(wait) end
-- each TAT lives until it is in the past, and a minute more: a slow limit's TAT can be far ahead
if req_interval > 0 then
  local tat = req_tat + req_interval
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 60000)
end
if rec_interval > 0 then
  redis.call('SET', KEYS[2], string.format('%.0f', rec_tat), 'PX', math.ceil((rec_tat - now) / 1000) + 60000)
end
return 0
"""


class RateLimiter:
    def __init__(
        self, client: redis.Redis, keys: Keys, *, requests_per_s: float | None, records_per_s: float | None,
        max_batch: int, sleep: Callable[[float], None] = time.sleep,
    ) -> None:  # fmt: skip
        self._script = client.register_script(GCRA_LUA)
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
        with store_errors("rate limit"):
            wait_us = int(self._script(keys=self._keys, args=args))
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
