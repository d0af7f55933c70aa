"""The wake script (producers/lua/wake.lua) against a real redis-server: when shards next need a
drain, in the global wake-ups, and the kick that wakes a dispatcher: mode LT (an enqueue, a
release, a replay: never postpone a wake-up due earlier), mode NX (the sweep: only a shard with
none), and 'linger' (now plus the workers' linger, from meta)."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from producers.contract.keys import Keys
from producers.contract.scripts import Script
from tests.support import listed, redis_ms, scored, snapshot

SHARD = "5"


def wake(client: redis.Redis, keys: Keys, mode: str, *pairs: Any) -> int:
    return int(Script(client, "producers", "wake")([keys.meta, keys.wakeups, keys.kick], [mode, *pairs]))


# mode, the shard's wake-up before (ms after now, None: none), what is asked (ms after now, or
# 'linger'), the workers' linger in meta (None: not recorded), the wake-up after ('asked', or
# 'before': unchanged), and whether that is a change (counted, and a dispatcher kicked)
CASES: list[tuple[str, int | None, int | str, int | None, str, bool]] = [
    ("LT", None, 1000, None, "asked", True),  # a shard with none gets one
    ("LT", 5000, 1000, None, "asked", True),  # an earlier one moves it forward
    ("LT", 1000, 5000, None, "before", False),  # never postponed
    ("LT", 1000, 1000, None, "before", False),  # the same time: no change, no kick
    ("LT", -500, 0, None, "before", False),  # due already, earlier than asked
    ("NX", None, 1000, None, "asked", True),
    ("NX", 5000, 1000, None, "before", False),  # NX: a shard that has one keeps it, earlier or not
    ("NX", 1000, 5000, None, "before", False),
    ("LT", None, "linger", 500, "asked", True),  # now plus the workers' linger
    ("LT", None, "linger", None, "asked", True),  # no linger recorded: now
    ("LT", 60_000, "linger", 500, "asked", True),
    ("LT", 100, "linger", 500, "before", False),
    ("NX", 60_000, "linger", 500, "before", False),
]


@pytest.mark.parametrize(("mode", "before", "asked", "linger", "after", "changed"), CASES)
def test_a_wake_up_is_added_or_moved_as_its_mode_says(
    redis_client: redis.Redis, keys: Keys, namespace: str,
    mode: str, before: int | None, asked: int | str, linger: int | None, after: str, changed: bool,
) -> None:  # fmt: skip
    now = redis_ms(redis_client)
    if linger is not None:
        redis_client.hset(keys.meta, mapping={"shards": 8, "layout": "2", "linger_ms": linger})
    if before is not None:
        redis_client.zadd(keys.wakeups, {SHARD: now + before})
    meta = snapshot(redis_client, namespace).get(keys.meta.encode())
    reply = wake(redis_client, keys, mode, SHARD, asked if asked == "linger" else now + int(asked))
    end = redis_ms(redis_client)
    assert reply == (1 if changed else 0)
    [(shard, due)] = scored(redis_client, keys.wakeups)
    assert shard == SHARD
    if after == "before":
        assert before is not None and due == now + before
    elif asked == "linger":
        assert now + (linger or 0) <= due <= end + (linger or 0)
    else:
        assert due == now + int(asked)
    # a change kicks a dispatcher; none leaves the kick list alone; meta is only read
    assert listed(redis_client, keys.kick) == ([b"1"] if changed else [])
    assert snapshot(redis_client, namespace).get(keys.meta.encode()) == meta


def test_one_call_wakes_several_shards_counts_the_changes_and_kicks_once(redis_client: redis.Redis, keys: Keys) -> None:
    now = redis_ms(redis_client)
    redis_client.zadd(keys.wakeups, {"1": now + 5000, "2": now + 100})
    redis_client.rpush(keys.kick, "1")  # a kick nobody took yet: the list holds one element at most
    assert wake(redis_client, keys, "LT", 0, now + 1000, 1, now + 1000, 2, now + 1000) == 2
    assert scored(redis_client, keys.wakeups) == [("2", now + 100), ("0", now + 1000), ("1", now + 1000)]
    assert listed(redis_client, keys.kick) == [b"1"]
    # the sweep's NX adds only the shard that has none
    assert wake(redis_client, keys, "NX", 0, 1, 3, now + 7) == 1
    assert scored(redis_client, keys.wakeups) == [("3", now + 7), ("2", now + 100), ("0", now + 1000),
                                                  ("1", now + 1000)]  # fmt: skip
    assert listed(redis_client, keys.kick) == [b"1"]


def test_a_wake_for_no_shard_changes_nothing(redis_client: redis.Redis, keys: Keys, namespace: str) -> None:
    before = snapshot(redis_client, namespace)
    assert wake(redis_client, keys, "LT") == 0
    assert snapshot(redis_client, namespace) == before
