"""The global rate limit's script (worker/lua/rate_limit.lua) against a real redis-server."""

from __future__ import annotations

import time

import redis

from producers.contract.keys import Keys
from producers.contract.scripts import Script
from producers.contract.settings import QueueConfig
from tests.support import pttl, snapshot
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


def test_a_grant_stores_each_tat_with_a_ttl_past_it_and_a_refusal_stores_nothing(
    redis_client: redis.Redis, queue_config: QueueConfig, namespace: str
) -> None:
    keys = Keys(queue_config.namespace)
    script = Script(redis_client, "worker", "rate_limit")
    tats = [keys.ratelimit_requests, keys.ratelimit_records]
    # one request a second; 100 records a second with a tolerance of one batch of 100
    args = [1_000_000, 10_000, 5, 1_000_000]
    before = redis_us(redis_client)
    assert script(tats, args) == 0
    after = redis_us(redis_client)
    requests, records = (int(redis_client.get(k) or 0) for k in tats)
    assert before + 1_000_000 <= requests <= after + 1_000_000
    assert before + 5 * 10_000 <= records <= after + 5 * 10_000
    assert 60_000 < pttl(redis_client, keys.ratelimit_requests) <= 61_000
    assert 59_000 < pttl(redis_client, keys.ratelimit_records) <= 60_050
    # the next request within the second is refused, told how long to wait, and changes nothing
    held = snapshot(redis_client, namespace)
    wait = script(tats, args)
    assert 0 < wait <= requests - before
    assert snapshot(redis_client, namespace) == held


def test_without_limits_every_request_is_granted_and_nothing_stored(
    redis_client: redis.Redis, queue_config: QueueConfig, namespace: str
) -> None:
    keys = Keys(queue_config.namespace)
    script = Script(redis_client, "worker", "rate_limit")
    for _ in range(3):
        assert script([keys.ratelimit_requests, keys.ratelimit_records], [0, 0, 1000, 0]) == 0
    assert snapshot(redis_client, namespace) == {}


def redis_us(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1_000_000 + int(micros)
