"""The global rate limit's script (worker/lua/rate_limit.lua) against a real redis-server."""

from __future__ import annotations

import time

import redis

from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from worker.drain.limiter import RateLimiter


def test_the_limiter_spaces_grants_without_polling(redis_client: redis.Redis, queue_config: QueueConfig) -> None:
    slept: list[float] = []
    limiter = RateLimiter(redis_client, Keys(queue_config.namespace), requests_per_s=50, records_per_s=None,
                          max_batch=1000, sleep=lambda s: (slept.append(s), time.sleep(s)))  # fmt: skip
    started = time.monotonic()
    for _ in range(11):
        assert limiter.acquire(1)
    assert time.monotonic() - started >= 10 * 1.05 / 50 * 0.95
    assert len(slept) <= 15, "each wait is computed, not polled"


def test_the_records_limit_allows_one_batch_then_paces(redis_client: redis.Redis, queue_config: QueueConfig) -> None:
    limiter = RateLimiter(redis_client, Keys(queue_config.namespace), requests_per_s=None, records_per_s=100,
                          max_batch=100)  # fmt: skip
    assert limiter.try_acquire(100) == 0
    wait = limiter.try_acquire(50)
    assert 0.45 <= wait <= 0.5
