"""The waiting_oldest script (worker/lua/waiting_oldest.lua, with lib/waiting.lua) against a real
redis-server: for each user of a claim, the seq of its oldest waiting update."""

from __future__ import annotations

import pytest
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
    assert script([k.parked, k.waiting], users) == [0, 4, 2, 9]  # (position, seq) of those that wait
    assert WaitingUsers(redis_client, keys).oldest(SHARD, users) == {"u:user-ab": 4, "u:user-a": 9}
    assert snapshot(redis_client, namespace) == before  # a read


def test_a_shard_with_no_waiting_user_answers_minus_one_for_all(redis_client: redis.Redis, keys: Keys) -> None:
    assert WaitingUsers(redis_client, keys).oldest(SHARD, ["u:user-a", "u:user-b"]) == {}


@pytest.mark.parametrize("parked", [0, 1, 3, 7, 8, 40])
def test_asking_only_about_the_claim_s_users_that_wait_gives_the_same_answer(
    redis_client: redis.Redis, keys: Keys, namespace: str, parked: int
) -> None:
    # Given a shard where ``parked`` users wait (each with updates, but the last parked with none),
    # and a claim of seven users, some of them among those that wait
    k = keys.shard(SHARD)
    later = redis_ms(redis_client) + 60_000
    waiting_users = [f"u:user-{n:02d}" for n in range(0, 2 * parked, 2)]
    for n, user in enumerate(waiting_users):
        make_wait(redis_client, k, user, [] if n == parked - 1 else [10 + n, 5 + n], later)
    claim_users = [f"u:user-{n:02d}" for n in (10, 8, 1, 2, 7, 0, 30)]
    store = WaitingUsers(redis_client, keys)
    asked_about_each = store.oldest(SHARD, claim_users)
    before = snapshot(redis_client, namespace)
    # When the claim says how many users wait (fewer, as many, or more than it has users)
    found = store.oldest(SHARD, claim_users, waiting=redis_client.zcard(k.parked))
    # Then the answer is the one asking about each of its users gives, and nothing was written
    assert found == asked_about_each
    # (and when more users wait than the claim saw, as when some were parked since, too)
    assert store.oldest(SHARD, claim_users, waiting=min(parked, 1)) == asked_about_each
    assert found == {u: 5 + n for n, u in enumerate(waiting_users) if u in claim_users and n != parked - 1}
    assert snapshot(redis_client, namespace) == before
