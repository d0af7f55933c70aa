"""Sending blocked for every worker (worker/lua/block.lua, unblock.lua, probe_now.lua) against a
real redis-server: the block's record, its probes' backoff, and what lifting it wakes."""

from __future__ import annotations

import pytest
import redis

from producers.contract.keys import Keys
from tests.support import listed, redis_ms, scored, snapshot, text_hash
from worker.drain.blocking import Block, Blocking

BASE_S, CAP_S = 1.0, 8.0


@pytest.fixture
def blocking(redis_client: redis.Redis, keys: Keys) -> Blocking:
    return Blocking(redis_client, keys)


def test_the_first_block_records_why_and_when_to_probe(
    blocking: Blocking, redis_client: redis.Redis, keys: Keys
) -> None:
    before = redis_ms(redis_client)
    block = blocking.block("HTTP 400 Invalid API key", '{"error":"Invalid API key: ***"}', 400,
                           base_s=BASE_S, cap_s=CAP_S, jitter=0.5)  # fmt: skip
    after = redis_ms(redis_client)
    # half the base step, plus the jitter's share of the other half
    assert block == Block(newly_blocked=True, probes=1, next_probe_in_ms=750)
    state = text_hash(redis_client, keys.blocked)
    since = int(state.pop("since_ms"))
    assert before <= since <= after
    assert since + 750 <= int(state.pop("next_probe_ms")) <= after + 750
    assert state == {"probes": "1", "reason": "HTTP 400 Invalid API key", "detail": '{"error":"Invalid API key: ***"}',
                     "status": "400"}  # fmt: skip


@pytest.mark.parametrize(
    ("probes", "jitter", "delay"),
    [
        (2, 0.5, 1500),  # step 2 s
        (3, 0.0, 2000),  # step 4 s, no jitter: half of it
        (4, 1.0, 8000),  # step 8 s, all of it
        (9, 1.0, 8000),  # capped
        (60, 0.0, 4000),  # the exponent is bounded, the step still capped
    ],
)
def test_each_failed_probe_backs_off_further_up_to_the_cap(
    blocking: Blocking, redis_client: redis.Redis, keys: Keys, probes: int, jitter: float, delay: int
) -> None:
    first = blocking.block("r0", "", 400, base_s=BASE_S, cap_s=CAP_S, jitter=0.5)
    since = text_hash(redis_client, keys.blocked)["since_ms"]
    for _ in range(probes - 2):
        blocking.block("r", "", 400, base_s=BASE_S, cap_s=CAP_S, jitter=0.5)
    block = blocking.block("HTTP 401", "unauthorized", None, base_s=BASE_S, cap_s=CAP_S, jitter=jitter)
    assert first.newly_blocked and block == Block(newly_blocked=False, probes=probes, next_probe_in_ms=delay)
    state = text_hash(redis_client, keys.blocked)
    # the block keeps its start; the reason is the last answer's; no status is ''
    assert (state["since_ms"], state["reason"], state["status"], state["probes"]) == (
        since, "HTTP 401", "", str(probes)
    )  # fmt: skip


def test_unblock_lifts_the_block_and_wakes_every_waiting_shard_now(
    blocking: Blocking, redis_client: redis.Redis, keys: Keys
) -> None:
    blocking.block("r", "", 400, base_s=BASE_S, cap_s=CAP_S, jitter=0.5)
    since = int(text_hash(redis_client, keys.blocked)["since_ms"])
    far = redis_ms(redis_client) + 3_600_000
    redis_client.zadd(keys.wakeups, {"0": far, "3": far + 1})
    blocked_ms = blocking.unblock()
    after = redis_ms(redis_client)
    assert 0 <= blocked_ms <= after - since
    assert redis_client.exists(keys.blocked) == 0
    woken = scored(redis_client, keys.wakeups)
    assert [s for s, _ in woken] == ["0", "3"]  # no shard added (XX), each pulled forward
    assert all(since + blocked_ms <= t <= after for _, t in woken)
    assert listed(redis_client, keys.kick) == [b"1"]


@pytest.mark.parametrize("call", ["unblock", "probe_now"])
def test_without_a_block_unblock_and_probe_now_change_nothing(
    blocking: Blocking, redis_client: redis.Redis, keys: Keys, namespace: str, call: str
) -> None:
    redis_client.zadd(keys.wakeups, {"0": 123})
    before = snapshot(redis_client, namespace)
    assert getattr(blocking, call)() == (-1 if call == "unblock" else False)
    assert snapshot(redis_client, namespace) == before


def test_probe_now_makes_the_next_claim_a_probe_and_wakes_every_waiting_shard(
    blocking: Blocking, redis_client: redis.Redis, keys: Keys
) -> None:
    blocking.block("r", "", 400, base_s=3600, cap_s=7200, jitter=0.5)
    far = redis_ms(redis_client) + 3_600_000
    redis_client.zadd(keys.wakeups, {"2": far})
    before = redis_ms(redis_client)
    assert blocking.probe_now() is True
    after = redis_ms(redis_client)
    state = text_hash(redis_client, keys.blocked)
    assert state["next_probe_ms"] == "0" and state["probes"] == "1"  # still blocked: the probe decides
    [(shard, due)] = scored(redis_client, keys.wakeups)
    assert shard == "2" and before <= due <= after
    assert listed(redis_client, keys.kick) == [b"1"]
