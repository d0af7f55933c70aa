"""A drain script's answer lost with its connection, after the script ran (a network path or a
proxy dropping the connection at that moment; here a proxy on loopback that closes it).

redis-py sends a command whose answer did not come again by default, and a settle run twice trims
its in-flight list twice: records claimed and not yet sent were lost if the drain then stopped
before sending them.  The drain's client sends nothing again (``connect(..., resend=False)``); the
drain treats the lost answer as a Redis error, and what it claimed stays in flight."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import pytest
import redis

from producers.contract.connection import connect
from producers.contract.keys import Keys
from producers.contract.scripts import Script, source
from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from tests.drain.test_drainer import SHARD, settings, settled
from tests.support import AnswerDroppingProxy, ScriptedSink, answer, dead_letters, seq_records, text_hash
from worker.drain.budget import BudgetStore
from worker.drain.limiter import RateLimiter
from worker.drain.loop import Drainer
from worker.drain.sink import HttpSink
from worker.drain.store import ShardStore

pytestmark = pytest.mark.shards(1)


def drainer(client: redis.Redis, config: QueueConfig, sink: ScriptedSink, stop: Callable[[], bool]) -> Drainer:
    s = settings(config)
    store = ShardStore(client, Keys(config.namespace), s.lease_ttl_s)
    limiter = RateLimiter(client, Keys(config.namespace), requests_per_s=None, records_per_s=None, max_batch=10)
    budget = BudgetStore(client, s.user_updates_per_hour, s.budget_window_s)
    return Drainer(s, store, cast(HttpSink, sink), limiter=limiter, budget=budget, should_stop=stop)


@pytest.mark.parametrize("resend", [False, True], ids=["the drain's client", "redis-py's default"])
def test_a_settle_whose_answer_is_lost_loses_no_record(
    producer: IdentifyProducer, redis_client: redis.Redis, queue_config: QueueConfig, keys: Keys,
    proxy: AnswerDroppingProxy, resend: bool,
) -> None:  # fmt: skip
    # Given 5 records of one shard, the first refused by Amplitude: the settle that dead-letters it
    # takes it off the head of the in-flight list, and the four others wait there for the next
    # request; that settle's answer is lost after it ran, and the worker is asked to stop just then
    # (a deploy's SIGTERM)
    records = seq_records(5, 1)
    producer.identify_many(records)
    client = connect(f"redis://127.0.0.1:{proxy.port}/0", resend=resend)
    settle = Script(None, "worker", "settle")
    assert redis_client.script_load(source("worker", "settle")) == settle.sha  # so the first call runs it
    proxy.drop_answer_to(settle.sha.encode())
    refusal = answer(400, {"code": 400, "error": "Request contains invalid events",
                           "events_with_invalid_fields": {"user_id": [0]}})  # fmt: skip
    sink = ScriptedSink(refusal)
    drainer(client, queue_config, sink, stop=lambda: proxy.dropped > 0).drain(SHARD)
    # When the next worker drains the shard until nothing is left, each wait for a retry cut short
    k = keys.shard(SHARD)
    for _ in range(5):
        redis_client.hdel(k.state, "retry_at")
        if not redis_client.exists(k.queue, k.inflight):
            break
        drainer(client, queue_config, sink, stop=lambda: False).drain(SHARD)
    client.close()
    assert proxy.dropped == 1
    if resend:
        # (redis-py's default, for the record: the settle ran twice, dead-lettered the first record
        # twice, and took the second off the in-flight list before it was sent: lost)
        assert sink.delivered() == records[2:] and len(dead_letters(queue_config)) == 2
        return
    # Then the first record is a dead letter, once, and every other was delivered, once, in order
    assert [d["record"] for d in dead_letters(queue_config)] == records[:1]
    assert sink.delivered() == records[1:]
    settled(redis_client, keys)
    stats = text_hash(redis_client, k.stats)
    assert (stats["delivered"], stats["dead_lettered"]) == ("4", "1")


def test_a_probe_whose_unblock_answer_is_lost_counts_and_settles_what_it_sent(
    producer: IdentifyProducer, redis_client: redis.Redis, queue_config: QueueConfig, keys: Keys,
    proxy: AnswerDroppingProxy,
) -> None:  # fmt: skip
    # Given sending blocked by an invalid key, the probe due, and the answer to the probe's
    # unblock (sent between its request's 2xx and the settlement) lost after it ran
    records = seq_records(3, 1)
    producer.identify_many(records)
    client = connect(f"redis://127.0.0.1:{proxy.port}/0", resend=False)
    ShardStore(client, Keys(queue_config.namespace), 60).block(
        "HTTP 400 Invalid API key: ***", "", 400, base_s=1, cap_s=8, jitter=0.5
    )  # fmt: skip
    redis_client.hset(keys.blocked, "next_probe_ms", 0)
    assert redis_client.script_load(source("worker", "unblock")) == Script(None, "worker", "unblock").sha
    proxy.drop_answer_to(Script(None, "worker", "unblock").sha.encode())
    sink = ScriptedSink()
    drainer(client, queue_config, sink, stop=lambda: False).drain(SHARD)
    client.close()
    # Then sending resumed, what was sent is settled, once, and counted against the budget
    assert proxy.dropped == 1 and redis_client.exists(keys.blocked) == 0
    assert sink.delivered() == records
    settled(redis_client, keys)
    counted = {u: n for key in redis_client.scan_iter(keys.shard(SHARD).budget(0)[:-1] + "*")
               for u, n in text_hash(redis_client, key.decode()).items() if u != "#max"}  # fmt: skip
    assert counted == {f"u:{r['user_id']}": "1" for r in records}
