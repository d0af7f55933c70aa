"""The per-minute counts of the console's chart: a ring of 64 minutes per shard, written by the
enqueue and settle scripts (iq.count_minute in the prelude), read back by status.history."""

from __future__ import annotations

import redis

from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from tests.support import seq_records
from worker.status import history


def test_enqueued_records_are_counted_in_the_current_minute(
    producer: IdentifyProducer, queue_config: QueueConfig, redis_client: redis.Redis
) -> None:
    producer.identify_many(seq_records(30, 2))
    rows = history(redis_client, Keys(queue_config.namespace), queue_config.shards)
    assert len(rows) == 60
    assert rows[-1][2] == 60 and rows[-1][1] == 0
    assert sum(e for _, _, e in rows[:-1]) == 0
    assert [m for m, _, _ in rows] == list(range(rows[0][0], rows[0][0] + 60))


def test_a_slot_of_the_ring_is_reset_when_its_minute_comes_round_again(
    producer: IdentifyProducer, queue_config: QueueConfig, redis_client: redis.Redis
) -> None:
    # Given every shard's slot for this minute holding the count of the minute 64 minutes ago
    keys = Keys(queue_config.namespace)
    now_minute = int(redis_client.time()[0]) // 60
    slot = now_minute % 64
    for s in range(queue_config.shards):
        redis_client.hset(keys.shard(s).minutes, mapping={f"m{slot}": now_minute - 64, f"d{slot}": 7, f"e{slot}": 9})
    # When records are enqueued now
    producer.identify_many(seq_records(10, 1))
    # Then the slot counts this minute only, and the old minute is gone from the history
    rows = history(redis_client, keys, queue_config.shards, minutes=63)
    assert rows[-1][1:] == (0, 10)
    assert all(row[1:] == (0, 0) for row in rows[:-1])
    fields = {k.decode(): int(v) for s in range(queue_config.shards)
              for k, v in redis_client.hgetall(keys.shard(s).minutes).items()}  # fmt: skip
    assert max(int(k[1:]) for k in fields) < 64
