"""A shard's lease (worker/lua/lease_acquire, lease_renew, lease_release, lease_lost) against a
real redis-server: fencing by token, and what a release says about the shard's next drain."""

from __future__ import annotations

import pytest
import redis

from producers.contract.keys import Keys
from producers.contract.scripts import Script
from tests.support import listed, pttl, queue_entry, redis_ms, scored, snapshot, text_hash
from worker.drain.lease import Leases
from worker.errors import LeaseLost

TTL_S = 60
SHARD = 3


@pytest.fixture
def leases(redis_client: redis.Redis, keys: Keys) -> Leases:
    return Leases(redis_client, keys, TTL_S)


# -- acquire --------------------------------------------------------------------------------------
def test_acquire_takes_a_free_lease_with_its_ttl(leases: Leases, redis_client: redis.Redis, keys: Keys) -> None:
    k = keys.shard(SHARD)
    redis_client.hset(k.state, mapping={"dispatched_at": 5, "recoveries": 1})
    token = leases.acquire(SHARD)
    assert token is not None
    assert redis_client.get(k.lease) == token.encode()
    assert TTL_S * 1000 - 1000 < pttl(redis_client, k.lease) <= TTL_S * 1000
    # the task the dispatcher sent has come: its mark is cleared, nothing else of the state
    assert text_hash(redis_client, k.state) == {"recoveries": "1"}


def test_acquire_leaves_a_held_lease_alone_but_clears_the_dispatch_mark(
    leases: Leases, redis_client: redis.Redis, keys: Keys
) -> None:
    k = keys.shard(SHARD)
    token = leases.acquire(SHARD)
    redis_client.hset(k.state, "dispatched_at", 5)
    assert leases.acquire(SHARD) is None
    assert redis_client.get(k.lease) == str(token).encode()
    assert text_hash(redis_client, k.state) == {}


# -- renew ----------------------------------------------------------------------------------------
def test_renew_extends_the_owner_s_lease(leases: Leases, redis_client: redis.Redis, keys: Keys) -> None:
    k = keys.shard(SHARD)
    token = leases.acquire(SHARD)
    assert token is not None
    redis_client.pexpire(k.lease, 1000)
    leases.renew(SHARD, token)
    assert TTL_S * 1000 - 1000 < pttl(redis_client, k.lease) <= TTL_S * 1000


@pytest.mark.parametrize("held", [True, False])
def test_renew_with_a_wrong_token_is_lease_lost_and_changes_nothing(
    leases: Leases, redis_client: redis.Redis, keys: Keys, namespace: str, held: bool
) -> None:
    k = keys.shard(SHARD)
    if held:
        leases.acquire(SHARD)
        redis_client.pexpire(k.lease, 5000)
    before = snapshot(redis_client, namespace)
    with pytest.raises(LeaseLost):
        leases.renew(SHARD, "not-the-token")
    assert snapshot(redis_client, namespace) == before
    if held:
        assert pttl(redis_client, k.lease) <= 5000


# -- release ---------------------------------------------------------------------------------------
@pytest.fixture
def release(redis_client: redis.Redis) -> Script:
    return Script(redis_client, "worker", "lease_release")


def release_keys(keys: Keys) -> list[str]:
    k = keys.shard(SHARD)
    return [k.lease, k.queue, k.inflight, k.parked, k.state]


def test_release_with_a_wrong_token_changes_nothing(
    redis_client: redis.Redis, keys: Keys, leases: Leases, release: Script, namespace: str
) -> None:
    k = keys.shard(SHARD)
    leases.acquire(SHARD)
    redis_client.rpush(k.inflight, queue_entry("u:user-1", 1))
    before = snapshot(redis_client, namespace)
    assert release(release_keys(keys), ["not-the-token", 5000, 0, 1]) == -1
    assert snapshot(redis_client, namespace) == before


@pytest.mark.parametrize(
    ("retry_in", "wake_in", "work", "due"),
    [
        (5000, 0, "inflight", "now+5000"),  # a retry: the whole shard waits
        (5000, 7000, "queue", "now+5000"),  # a retry wins over a wake time
        (0, 7000, "queue", "now+7000"),  # a wake time (sending blocked): looked at again then
        (0, 7000, "", "now+7000"),
        (0, 0, "queue", "now"),  # work left: at once
        (0, 0, "inflight", "now"),
        (0, 0, "parked", "first"),  # only waiting users: when the first may go
        (0, 0, "", "0"),  # idle: not until something is enqueued
    ],
)
def test_release_answers_when_the_shard_next_needs_a_drain_and_wakes_nothing_itself(
    redis_client: redis.Redis, keys: Keys, leases: Leases, release: Script,
    retry_in: int, wake_in: int, work: str, due: str,
) -> None:  # fmt: skip
    k = keys.shard(SHARD)
    token = leases.acquire(SHARD)
    far = redis_ms(redis_client) + 3_600_000
    if work == "parked":
        redis_client.zadd(k.parked, {"u:late": far + 5, "u:early": far})
    elif work:
        redis_client.rpush(getattr(k, work), queue_entry("u:user-1", 1))
    before = redis_ms(redis_client)
    reply = int(release(release_keys(keys), [token, retry_in, wake_in, 1]))
    after = redis_ms(redis_client)
    expected = {"now+5000": (before + 5000, after + 5000), "now+7000": (before + 7000, after + 7000),
                "now": (before, after), "first": (far, far), "0": (0, 0)}[due]  # fmt: skip
    assert expected[0] <= reply <= expected[1]
    assert redis_client.exists(k.lease) == 0
    # the retry time is kept in the shard's state, and only there; the wake-up is wake.lua's
    state = text_hash(redis_client, k.state)
    assert state.get("retry_at") == (str(reply) if retry_in else None)
    assert redis_client.exists(keys.wakeups, keys.kick) == 0


def test_release_with_a_retry_makes_the_whole_shard_wait(leases: Leases, redis_client: redis.Redis, keys: Keys) -> None:
    k = keys.shard(SHARD)
    token = leases.acquire(SHARD)
    assert token is not None
    redis_client.rpush(k.inflight, queue_entry("u:user-1", 1))
    before = redis_ms(redis_client)
    leases.release(SHARD, token, retry_in_ms=5000, clean=True)
    after = redis_ms(redis_client)
    state = text_hash(redis_client, k.state)
    retry_at = int(state["retry_at"])
    assert before + 5000 <= retry_at <= after + 5000
    # a clean release with records in flight marks them kept: the next claim counts no recovery
    assert state == {"retry_at": str(retry_at), "kept": "1"}
    assert redis_client.exists(k.lease) == 0
    assert scored(redis_client, keys.wakeups) == [(str(SHARD), retry_at)]
    assert listed(redis_client, keys.kick) == [b"1"]


def test_release_with_a_wake_time_clears_the_retry(leases: Leases, redis_client: redis.Redis, keys: Keys) -> None:
    k = keys.shard(SHARD)
    token = leases.acquire(SHARD)
    assert token is not None
    redis_client.hset(k.state, "retry_at", 1)
    redis_client.rpush(k.queue, queue_entry("u:user-1", 1))
    before = redis_ms(redis_client)
    leases.release(SHARD, token, wake_in_ms=7000)
    after = redis_ms(redis_client)
    assert text_hash(redis_client, k.state) == {}  # nothing in flight: no kept mark
    [(shard, due)] = scored(redis_client, keys.wakeups)
    assert shard == str(SHARD) and before + 7000 <= due <= after + 7000


@pytest.mark.parametrize("where", ["queue", "inflight"])
def test_release_with_work_left_wakes_the_shard_at_once(
    leases: Leases, redis_client: redis.Redis, keys: Keys, where: str
) -> None:
    k = keys.shard(SHARD)
    token = leases.acquire(SHARD)
    assert token is not None
    redis_client.rpush(getattr(k, where), queue_entry("u:user-1", 1))
    before = redis_ms(redis_client)
    leases.release(SHARD, token, clean=False)
    after = redis_ms(redis_client)
    [(shard, due)] = scored(redis_client, keys.wakeups)
    assert shard == str(SHARD) and before <= due <= after
    # not clean (the drain failed unexpectedly): no kept mark, so the next claim counts a recovery
    assert text_hash(redis_client, k.state) == {}
    assert listed(redis_client, keys.kick) == [b"1"]


def test_release_with_only_waiting_users_wakes_the_shard_when_the_first_may_go(
    leases: Leases, redis_client: redis.Redis, keys: Keys
) -> None:
    k = keys.shard(SHARD)
    token = leases.acquire(SHARD)
    assert token is not None
    far = redis_ms(redis_client) + 3_600_000
    redis_client.zadd(k.parked, {"u:late": far + 5, "u:early": far})
    leases.release(SHARD, token)
    assert scored(redis_client, keys.wakeups) == [(str(SHARD), far)]


def test_release_of_an_idle_shard_asks_for_no_drain(leases: Leases, redis_client: redis.Redis, keys: Keys) -> None:
    k = keys.shard(SHARD)
    token = leases.acquire(SHARD)
    assert token is not None
    leases.release(SHARD, token)
    assert redis_client.exists(k.lease, keys.wakeups, keys.kick) == 0


def test_release_never_postpones_an_earlier_wake_up(leases: Leases, redis_client: redis.Redis, keys: Keys) -> None:
    k = keys.shard(SHARD)
    token = leases.acquire(SHARD)
    assert token is not None
    redis_client.rpush(k.queue, queue_entry("u:user-1", 1))
    redis_client.zadd(keys.wakeups, {str(SHARD): 7})
    leases.release(SHARD, token, retry_in_ms=5000)
    assert scored(redis_client, keys.wakeups) == [(str(SHARD), 7)]


# -- lost -----------------------------------------------------------------------------------------
@pytest.fixture
def lost(redis_client: redis.Redis) -> Script:
    return Script(redis_client, "worker", "lease_lost")


@pytest.mark.parametrize(("recoveries", "left"), [("2", "1"), ("0", "0")])
def test_a_lost_lease_takes_back_the_recovery_the_new_owner_counted(
    lost: Script, redis_client: redis.Redis, keys: Keys, recoveries: str, left: str
) -> None:
    # Given a new owner (t2) whose claim counted a recovery from us (t1)
    k = keys.shard(SHARD)
    redis_client.set(k.lease, "t2")
    redis_client.hset(k.state, mapping={"recovered_from": "t1", "claimer": "t2", "recoveries": recoveries})
    # Then our report takes it back: we stalled, we did not crash
    assert lost([k.lease, k.state], ["t1"]) == 1
    assert text_hash(redis_client, k.state) == {"claimer": "t2", "recoveries": left}
    assert redis_client.get(k.lease) == b"t2"


def test_a_lost_lease_nobody_took_yet_marks_the_claim_kept(lost: Script, redis_client: redis.Redis, keys: Keys) -> None:
    k = keys.shard(SHARD)
    redis_client.hset(k.state, mapping={"claimer": "t1", "recoveries": "1"})
    assert lost([k.lease, k.state], ["t1"]) == 2
    assert text_hash(redis_client, k.state) == {"claimer": "t1", "recoveries": "1", "kept": "1"}


@pytest.mark.parametrize(
    ("lease", "state"),
    [
        ("t2", {"claimer": "t1"}),  # a new owner that has not claimed yet: nothing to take back
        (None, {"claimer": "t2", "recovered_from": "t0", "recoveries": "1"}),  # someone else's claim
        (None, {}),
    ],
)
def test_a_lost_lease_otherwise_changes_nothing(
    lost: Script, redis_client: redis.Redis, keys: Keys, namespace: str, lease: str | None, state: dict[str, str]
) -> None:
    k = keys.shard(SHARD)
    if lease:
        redis_client.set(k.lease, lease)
    if state:
        redis_client.hset(k.state, mapping=state)
    before = snapshot(redis_client, namespace)
    assert lost([k.lease, k.state], ["t1"]) == 0
    assert snapshot(redis_client, namespace) == before


def test_leases_lost_reports_through_the_script(leases: Leases, redis_client: redis.Redis, keys: Keys) -> None:
    k = keys.shard(SHARD)
    redis_client.hset(k.state, mapping={"claimer": "t1"})
    leases.lost(SHARD, "t1")
    assert text_hash(redis_client, k.state) == {"claimer": "t1", "kept": "1"}
