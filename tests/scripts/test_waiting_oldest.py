"""The waiting_oldest script (worker/lua/waiting_oldest.lua, with lib/waiting.lua) against a real
redis-server: for each user of a claim, the seq of its oldest waiting update."""

from __future__ import annotations

import redis

from producers.contract.keys import Keys
from producers.contract.scripts import Script
from tests.support import make_wait, redis_ms, snapshot
from worker.drain.waiting import WaitingUsers

SHARD = 1


def test_each_waiting_user_s_oldest_seq_in_the_order_asked(
    redis_client: redis.Redis, keys: Keys, namespace: str
) -> None:
    k = keys.shard(SHARD)
    later = redis_ms(redis_client) + 60_000
    # users whose keys are prefixes of each other's stay apart (the length leads each member)
    make_wait(redis_client, k, "u:user-a", [12, 9, 30], later)
    make_wait(redis_client, k, "u:user-ab", [4], later, reason="deferred")
    make_wait(redis_client, k, "u:user-c", [], later)  # parked, nothing waiting: none to be older than
    # waiting members of a user that is not parked do not make it wait
    redis_client.zadd(k.waiting, {b"8:u:user-d|000000000000001|x": 0})
    before = snapshot(redis_client, namespace)
    script = Script(redis_client, "worker", "waiting_oldest")
    users = ["u:user-ab", "u:user-x", "u:user-a", "u:user-c", "u:user-d"]
    assert script([k.parked, k.waiting], users) == [4, -1, 9, -1, -1]
    assert WaitingUsers(redis_client, keys).oldest(SHARD, users) == {"u:user-ab": 4, "u:user-a": 9}
    assert snapshot(redis_client, namespace) == before  # a read


def test_a_shard_with_no_waiting_user_answers_minus_one_for_all(redis_client: redis.Redis, keys: Keys) -> None:
    assert WaitingUsers(redis_client, keys).oldest(SHARD, ["u:user-a", "u:user-b"]) == {}
