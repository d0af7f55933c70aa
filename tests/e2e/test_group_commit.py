"""Group commit of the blocking producer: identify() from many threads against a real Redis.

Each call returns only once Redis holds its record, a failure reaches exactly the calls it
concerns, and the calls of one thread keep their order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import redis

from producers.contract import entry
from producers.contract.errors import InvalidRecord, QueueFull
from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from tests.support import listed

THREADS = 32


def in_redis(client: redis.Redis, keys: Keys, shards: int, user: str) -> list[int]:
    """The ``seq`` of every queued record of ``user``, in queue order."""
    queue = keys.shard(entry.shard_of(f"u:{user}", shards)).queue
    out = []
    for raw in listed(client, queue):
        record = entry.decode(raw)
        if record.user_key == f"u:{user}":
            out.append(int(record.data.split(b'"seq":')[1].split(b"}")[0]))
    return out


def run_threads(count: int, body: Callable[[int], None]) -> None:
    """Run ``body(i)`` in ``count`` threads released together; re-raise what any of them raised."""
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        start.wait(10)
        try:
            body(i)
        except BaseException as exc:  # the test's own assertion failures, reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a call never returned"
    if errors:
        raise errors[0]


def test_each_call_returns_once_redis_holds_its_record_and_calls_are_grouped(
    producer: IdentifyProducer, redis_client: redis.Redis, keys: Keys, queue_config: QueueConfig
) -> None:
    # Given 32 threads sharing one producer, each enqueueing 10 updates of its own user
    def body(i: int) -> None:
        user = f"thread-{i:03d}"
        for seq in range(10):
            producer.identify(user_id=user, user_properties={"$set": {"seq": seq}})
            # Then as each call returns, Redis holds its record, after the thread's earlier ones
            assert in_redis(redis_client, keys, queue_config.shards, user) == list(range(seq + 1))

    run_threads(THREADS, body)
    # and the 320 calls went in fewer enqueues than calls
    assert producer.groups < THREADS * 10
    assert producer.queued() == THREADS * 10


def test_an_invalid_record_fails_only_its_own_call(
    producer: IdentifyProducer, redis_client: redis.Redis, keys: Keys, queue_config: QueueConfig
) -> None:
    # Given concurrent calls of which every fourth has a user id too short
    outcome: dict[int, str] = {}

    def body(i: int) -> None:
        user = f"user-{i:05d}" if i % 4 else "x"
        try:
            producer.identify(user_id=user, user_properties={"$set": {"seq": i}})
            outcome[i] = "ok"
        except InvalidRecord as exc:
            outcome[i] = exc.rule

    run_threads(THREADS, body)
    # Then exactly those calls failed, and every other record is in Redis
    assert {i for i, o in outcome.items() if o != "ok"} == {i for i in range(THREADS) if i % 4 == 0}
    for i in range(THREADS):
        if i % 4:
            assert in_redis(redis_client, keys, queue_config.shards, f"user-{i:05d}") == [i]
    assert producer.queued() == THREADS - THREADS // 4


def test_queue_full_fails_the_calls_of_the_refused_group_and_no_other(
    queue_config: QueueConfig, redis_client: redis.Redis, keys: Keys
) -> None:
    # Given a cap of 20 queued records and 32 threads calling at once, 3 calls each
    outcome: dict[tuple[int, int], Any] = {}
    with IdentifyProducer(replace(queue_config, max_queued=20)) as producer:

        def body(i: int) -> None:
            for seq in range(3):
                try:
                    producer.identify(user_id=f"user-{i:05d}", user_properties={"$set": {"seq": seq}})
                    outcome[i, seq] = "ok"
                except QueueFull as exc:
                    outcome[i, seq] = exc

        run_threads(THREADS, body)
        queued = producer.queued()
    # Then the cap held, every call that returned has its record in Redis and every refused one has not
    assert queued <= 20
    for (i, seq), result in outcome.items():
        held = seq in in_redis(redis_client, keys, queue_config.shards, f"user-{i:05d}")
        assert held == (result == "ok"), f"call {i}/{seq}: {result!r}, in Redis: {held}"
        if result != "ok":
            assert result.cap == 20 and result.enqueued == 0
    assert sum(1 for r in outcome.values() if r == "ok") == queued


def test_without_grouping_each_call_is_its_own_enqueue(queue_config: QueueConfig) -> None:
    with IdentifyProducer(replace(queue_config, group_commit=False)) as producer:
        run_threads(8, lambda i: producer.identify(user_id=f"user-{i:05d}", user_properties={"$set": {"seq": 0}}))
        assert producer.groups == 0 and producer.queued() == 8


@pytest.mark.shards(2)
def test_a_queue_laid_out_otherwise_fails_every_call_of_the_group(
    queue_config: QueueConfig, redis_client: redis.Redis, keys: Keys
) -> None:
    redis_client.hset(keys.meta, mapping={"shards": "16", "layout": "2"})
    failures: list[str] = []
    with IdentifyProducer(queue_config) as producer:

        def body(i: int) -> None:
            try:
                producer.identify(user_id=f"user-{i:05d}", user_properties={"$set": {"seq": 0}})
            except Exception as exc:  # collected: every call must fail with the mismatch
                failures.append(str(exc))

        run_threads(8, body)
    assert len(failures) == 8 and all("IDENTIFY_SHARDS is 2" in f for f in failures)


def test_a_redis_that_lost_its_scripts_still_takes_every_call(
    producer: IdentifyProducer, redis_client: redis.Redis, keys: Keys, queue_config: QueueConfig
) -> None:
    # scripts go as EVALSHA alone: after a restart or a failover Redis answers NOSCRIPT, and the
    # calls are run again once the scripts are loaded
    producer.identify(user_id="user-00001", user_properties={"$set": {"seq": 0}})
    redis_client.script_flush()
    run_threads(8, lambda i: producer.identify(user_id=f"user-{i:05d}", user_properties={"$set": {"seq": 1}}))
    assert producer.queued() == 9
    assert in_redis(redis_client, keys, queue_config.shards, "user-00001") == [0, 1]
