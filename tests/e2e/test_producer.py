"""The producer against a real Redis: validation before Redis, the cap, the layout check."""

from __future__ import annotations

import threading

import pytest
import redis

from producers.contract.entry import decode, shard_of
from producers.contract.errors import InvalidRecord, QueueFull, QueueMismatch
from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from tests.support import seq_records


def queued_entries(client: redis.Redis, config: QueueConfig) -> list[bytes]:
    keys = Keys(config.namespace)
    return [e for s in range(config.shards) for e in client.lrange(keys.shard(s).queue, 0, -1)]


def test_identify_returns_after_redis_has_the_record(producer: IdentifyProducer, redis_client: redis.Redis,
                                                     queue_config: QueueConfig) -> None:  # fmt: skip
    producer.identify(user_id="user-00001", user_properties={"$set": {"plan": "pro"}}, platform="iOS")
    [raw] = queued_entries(redis_client, queue_config)
    e = decode(raw)
    assert e.user_key == "u:user-00001"
    assert e.data == b'{"user_id":"user-00001","user_properties":{"$set":{"plan":"pro"}},"platform":"iOS"}'
    assert producer.queued() == 1
    keys = Keys(queue_config.namespace)
    assert redis_client.zscore(keys.wakeups, shard_of("u:user-00001", queue_config.shards)) is not None


def test_each_user_lands_on_one_shard_in_order(producer: IdentifyProducer, redis_client: redis.Redis,
                                               queue_config: QueueConfig) -> None:  # fmt: skip
    producer.identify_many(seq_records(50, 4))
    keys = Keys(queue_config.namespace)
    for s in range(queue_config.shards):
        per_user: dict[str, list[bytes]] = {}
        for raw in redis_client.lrange(keys.shard(s).queue, 0, -1):
            e = decode(raw)
            assert shard_of(e.user_key, queue_config.shards) == s
            per_user.setdefault(e.user_key, []).append(e.data)
        for datas in per_user.values():
            assert [d.count(b'"seq":') for d in datas] == [1] * 4
            assert datas == sorted(datas)  # seq 0..3, in the order enqueued


def test_invalid_records_never_reach_redis(producer: IdentifyProducer, redis_client: redis.Redis,
                                           queue_config: QueueConfig) -> None:  # fmt: skip
    with pytest.raises(InvalidRecord) as caught:
        producer.identify(user_id="usr")
    assert caught.value.field == "user_id"
    assert redis_client.keys(f"{queue_config.namespace}:*{{s*}}:queue") == []
    assert producer.queued() == 0


def test_identify_many_raises_after_enqueuing_what_came_before(producer: IdentifyProducer) -> None:
    records = [*seq_records(5, 1), {"user_id": "bad"}, *seq_records(5, 1, prefix="later")]
    with pytest.raises(InvalidRecord) as caught:
        producer.identify_many(records, chunk_size=2)
    assert caught.value.index == 5
    assert producer.queued() == 5


def test_identify_many_can_collect_rejections_and_go_on(producer: IdentifyProducer) -> None:
    records = [{"user_id": "user-00001"}, {"user_id": "bad"}, {"device_id": 7}, {"user_id": "user-00002"}]
    report = producer.identify_many(records, errors="collect")
    assert report.enqueued == 2
    assert [(r.index, r.field) for r in report.rejected] == [(1, "user_id"), (2, "device_id")]


def test_the_cap_refuses_a_whole_chunk_and_says_so(queue_config: QueueConfig) -> None:
    config = QueueConfig(redis_url=queue_config.redis_url, namespace=queue_config.namespace, shards=8, max_queued=10)
    with IdentifyProducer(config) as producer:
        producer.identify_many(seq_records(8, 1))
        with pytest.raises(QueueFull) as caught:
            producer.identify_many(seq_records(3, 1, prefix="more"))
        assert (caught.value.queued, caught.value.cap, caught.value.enqueued) == (8, 10, 0)
        assert producer.queued() == 8
        producer.identify_many(seq_records(2, 1, prefix="fits"))
        assert producer.queued() == 10


def test_the_cap_holds_under_concurrent_producers(queue_config: QueueConfig) -> None:
    cap = 1000
    config = QueueConfig(redis_url=queue_config.redis_url, namespace=queue_config.namespace, shards=8, max_queued=cap)
    accepted = []

    def produce(n: int) -> None:
        count = 0
        with IdentifyProducer(config) as producer:
            for i in range(200):
                try:
                    producer.identify_many(seq_records(7, 1, prefix=f"p{n}-{i}"))
                    count += 7
                except QueueFull:
                    pass
        accepted.append(count)

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with IdentifyProducer(config) as producer:
        assert producer.queued() == sum(accepted)
    assert cap - 7 < sum(accepted) <= cap


def test_a_producer_with_another_shard_count_is_refused(queue_config: QueueConfig) -> None:
    with IdentifyProducer(queue_config) as producer:
        producer.identify(user_id="user-00001")
    other = QueueConfig(redis_url=queue_config.redis_url, namespace=queue_config.namespace, shards=32)
    with (
        IdentifyProducer(other) as producer,
        pytest.raises(QueueMismatch, match=r"IDENTIFY_SHARDS is 32, but the queue in Redis was created with 8 shards"),
    ):
        producer.identify(user_id="user-00002")
