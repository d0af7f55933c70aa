"""The real Drainer (real ShardStore, BudgetStore, RateLimiter and Lua scripts against the fixtures'
redis-server) with a scripted Amplitude: each remedy end to end, in milliseconds.

Every wait is long (an hour), so that time never decides anything here: where a test needs a wait
to end, it rewrites that time in Redis, as the model test does."""

from __future__ import annotations

import math
from typing import Any, cast

import orjson
import pytest
import redis

from producers.contract import entry
from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from tests.support import (
    OK,
    ScriptedSink,
    answer,
    dead_letters,
    listed,
    members,
    redis_ms,
    scored,
    seq_records,
    text_hash,
    wait_until,
)
from worker.drain import waiting
from worker.drain.budget import BudgetStore
from worker.drain.limiter import RateLimiter
from worker.drain.loop import Drainer
from worker.drain.sink import HttpResult, HttpSink
from worker.drain.store import ShardStore
from worker.errors import SinkTimeout
from worker.settings import Secret, Settings

pytestmark = pytest.mark.shards(1)
SHARD = 0
HOUR_MS = 3_600_000


def settings(config: QueueConfig, **changes: Any) -> Settings:
    base: dict[str, Any] = dict(
        queue=config, api_key=Secret("drainer-test-key"), identify_url="http://amplitude.invalid/identify",
        batch_size=10, coalesce=False, user_updates_per_hour=1800, budget_window_s=3600, drain_slice_s=5,
        lease_ttl_s=60, unnamed_refusals_before_block=10,
        # every wait is an hour or more: only the test ends one
        throttle_pause_s=3600, retry_base_s=3600, retry_cap_s=7200, probe_cap_s=7200,
    )  # fmt: skip
    return Settings(**{**base, **changes})


def drainer(client: redis.Redis, config: QueueConfig, sink: ScriptedSink, **changes: Any) -> Drainer:
    """A Drainer as a drain task builds it; the shard's wake-up is popped first, as the dispatcher
    does before it sends the task (so what the release asks for can be read in ``wakeups``)."""
    client.zrem(Keys(config.namespace).wakeups, str(SHARD))
    s = settings(config, **changes)
    store = ShardStore(client, Keys(config.namespace), s.lease_ttl_s)
    budget = BudgetStore(client, s.user_updates_per_hour, s.budget_window_s) if s.user_updates_per_hour else None
    limiter = RateLimiter(client, Keys(config.namespace), requests_per_s=None, records_per_s=None,
                          max_batch=s.batch_size)  # fmt: skip
    return Drainer(s, store, cast(HttpSink, sink), limiter=limiter, budget=budget)


def record(user: str, n: int, **props: Any) -> dict[str, Any]:
    return {"user_id": user, "user_properties": {"$set": {"n": n, f"r{n}": 1, **props}}}


def number(r: dict[str, Any]) -> int:
    """Which update of its user a record is (``n`` here, ``seq`` in support.seq_records)."""
    props = r["user_properties"]["$set"]
    return int(props["n"] if "n" in props else props["seq"])


def updates(received: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(r["user_id"], number(r)) for r in received]


def inflight(client: redis.Redis, keys: Keys) -> list[tuple[str, int]]:
    """(user, update) of each entry in flight, in order."""
    return updates([orjson.loads(entry.decode(x).data) for x in listed(client, keys.shard(SHARD).inflight)])


def waiting_of(client: redis.Redis, keys: Keys, user: str) -> list[int]:
    key = f"u:{user}"
    return [number(orjson.loads(entry.decode(waiting.entry_of(m, key)).data))
            for m in members(client, keys.shard(SHARD).waiting) if m.startswith(waiting.prefix(key))]  # fmt: skip


def settled(client: redis.Redis, keys: Keys) -> None:
    """Nothing is left queued, in flight or waiting, and the lease was given back."""
    k = keys.shard(SHARD)
    assert client.exists(k.queue, k.inflight, k.waiting, k.parked, k.lease) == 0
    assert int(client.get(keys.shard(SHARD).total) or 0) == 0


# -- 2xx ------------------------------------------------------------------------------------------
def test_an_accepted_claim_is_delivered_and_settled(
    producer: IdentifyProducer, redis_client: redis.Redis, queue_config: QueueConfig, keys: Keys
) -> None:
    records = seq_records(3, 3)
    producer.identify_many(records)
    sink = ScriptedSink()
    drainer(redis_client, queue_config, sink, batch_size=4).drain(SHARD)
    assert [len(r) for r in sink.requests] == [4, 4, 1]
    assert sink.delivered() == records
    settled(redis_client, keys)
    stats = text_hash(redis_client, keys.shard(SHARD).stats)
    assert (stats["delivered"], stats["requests"]) == ("9", "3")


@pytest.mark.parametrize("corrupt", [b"2|x|1|0|8|u:user-z|{}", b"2|7||0|8|u:user-z|{}", b"2|7|1|0|99|u:user-z|{}"])
def test_entries_that_cannot_be_read_are_dead_lettered_one_by_one_and_the_others_delivered(
    producer: IdentifyProducer, redis_client: redis.Redis, queue_config: QueueConfig, keys: Keys, corrupt: bytes
) -> None:
    """A claim is decoded in one loop; one entry that cannot be read (a number of its header, read
    lazily since, included) sends the claim through the entry-by-entry path: only it is dead-lettered."""
    records = seq_records(2, 2)
    producer.identify_many(records[:2])
    queue = keys.shard(SHARD).queue
    redis_client.rpush(queue, corrupt)
    redis_client.incr(keys.shard(SHARD).total)
    producer.identify_many(records[2:])
    sink = ScriptedSink()
    drainer(redis_client, queue_config, sink).drain(SHARD)
    assert sink.delivered() == records
    [dead] = dead_letters(queue_config)
    assert dead["reason"] == "undecodable"
    settled(redis_client, keys)


# -- 400 naming a record --------------------------------------------------------------------------
def test_a_named_invalid_record_is_dead_lettered_and_the_rest_delivered_with_one_extra_request(
    producer: IdentifyProducer, redis_client: redis.Redis, queue_config: QueueConfig, keys: Keys
) -> None:
    records = seq_records(5, 1)
    producer.identify_many(records)
    refusal = answer(400, {"code": 400, "error": "Request contains invalid events",
                           "events_with_invalid_fields": {"user_id": [2]}})  # fmt: skip
    sink = ScriptedSink(refusal)
    drainer(redis_client, queue_config, sink).drain(SHARD)
    # one extra request, carrying everything but the refused record, in order
    assert sink.requests == [records, records[:2] + records[3:]]
    [dead] = dead_letters(queue_config)
    assert (dead["reason"], dead["record"], dead["status"], dead["detail"]) == (
        "invalid", records[2], 400, "invalid field user_id"
    )  # fmt: skip
    settled(redis_client, keys)
    stats = text_hash(redis_client, keys.shard(SHARD).stats)
    assert (stats["delivered"], stats["dead_lettered"], stats["requests"]) == ("4", "1", "2")


# -- 400 naming none: bisection -------------------------------------------------------------------
@pytest.mark.parametrize(("n", "bad"), [(16, 11), (64, 0), (64, 63), (37, 20)])
def test_an_unnamed_invalid_record_is_isolated_by_bisection(
    producer: IdentifyProducer, redis_client: redis.Redis, queue_config: QueueConfig, keys: Keys, n: int, bad: int
) -> None:
    records = seq_records(n, 1)
    producer.identify_many(records)
    culprit = records[bad]["user_id"]

    def amplitude(batch: list[dict[str, Any]]) -> HttpResult:
        if any(r["user_id"] == culprit for r in batch):
            return answer(400, {"code": 400, "error": "Invalid request"})
        return OK

    sink = ScriptedSink(default=amplitude)
    drainer(redis_client, queue_config, sink, batch_size=n).drain(SHARD)
    # found within about 2 log2(n) extra requests, the last refused one holding it alone
    assert len(sink.requests) - 1 <= 2 * math.ceil(math.log2(n))
    refused = [r for r, status in zip(sink.requests, sink.answers, strict=True) if status == 400]
    assert refused[-1] == [records[bad]]
    # everything else delivered once, in order; the culprit dead-lettered
    assert sink.delivered() == records[:bad] + records[bad + 1 :]
    [dead] = dead_letters(queue_config)
    assert (dead["reason"], dead["record"]) == ("invalid", records[bad])
    assert dead["detail"] == "refused by a 400 that names no record; isolated by splitting its batch"
    assert redis_client.exists(keys.blocked) == 0
    settled(redis_client, keys)


# -- 413 ------------------------------------------------------------------------------------------
def test_a_request_too_large_is_split_and_the_request_size_lowered_for_every_worker(
    producer: IdentifyProducer, redis_client: redis.Redis, queue_config: QueueConfig, keys: Keys
) -> None:
    records = [record(f"user-{u:05d}", 0, pad="x" * 400) for u in range(8)]
    producer.identify_many(records)

    def amplitude(batch: list[dict[str, Any]]) -> HttpResult:
        return answer(413, {"code": 413, "error": "Payload too large"}) if len(batch) > 4 else OK

    sink = ScriptedSink(default=amplitude)
    before = redis_ms(redis_client)
    drainer(redis_client, queue_config, sink).drain(SHARD)
    after = redis_ms(redis_client)
    assert sink.answers[0] == 413 and set(sink.answers[1:]) == {200}
    # the size is halved, in meta for every worker, and no later request is larger
    lowered = len(sink.bodies[0]) // 2
    assert lowered > 1024
    meta = text_hash(redis_client, keys.meta)
    assert meta["max_request_bytes"] == str(lowered)
    assert before <= int(meta["max_request_bytes_ms"]) <= after
    assert all(len(body) <= lowered for body in sink.bodies[1:])
    assert sink.delivered() == records
    settled(redis_client, keys)
    # the next drainer starts with that size
    producer.identify_many(records)
    again = ScriptedSink()
    drainer(redis_client, queue_config, again).drain(SHARD)
    assert all(len(body) <= lowered for body in again.bodies) and len(again.requests) > 1


# -- 429 ------------------------------------------------------------------------------------------
def test_a_throttled_user_is_held_in_redis_while_the_others_are_delivered(
    producer: IdentifyProducer, redis_client: redis.Redis, queue_config: QueueConfig, keys: Keys
) -> None:
    records = seq_records(3, 2)  # a0 b0 c0 a1 b1 c1
    a, b, c = (records[i]["user_id"] for i in range(3))
    producer.identify_many(records)
    sink = ScriptedSink(answer(429, {"code": 429, "error": "Too many requests", "throttled_users": {a: 12}}))
    before = redis_ms(redis_client)
    drainer(redis_client, queue_config, sink).drain(SHARD)
    after = redis_ms(redis_client)
    # Then b and c are delivered at once, in order; a waits in Redis, held for the pause
    assert sink.requests[1] == [r for r in records if r["user_id"] != a]
    assert len(sink.requests) == 2
    k = keys.shard(SHARD)
    assert waiting_of(redis_client, keys, a) == [0, 1]
    [(user, until)] = scored(redis_client, k.parked)
    assert user == f"u:{a}" and before + HOUR_MS <= until <= after + HOUR_MS
    assert text_hash(redis_client, k.parked_why) == {f"u:{a}": "held"}
    assert redis_client.get(keys.shard(SHARD).total) == b"2"
    assert redis_client.exists(k.inflight, k.queue, k.lease) == 0
    # the shard is woken when a may go
    assert scored(redis_client, keys.wakeups) == [(str(SHARD), until)]

    # When a's next update comes while it is held: it waits behind, nothing is sent
    producer.identify(record(a, 2))
    drainer(redis_client, queue_config, sink).drain(SHARD)
    assert len(sink.requests) == 2
    assert waiting_of(redis_client, keys, a) == [0, 1, 2]
    # When the hold ends: a's updates go, oldest first, and nothing waits any more
    redis_client.zadd(k.parked, {f"u:{a}": 0})
    drainer(redis_client, queue_config, sink).drain(SHARD)
    assert updates(sink.requests[2]) == [(a, 0), (a, 1), (a, 2)]
    assert {r["user_id"] for r in sink.delivered()} == {a, b, c}
    settled(redis_client, keys)
    assert redis_client.hlen(k.parked_why) == 0


# -- 5xx and timeouts -----------------------------------------------------------------------------
@pytest.mark.parametrize("failure", [answer(503, {"code": 503, "error": "unavailable"}), SinkTimeout("scripted")])
def test_a_failed_request_keeps_the_batch_in_flight_until_its_retry_time(
    producer: IdentifyProducer, redis_client: redis.Redis, queue_config: QueueConfig, keys: Keys,
    failure: HttpResult | SinkTimeout,
) -> None:  # fmt: skip
    records = seq_records(2, 2)
    producer.identify_many(records)
    sink = ScriptedSink(failure)
    before = redis_ms(redis_client)
    drainer(redis_client, queue_config, sink).drain(SHARD)
    after = redis_ms(redis_client)
    k = keys.shard(SHARD)
    # Then the batch stays in flight, in order, each entry counting one attempt
    inflight = [entry.decode(x) for x in listed(redis_client, k.inflight)]
    assert [orjson.loads(x.data) for x in inflight] == records
    assert {x.attempts for x in inflight} == {1}
    # and the whole shard waits: between half and all of the first step (an hour), jittered
    state = text_hash(redis_client, k.state)
    retry_at = int(state["retry_at"])
    assert before + HOUR_MS // 2 <= retry_at <= after + HOUR_MS
    assert state["kept"] == "1" and "recoveries" not in state  # a clean release: no crash counted
    assert scored(redis_client, keys.wakeups) == [(str(SHARD), retry_at)]
    assert redis_client.get(keys.shard(SHARD).total) == b"4"
    stats = text_hash(redis_client, keys.shard(SHARD).stats)
    assert stats["requests"] == "1" and "delivered" not in stats
    # a drain before the retry time sends nothing
    drainer(redis_client, queue_config, sink).drain(SHARD)
    assert len(sink.requests) == 1
    # once it has come, the same batch goes again, and is delivered with no recovery counted
    redis_client.hdel(k.state, "retry_at")
    drainer(redis_client, queue_config, sink).drain(SHARD)
    assert sink.requests == [records, records]
    assert sink.delivered() == records
    settled(redis_client, keys)
    assert "recoveries" not in text_hash(redis_client, k.state)


# -- configuration error --------------------------------------------------------------------------
def test_a_configuration_error_blocks_sending_and_keeps_every_record_until_a_probe_passes(
    producer: IdentifyProducer, redis_client: redis.Redis, queue_config: QueueConfig, keys: Keys
) -> None:
    records = seq_records(3, 1)
    producer.identify_many(records)
    sink = ScriptedSink(answer(400, {"code": 400, "error": "Invalid API key: ***"}))
    before = redis_ms(redis_client)
    drainer(redis_client, queue_config, sink).drain(SHARD)
    after = redis_ms(redis_client)
    k = keys.shard(SHARD)
    # Then sending is blocked for everyone, with the reason, and nothing is dead-lettered
    blocked = text_hash(redis_client, keys.blocked)
    assert (blocked["reason"], blocked["status"], blocked["probes"]) == ("HTTP 400 Invalid API key: ***", "400", "1")
    next_probe = int(blocked["next_probe_ms"])
    assert before + HOUR_MS // 2 <= next_probe <= after + HOUR_MS
    assert inflight(redis_client, keys) == updates(records)
    assert dead_letters(queue_config) == []
    assert redis_client.get(keys.shard(SHARD).total) == b"3"
    # the shard is looked at again at the next probe; it is no retry of its own
    assert "retry_at" not in text_hash(redis_client, k.state)
    [(_, due)] = scored(redis_client, keys.wakeups)
    assert before + HOUR_MS // 2 <= due <= after + HOUR_MS
    # Before the probe is due, no drain sends anything, even with new records
    producer.identify(record("user-new01", 0))
    drainer(redis_client, queue_config, sink).drain(SHARD)
    assert len(sink.requests) == 1
    # When it is due (the key was fixed), the probe's 2xx lifts the block and everything goes
    redis_client.hset(keys.blocked, "next_probe_ms", 0)
    drainer(redis_client, queue_config, sink).drain(SHARD)
    assert redis_client.exists(keys.blocked) == 0
    assert updates(sink.delivered()) == [*updates(records), ("user-new01", 0)]
    settled(redis_client, keys)


# -- the hourly budget ----------------------------------------------------------------------------
def test_updates_past_a_user_s_budget_wait_in_order_and_the_others_go(
    producer: IdentifyProducer, redis_client: redis.Redis, queue_config: QueueConfig, keys: Keys
) -> None:
    a, b = "user-aaaa", "user-bbbb"
    records = [record(a, 0), record(b, 0), record(a, 1), record(a, 2), record(b, 1), record(a, 3), record(a, 4)]
    producer.identify_many(records)
    sink = ScriptedSink()
    before = redis_ms(redis_client)
    drainer(redis_client, queue_config, sink, user_updates_per_hour=2).drain(SHARD)
    after = redis_ms(redis_client)
    # Then a's first two and b's two are sent, in order, in one request
    assert [updates(r) for r in sink.requests] == [[(a, 0), (b, 0), (a, 1), (b, 1)]]
    # and a's other three wait, in order, deferred until the budget allows one more
    k = keys.shard(SHARD)
    assert waiting_of(redis_client, keys, a) == [2, 3, 4]
    [(user, until)] = scored(redis_client, k.parked)
    assert user == f"u:{a}" and before + HOUR_MS <= until <= after + HOUR_MS + HOUR_MS // 6
    assert text_hash(redis_client, k.parked_why) == {f"u:{a}": "deferred"}
    assert redis_client.get(keys.shard(SHARD).total) == b"3"
    # what was sent is counted in the current budget slot
    slot_ms = HOUR_MS // 6
    assert text_hash(redis_client, k.budget(before // slot_ms)) == {f"u:{a}": "2", f"u:{b}": "2", "#max": "2"}
    # a drain meanwhile sends nothing of a
    drainer(redis_client, queue_config, sink, user_updates_per_hour=2).drain(SHARD)
    assert len(sink.requests) == 1


def test_a_claim_answered_in_a_later_budget_slot_counts_what_it_sent_in_that_slot(
    producer: IdentifyProducer, redis_client: redis.Redis, queue_config: QueueConfig, keys: Keys
) -> None:
    """Amplitude counts a request when it arrives: counted in the slot it was reserved in, a send
    that arrived a slot later would stop counting less than a window after it arrived."""
    window_s, slot_ms = 0.6, 100
    records = seq_records(3, 2)  # a0 b0 c0 a1 b1 c1
    a = records[0]["user_id"]
    producer.identify_many(records)
    before = redis_ms(redis_client) // slot_ms

    def late(_: list[dict[str, Any]]) -> HttpResult:
        # the answer comes two slots after the drain began, a hold of a in it
        wait_until(lambda: redis_ms(redis_client) // slot_ms >= before + 2, 10, "two budget slots")
        return answer(429, {"code": 429, "error": "Too many requests", "throttled_users": {a: 12}})

    sink = ScriptedSink(late)
    drainer(redis_client, queue_config, sink, budget_window_s=window_s).drain(SHARD)
    after = redis_ms(redis_client) // slot_ms
    # Then what was sent (b's and c's, the second request) is counted once, in a slot the claim
    # ended in; a's reservation was given back, and nothing is left where the claim reserved
    assert len(sink.requests) == 2
    k = keys.shard(SHARD)
    slots = {int(key.rsplit(b":", 1)[1]): text_hash(redis_client, key.decode())
             for key in redis_client.scan_iter(k.budget(0)[:-1] + "*")}  # fmt: skip
    [(slot, counted)] = slots.items()
    assert before + 2 <= slot <= after
    b, c = records[1]["user_id"], records[2]["user_id"]
    assert counted == {f"u:{b}": "2", f"u:{c}": "2", "#max": "2"}
    assert 0 < redis_client.pttl(k.budget(slot)) <= 8 * slot_ms


# -- merging --------------------------------------------------------------------------------------
def test_a_run_of_a_user_s_updates_is_sent_as_one_identification(
    producer: IdentifyProducer, redis_client: redis.Redis, queue_config: QueueConfig, keys: Keys
) -> None:
    a, b = "user-aaaa", "user-bbbb"
    producer.identify_many([record(a, 0), record(b, 0), record(a, 1), record(a, 2), record(a, 3)])
    sink = ScriptedSink()
    before = redis_ms(redis_client)
    drainer(redis_client, queue_config, sink, coalesce=True).drain(SHARD)
    merged = {"user_id": a, "user_properties": {"$set": {"n": 3, "r0": 1, "r1": 1, "r2": 1, "r3": 1}}}
    assert sink.requests == [[merged, record(b, 0)]]
    settled(redis_client, keys)
    stats = text_hash(redis_client, keys.shard(SHARD).stats)
    assert (stats["delivered"], stats["requests"]) == ("5", "1")
    # the budget counts what Amplitude counts: one identification for a
    slot = keys.shard(SHARD).budget(before // (HOUR_MS // 6))
    assert text_hash(redis_client, slot) == {f"u:{a}": "1", f"u:{b}": "1", "#max": "1"}


def test_a_merged_identification_named_invalid_is_sent_again_as_its_updates(
    producer: IdentifyProducer, redis_client: redis.Redis, queue_config: QueueConfig, keys: Keys
) -> None:
    a, b = "user-aaaa", "user-bbbb"
    records = [record(a, 0), record(a, 1), record(b, 0)]
    producer.identify_many(records)
    refusal = answer(400, {"code": 400, "events_with_invalid_fields": {"user_properties": [0]}})
    sink = ScriptedSink(refusal)
    drainer(redis_client, queue_config, sink, coalesce=True).drain(SHARD)
    assert [len(r) for r in sink.requests] == [2, 3]
    assert sink.requests[1] == records  # each update on its own, in order
    assert dead_letters(queue_config) == []
    settled(redis_client, keys)
