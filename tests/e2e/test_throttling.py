"""Amplitude's limits, end to end: 429 holds, the global rate limit, the hourly budget, merging."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from tests.support import StartWorker, check_delivery, drained, seq_records, status, wait_until
from worker.deadletter import DeadLetterQueue
from worker.devtools.local_stack import LocalAmplitudeProcess
from worker.drain.amplitude_model import apply


def budget_count(config: QueueConfig, user_key: str) -> int:
    """What the hourly budget has counted for a user, over all its slots."""
    client = redis.Redis.from_url(config.redis_url)
    try:
        keys = client.keys(f"{config.namespace}:{{s*}}:budget:*")
        return sum(int(client.hget(k, user_key) or 0) for k in keys)
    finally:
        client.close()


def first_arrival(arrivals: list[tuple[float, str]], users: set[str]) -> float:
    return min(t for t, u in arrivals if u in users)


def last_arrival(arrivals: list[tuple[float, str]], users: set[str]) -> float:
    return max(t for t, u in arrivals if u in users)


# -- 429: per-user holds ----------------------------------------------------------------------------
@pytest.mark.parametrize("named", [True, False], ids=["429-naming-users", "429-naming-none"])
def test_throttled_users_wait_in_order_while_the_others_go_on(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess,
    start_worker: StartWorker, named: bool,
) -> None:  # fmt: skip
    # Given Amplitude throttling two users for a second and a half
    throttled = {"user-00003", "user-00011"}
    amplitude.control(throttle_users={u: 1.5 for u in throttled}, name_throttled=named)
    producer.identify_many(seq_records(60, 4))
    start_worker(IDENTIFY_THROTTLE_PAUSE_S="2", IDENTIFY_BATCH_SIZE="20")
    wait_until(lambda: drained(queue_config), 60, "everything delivered")
    # Then nothing is lost or dead-lettered, and every user's records arrived in order
    assert check_delivery(amplitude.accepted(), 60, 4) == 0
    assert status(queue_config)["dead_letter"] == 0
    log = amplitude.requests_log()
    first_429 = min(t for t, code, _, _ in log if code == 429)
    arrivals = amplitude.arrivals()
    # The throttled users arrived only after their pause; everybody else was not kept waiting
    assert first_arrival(arrivals, throttled) >= first_429 + 1.9
    if named:
        unaffected = {f"user-{u:05d}" for u in range(60)} - throttled
        assert last_arrival(arrivals, unaffected) < first_429 + 1.9
    # The budget counts what was sent and applied: the refused attempts were given back
    for user in ("user-00003", "user-00011", "user-00020"):
        assert budget_count(queue_config, f"u:{user}") == 4


def test_holds_are_in_redis_and_survive_a_worker_restart(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker
) -> None:
    amplitude.control(throttle_users={"user-00002": 1.0})
    producer.identify_many(seq_records(10, 3))
    first = start_worker(IDENTIFY_THROTTLE_PAUSE_S="3")
    held = wait_until(lambda: status(queue_config)["held"], 30, "a held user")
    assert held == 3
    assert first.terminate() == 0
    # When another worker starts while the hold lasts, it keeps the hold and then delivers, in order
    start_worker(IDENTIFY_THROTTLE_PAUSE_S="3")
    wait_until(lambda: drained(queue_config), 30, "delivery after the hold")
    assert check_delivery(amplitude.accepted(), 10, 3) == 0
    assert status(queue_config)["held"] == 0


# -- the global rate limit ----------------------------------------------------------------------------
@pytest.mark.shards(16)
def test_four_worker_processes_share_one_request_rate_limit(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker
) -> None:
    limit = 20
    producer.identify_many(seq_records(200, 4))
    for _ in range(2):
        start_worker(concurrency=2, IDENTIFY_RATE_LIMIT_RPS=str(limit), IDENTIFY_BATCH_SIZE="10")
    wait_until(lambda: drained(queue_config), 60, "delivery under the rate limit")
    times = sorted(t for t, _, _, _ in amplitude.requests_log())
    # The server never saw more than the limit in any one-second window...
    busiest = max(sum(1 for u in times[i:] if u < t + 1.0) for i, t in enumerate(times))
    assert busiest <= limit
    # ...and the limit was used, not merely respected by being slow
    assert len(times) / (times[-1] - times[0]) >= 0.75 * limit
    assert check_delivery(amplitude.accepted(), 200, 4) == 0


# -- the hourly budget ---------------------------------------------------------------------------------
def test_a_user_past_its_budget_gets_the_rest_after_the_window_in_order(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker
) -> None:
    # Given a budget of 5 updates per 3-second window, and one user with 12 updates among others
    window, limit = 3.0, 5
    hot = [{"user_id": "user-hot01", "user_properties": {"$set": {"seq": i}}} for i in range(12)]
    producer.identify_many(hot + seq_records(20, 2))
    start_worker(IDENTIFY_USER_UPDATES_PER_HOUR=str(limit), IDENTIFY_BUDGET_WINDOW_S=str(window))
    wait_until(lambda: status(queue_config)["deferred"] > 0, 30, "deferred updates")
    wait_until(lambda: drained(queue_config), 60, "every update, eventually")
    # Then every update arrived, in order, and never more than 5 in any 3-second window
    accepted = amplitude.accepted()
    assert [r["user_properties"]["$set"]["seq"] for r in accepted if r["user_id"] == "user-hot01"] == list(range(12))
    hot_times = sorted(t for t, u in amplitude.arrivals() if u == "user-hot01")
    assert max(sum(1 for u in hot_times[i:] if u < t + window) for i, t in enumerate(hot_times)) <= limit
    assert hot_times[limit] - hot_times[0] >= window
    # while the other users were not held back by it
    assert check_delivery([r for r in accepted if r["user_id"] != "user-hot01"], 20, 2) == 0
    assert status(queue_config)["deferred"] == 0


# -- merging -------------------------------------------------------------------------------------------
def test_fifty_updates_of_one_user_become_one_request_item(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker
) -> None:
    updates = [
        {"user_id": "user-00042", "user_properties": {"$set": {"last_seen": f"2026-11-28T10:{i:02d}:00"},
                                                      "$add": {"events": 1}, "$append": {"pages": f"/p{i}"}},
         "platform": "iOS", "os_name": "ios", "country": "CH" if i < 25 else "DE"}
        for i in range(50)
    ]  # fmt: skip
    producer.identify_many(updates)
    start_worker(IDENTIFY_COALESCE="1")
    wait_until(lambda: drained(queue_config), 30, "delivery")
    [item] = amplitude.accepted()
    assert item["user_properties"]["$add"] == {"events": 50}
    expected: dict[str, Any] = {}
    for update in updates:
        expected = apply(expected, update)
    assert amplitude.user("user-00042") == expected
    assert status(queue_config)["delivered"] == 50


# -- review findings: merged items refused, long waits for a turn ----------------------------------
@pytest.mark.shards(1)
def test_a_refused_merged_item_is_split_back_in_place_keeping_the_users_order(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker
) -> None:
    # Given three updates of one user where the second cannot merge into the first ($preInsert after
    # $set on the same property) but the third merges into the second; and Amplitude refusing any
    # record naming `bad`, so it refuses the merged item (and later its second half)
    updates = [
        {"user_id": "user-alice", "user_properties": {"$set": {"seq": 0}}},
        {"user_id": "user-alice", "user_properties": {"$preInsert": {"seq": 1}}},
        {"user_id": "user-alice", "user_properties": {"$set": {"seq": 2, "bad": 1}}},
    ]
    producer.identify_many(updates)
    amplitude.control(reject_properties=["bad"])
    start_worker(IDENTIFY_COALESCE="1")
    wait_until(lambda: drained(queue_config), 30, "delivery")
    # Then the user's updates that are fine arrive in their order, and only the bad one is dead-lettered
    assert [r["user_properties"] for r in amplitude.accepted()] == [u["user_properties"] for u in updates[:2]]
    [dead] = DeadLetterQueue(queue_config).entries()
    assert dead["record"] == updates[2]


def test_a_long_wait_for_a_turn_keeps_the_shard(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker
) -> None:
    # Given a rate limit whose turns come further apart than a lease lasts (3 s in the tests)
    producer.identify_many(seq_records(4, 2))
    start_worker(concurrency=1, IDENTIFY_RATE_LIMIT_RPS="0.25", IDENTIFY_BATCH_SIZE="2", IDENTIFY_SHARDS="8")
    wait_until(lambda: drained(queue_config), 60, "delivery at one request every 4 s")
    # Then the waiting drainer kept its shard: nothing was taken for a dead worker's, or poison
    assert check_delivery(amplitude.accepted(), 4, 2) == 0
    assert status(queue_config)["dead_letter"] == 0
    client = redis.Redis.from_url(queue_config.redis_url)
    keys = Keys(queue_config.namespace)
    assert not any(client.hget(keys.shard(s).state, "recoveries") for s in range(queue_config.shards))
