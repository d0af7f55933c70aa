"""The dispatcher's scripts (worker/lua/dispatch_pop_due.lua, dispatch_sweep.lua) against a real
redis-server: which wake-ups become drain tasks, which are put back or dropped, and which shards a
sweep wakes."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from producers.contract.keys import Keys
from producers.contract.scripts import Script
from tests.support import queue_entry, redis_ms, scored, text_hash
from worker.dispatcher import MAX_WAIT_S, Dispatcher

SHARDS = 4
GRACE_MS = 10_000


def pop_due(client: redis.Redis, keys: Keys, limit: int = 500) -> tuple[list[int], int, int]:
    """(due shards, next due ms or -1, now) from one call of the script."""
    script_keys = [keys.wakeups, keys.blocked]
    for s in range(SHARDS):
        script_keys += [keys.shard(s).lease, keys.shard(s).state]
    reply: list[Any] = Script(client, "worker", "dispatch_pop_due")(script_keys, [limit, GRACE_MS])
    marker = reply.index(-1)
    assert len(reply) == marker + 3
    return [int(s) for s in reply[:marker]], int(reply[marker + 1]), int(reply[marker + 2])


def test_due_shards_are_popped_and_marked_dispatched(redis_client: redis.Redis, keys: Keys) -> None:
    now = redis_ms(redis_client)
    redis_client.zadd(keys.wakeups, {"0": now - 10, "2": now - 5, "3": now + 60_000})
    due, next_due, at = pop_due(redis_client, keys)
    assert due == [0, 2]
    assert (next_due, now <= at) == (now + 60_000, True)
    assert scored(redis_client, keys.wakeups) == [("3", now + 60_000)]
    for s in (0, 2):
        assert text_hash(redis_client, keys.shard(s).state) == {"dispatched_at": str(at)}


def test_nothing_due_answers_no_next_time(redis_client: redis.Redis, keys: Keys) -> None:
    before = redis_ms(redis_client)
    due, next_due, at = pop_due(redis_client, keys)
    assert (due, next_due) == ([], -1) and at >= before


def test_a_shard_with_an_owner_or_a_task_on_its_way_gets_no_second_task(redis_client: redis.Redis, keys: Keys) -> None:
    now = redis_ms(redis_client)
    redis_client.set(keys.shard(0).lease, "t")  # being drained: its drainer sees the new work
    redis_client.hset(keys.shard(1).state, "dispatched_at", now - 100)  # task sent, within the grace
    redis_client.hset(keys.shard(2).state, "dispatched_at", now - GRACE_MS - 1)  # lost: sent again
    redis_client.zadd(keys.wakeups, {"0": now, "1": now, "2": now, "17": now})  # 17: no such shard
    due, _, at = pop_due(redis_client, keys)
    assert due == [2]
    assert redis_client.zcard(keys.wakeups) == 0  # all popped; the dropped ones are not put back
    assert text_hash(redis_client, keys.shard(1).state) == {"dispatched_at": str(now - 100)}
    assert text_hash(redis_client, keys.shard(2).state) == {"dispatched_at": str(at)}


def test_a_shard_waiting_to_retry_or_a_blocked_sender_is_put_back_at_its_time(
    redis_client: redis.Redis, keys: Keys
) -> None:
    now = redis_ms(redis_client)
    redis_client.hset(keys.shard(1).state, "retry_at", now + 30_000)
    redis_client.zadd(keys.wakeups, {"1": now - 1, "2": now - 1})
    due, next_due, _ = pop_due(redis_client, keys)
    assert due == [2]
    assert scored(redis_client, keys.wakeups) == [("1", now + 30_000)]
    assert next_due == now + 30_000
    # while sending is blocked, every shard is put back at the next probe
    redis_client.hset(keys.blocked, "next_probe_ms", now + 5000)
    redis_client.zadd(keys.wakeups, {"3": now - 1})
    redis_client.hdel(keys.shard(3).state, "dispatched_at")
    due, next_due, _ = pop_due(redis_client, keys)
    assert (due, next_due) == ([], now + 5000)
    assert scored(redis_client, keys.wakeups) == [("3", now + 5000), ("1", now + 30_000)]


def test_at_most_the_asked_number_is_popped_earliest_first(redis_client: redis.Redis, keys: Keys) -> None:
    now = redis_ms(redis_client)
    redis_client.zadd(keys.wakeups, {"0": now - 1, "1": now - 3, "2": now - 2})
    due, next_due, _ = pop_due(redis_client, keys, limit=2)
    assert (due, next_due) == ([1, 2], now - 1)
    assert scored(redis_client, keys.wakeups) == [("0", now - 1)]


def test_the_dispatcher_sends_one_task_per_due_shard(redis_client: redis.Redis, keys: Keys) -> None:
    sent: list[int] = []
    dispatcher = Dispatcher(redis_client, keys, SHARDS, sent.append, sweep_interval_s=60, task_grace_s=10)
    now = redis_ms(redis_client)
    redis_client.zadd(keys.wakeups, {"3": now - 1, "1": now - 2})
    assert dispatcher.dispatch_due() == MAX_WAIT_S
    assert sent == [1, 3]
    assert dispatcher.dispatch_due() == MAX_WAIT_S and sent == [1, 3]


# -- sweep ----------------------------------------------------------------------------------------
def sweep(client: redis.Redis, keys: Keys) -> int:
    script_keys = [keys.wakeups]
    for s in range(SHARDS):
        k = keys.shard(s)
        script_keys += [k.lease, k.queue, k.inflight, k.parked]
    return int(Script(client, "worker", "dispatch_sweep")(script_keys, list(range(SHARDS))))


def test_a_sweep_wakes_each_shard_with_work_and_neither_a_wake_up_nor_an_owner(
    redis_client: redis.Redis, keys: Keys
) -> None:
    now = redis_ms(redis_client)
    redis_client.rpush(keys.shard(0).queue, queue_entry("u:user-1", 1))
    redis_client.rpush(keys.shard(1).inflight, queue_entry("u:user-2", 1))  # a killed drainer's
    redis_client.zadd(keys.shard(2).parked, {"u:user-3": now + 90_000, "u:user-4": now + 80_000})
    # shard 3 has nothing
    assert sweep(redis_client, keys) == 3
    after = redis_ms(redis_client)
    woken = dict(scored(redis_client, keys.wakeups))
    assert set(woken) == {"0", "1", "2"}
    assert now <= woken["0"] <= after and now <= woken["1"] <= after
    assert woken["2"] == now + 80_000  # when its first waiting user may go


@pytest.mark.parametrize("why", ["owned", "woken"])
def test_a_sweep_leaves_a_shard_with_an_owner_or_a_wake_up_alone(
    redis_client: redis.Redis, keys: Keys, why: str
) -> None:
    redis_client.rpush(keys.shard(0).queue, queue_entry("u:user-1", 1))
    if why == "owned":
        redis_client.set(keys.shard(0).lease, "t")
    else:
        redis_client.zadd(keys.wakeups, {"0": 42})
    assert sweep(redis_client, keys) == 0
    assert scored(redis_client, keys.wakeups) == ([] if why == "owned" else [("0", 42)])


def test_the_dispatcher_sweeps_every_shard(redis_client: redis.Redis, keys: Keys) -> None:
    redis_client.rpush(keys.shard(3).queue, queue_entry("u:user-1", 1))
    dispatcher = Dispatcher(redis_client, keys, SHARDS, lambda s: None, sweep_interval_s=60, task_grace_s=10)
    assert dispatcher.sweep() == 1
    assert [s for s, _ in scored(redis_client, keys.wakeups)] == ["3"]
