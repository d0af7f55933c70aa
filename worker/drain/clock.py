"""Redis's clock, as the drainer reads it: the one clock every decision on time uses.

Holds end, budget slots are counted, records age and fail on Redis's ``TIME``, never on a
worker's or a producer's clock: workers and producers whose clocks are skewed decide alike (a
test runs workers three hours ahead and behind under libfaketime).
"""

from __future__ import annotations

import time


class RedisClock:
    """Redis's clock as last read by a claim, carried forward by this process's monotonic clock.

    The reading was taken somewhere between asking and the answer: ``now_ms`` counts from the
    answer (the earliest Redis's clock can be now), ``latest_ms`` from the asking (the latest).
    """

    def __init__(self) -> None:
        self._redis_ms = 0
        self._at = 0.0
        self._asked = 0.0

    def sync(self, redis_ms: int, asked: float | None = None) -> None:
        """``asked``: this process's monotonic clock when the call that read ``redis_ms`` was sent."""
        self._redis_ms, self._at = redis_ms, time.monotonic()
        self._asked = self._at if asked is None else asked

    def now_ms(self) -> int:
        return self._redis_ms + int((time.monotonic() - self._at) * 1000)

    def latest_ms(self) -> int:
        return self._redis_ms + int((time.monotonic() - self._asked) * 1000) + 1
