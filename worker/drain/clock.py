"""Redis's clock, as the drainer reads it: the one clock every decision on time uses.

Holds end, budget slots are counted, records age and fail on Redis's ``TIME``, never on a
worker's or a producer's clock: workers and producers whose clocks are skewed decide alike (a
test runs workers three hours ahead and behind under libfaketime).
"""

from __future__ import annotations

import time


class RedisClock:
    """Redis's clock as last read by a claim, carried forward by this process's monotonic clock."""

    def __init__(self) -> None:
        self._redis_ms = 0
        self._at = 0.0

    def sync(self, redis_ms: int) -> None:
        self._redis_ms, self._at = redis_ms, time.monotonic()

    def now_ms(self) -> int:
        return self._redis_ms + int((time.monotonic() - self._at) * 1000)
