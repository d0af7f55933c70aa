"""The claim script (worker/lua/claim.lua) against a real redis-server: what the next request of a
shard carries, what it leaves in Redis, and when it claims nothing but says how long to wait.

What a drain reads from the global keys before it claims (blocked, the probe, a learned request
size) is drain_begin.lua's: tests/scripts/test_drain_begin.py."""

from __future__ import annotations

import pytest
import redis

from producers.contract.keys import Keys
from producers.contract.scripts import Script
from tests.support import listed, make_wait, queue_entry, redis_ms, scored, snapshot, text_hash
from worker.drain.claim import HEADER, RELEASED_USERS_PER_CLAIM, Claim, Claims
from worker.drain.lease import Leases
from worker.errors import LeaseLost

SHARD = 2
BIG = 1_000_000


@pytest.fixture
def claims(redis_client: redis.Redis, keys: Keys) -> Claims:
    return Claims(redis_client, keys)


@pytest.fixture
def token(redis_client: redis.Redis, keys: Keys) -> str:
    taken = Leases(redis_client, keys, 60).acquire(SHARD)
    assert taken is not None
    return taken


def fill(client: redis.Redis, keys: Keys, user: str, seqs: range, pad: int = 0) -> list[bytes]:
    raws = [queue_entry(user, s, pad=pad) for s in seqs]
    client.rpush(keys.shard(SHARD).queue, *raws)
    return raws


def test_an_empty_shard_claims_nothing_and_touches_nothing(
    redis_client: redis.Redis, keys: Keys, token: str, namespace: str
) -> None:
    k = keys.shard(SHARD)
    before_state = snapshot(redis_client, namespace)
    before = redis_ms(redis_client)
    # the reply is the header of four (now, recoveries, retry wait, waiting users) and no entry
    reply = Script(redis_client, "worker", "claim")(
        [k.lease, k.queue, k.inflight, k.state, k.parked, k.parked_why, k.waiting],
        [token, 10, BIG, RELEASED_USERS_PER_CLAIM],
    )  # fmt: skip
    after = redis_ms(redis_client)
    assert len(reply) == len(HEADER) == 4
    assert before <= reply[0] <= after
    assert reply[1:] == [0, 0, 0]
    assert snapshot(redis_client, namespace) == before_state  # not even the claimer is written


def test_a_claim_without_the_lease_is_lease_lost_and_changes_nothing(
    claims: Claims, redis_client: redis.Redis, keys: Keys, token: str, namespace: str
) -> None:
    fill(redis_client, keys, "u:user-1", range(1, 4))
    before = snapshot(redis_client, namespace)
    with pytest.raises(LeaseLost):
        claims.claim(SHARD, "not-the-token", 10, BIG)
    assert snapshot(redis_client, namespace) == before


def test_a_claim_takes_the_queue_s_head_up_to_the_count(
    claims: Claims, redis_client: redis.Redis, keys: Keys, token: str
) -> None:
    k = keys.shard(SHARD)
    raws = fill(redis_client, keys, "u:user-1", range(1, 11))
    before = redis_ms(redis_client)
    claim = claims.claim(SHARD, token, 4, BIG)
    after = redis_ms(redis_client)
    assert before <= claim.now_ms <= after
    assert claim == Claim(entries=raws[:4], now_ms=claim.now_ms, recoveries=0)
    assert listed(redis_client, k.inflight) == raws[:4]
    assert listed(redis_client, k.queue) == raws[4:]
    assert text_hash(redis_client, k.state) == {"claimer": token}


@pytest.mark.parametrize(
    ("max_bytes", "claimed"),
    [
        (250, 2),  # 2 x 100 bytes fit, a third would make 300
        (300, 3),  # exactly
        (50, 1),  # a first entry larger than the limit still goes, alone
    ],
)
def test_a_claim_takes_about_what_one_request_carries_in_bytes(
    claims: Claims, redis_client: redis.Redis, keys: Keys, token: str, max_bytes: int, claimed: int
) -> None:
    raws = fill(redis_client, keys, "u:user-1", range(1, 6), pad=17)
    assert {len(r) for r in raws} == {100}
    assert claims.claim(SHARD, token, 10, max_bytes).entries == raws[:claimed]
    assert listed(redis_client, keys.shard(SHARD).queue) == raws[claimed:]


def test_inflight_is_returned_as_it_is_and_a_recovery_counted(
    claims: Claims, redis_client: redis.Redis, keys: Keys, token: str
) -> None:
    # Given a batch a drainer (t0) claimed and never settled, and more in the queue
    k = keys.shard(SHARD)
    inflight = [queue_entry("u:user-1", 1, attempts=2), queue_entry("u:user-2", 2)]
    redis_client.rpush(k.inflight, *inflight)
    redis_client.hset(k.state, "claimer", "t0")
    queued = fill(redis_client, keys, "u:user-1", range(3, 5))
    # When a new owner claims, even with room for one record only
    claim = claims.claim(SHARD, token, 1, 10)
    # Then it gets the whole batch in flight, read again, with a recovery counted from t0
    assert (claim.entries, claim.recoveries) == (inflight, 1)
    assert listed(redis_client, k.inflight) == inflight
    assert listed(redis_client, k.queue) == queued
    assert text_hash(redis_client, k.state) == {"claimer": token, "recoveries": "1", "recovered_from": "t0"}
    # and each further claim of that batch without a clean release counts one more
    assert claims.claim(SHARD, token, 1, 10).recoveries == 2


def test_inflight_kept_by_a_clean_release_counts_no_recovery(
    claims: Claims, redis_client: redis.Redis, keys: Keys, token: str
) -> None:
    k = keys.shard(SHARD)
    inflight = [queue_entry("u:user-1", 1)]
    redis_client.rpush(k.inflight, *inflight)
    redis_client.hset(k.state, mapping={"claimer": "t0", "kept": "1", "recoveries": "1"})
    claim = claims.claim(SHARD, token, 10, BIG)
    assert (claim.entries, claim.recoveries) == (inflight, 0)
    # the mark is used up; the count of earlier recoveries stays
    assert text_hash(redis_client, k.state) == {"claimer": token, "recoveries": "1"}


def test_a_shard_waiting_to_retry_claims_nothing_until_its_time(
    claims: Claims, redis_client: redis.Redis, keys: Keys, token: str
) -> None:
    k = keys.shard(SHARD)
    raws = fill(redis_client, keys, "u:user-1", range(1, 3))
    now = redis_ms(redis_client)
    redis_client.hset(k.state, "retry_at", now + 5000)
    claim = claims.claim(SHARD, token, 10, BIG)
    assert claim.entries == []
    assert 5000 - (claim.now_ms - now) == claim.wait_ms
    assert 4000 < claim.wait_ms <= 5000
    assert listed(redis_client, k.queue) == raws
    assert text_hash(redis_client, k.state) == {"retry_at": str(now + 5000)}
    # once the time has come, it claims
    redis_client.hset(k.state, "retry_at", now - 1)
    assert claims.claim(SHARD, token, 10, BIG).entries == raws


def test_a_claim_reads_no_global_key_so_a_block_does_not_stop_it(
    claims: Claims, redis_client: redis.Redis, keys: Keys, token: str
) -> None:
    # Sending blocked and a 413's size learned: the claim neither waits nor reads them (drain_begin
    # does, once per drain, before the first claim), and writes none of the global keys
    raws = fill(redis_client, keys, "u:user-1", range(1, 3))
    now = redis_ms(redis_client)
    redis_client.hset(keys.blocked, mapping={"reason": "HTTP 400 Invalid API key", "next_probe_ms": now + 8000})
    redis_client.hset(keys.meta, mapping={"max_request_bytes": 10, "max_request_bytes_ms": now})
    blocked, meta = text_hash(redis_client, keys.blocked), text_hash(redis_client, keys.meta)
    claim = claims.claim(SHARD, token, 10, BIG)
    assert (claim.entries, claim.wait_ms) == (raws, 0)
    assert (text_hash(redis_client, keys.blocked), text_hash(redis_client, keys.meta)) == (blocked, meta)


def test_a_due_waiting_user_gives_its_oldest_updates_first(
    claims: Claims, redis_client: redis.Redis, keys: Keys, token: str
) -> None:
    k = keys.shard(SHARD)
    now = redis_ms(redis_client)
    held = make_wait(redis_client, k, "u:user-a", [3, 1, 2], now - 1)
    claim = claims.claim(SHARD, token, 10, BIG)
    assert claim.entries == held  # seq 1, 2, 3
    assert listed(redis_client, k.inflight) == held
    # its run is empty: it waits no more, and the header says nobody waits
    assert claim.waiting_users == 0
    assert redis_client.exists(k.waiting, k.parked, k.parked_why) == 0


def test_a_user_whose_time_has_not_come_stays_waiting(
    claims: Claims, redis_client: redis.Redis, keys: Keys, token: str, namespace: str
) -> None:
    k = keys.shard(SHARD)
    now = redis_ms(redis_client)
    make_wait(redis_client, k, "u:user-a", [1, 2], now + 60_000)
    queued = fill(redis_client, keys, "u:user-b", range(3, 5))
    claim = claims.claim(SHARD, token, 10, BIG)
    assert claim.entries == queued
    assert claim.waiting_users == 1
    assert scored(redis_client, k.parked) == [("u:user-a", now + 60_000)]
    assert redis_client.zcard(k.waiting) == 2


def test_waiting_users_are_released_earliest_due_first(
    claims: Claims, redis_client: redis.Redis, keys: Keys, token: str
) -> None:
    k = keys.shard(SHARD)
    now = redis_ms(redis_client)
    late = make_wait(redis_client, k, "u:user-a", [1, 2], now - 100)
    early = make_wait(redis_client, k, "u:user-b", [3, 4], now - 200)
    # room for three: b (due first) gives both, then a its oldest
    claim = claims.claim(SHARD, token, 3, BIG)
    assert claim.entries == [*early, late[0]]
    assert claim.waiting_users == 1
    assert scored(redis_client, k.parked) == [("u:user-a", now - 100)]
    assert text_hash(redis_client, k.parked_why) == {"u:user-a": "held"}


@pytest.mark.parametrize(
    ("room", "released", "from_queue"),
    [
        (4, 2, 2),  # half the claim for waiting users while the queue has entries
        (5, 3, 2),  # rounded up
        (1, 1, 0),
    ],
)
def test_releases_take_at_most_half_a_claim_while_the_queue_has_entries(
    claims: Claims, redis_client: redis.Redis, keys: Keys, token: str, room: int, released: int, from_queue: int
) -> None:
    k = keys.shard(SHARD)
    now = redis_ms(redis_client)
    held = make_wait(redis_client, k, "u:user-a", range(1, 7), now - 1, reason="deferred")
    queued = fill(redis_client, keys, "u:user-b", range(10, 16))
    claim = claims.claim(SHARD, token, room, BIG)
    assert claim.entries == held[:released] + queued[:from_queue]
    # the user stays parked, due, with its reason, until its run is empty
    assert scored(redis_client, k.parked) == [("u:user-a", now - 1)]
    assert text_hash(redis_client, k.parked_why) == {"u:user-a": "deferred"}
    assert redis_client.zcard(k.waiting) == 6 - released
    assert claim.waiting_users == 1


@pytest.mark.parametrize(("waiting", "parked_after"), [(2, False), (3, True)])
def test_a_user_taking_exactly_its_room_leaves_only_when_nothing_is_left(
    claims: Claims, redis_client: redis.Redis, keys: Keys, token: str, waiting: int, parked_after: bool
) -> None:
    k = keys.shard(SHARD)
    now = redis_ms(redis_client)
    held = make_wait(redis_client, k, "u:user-a", range(1, waiting + 1), now - 1)
    assert claims.claim(SHARD, token, 2, BIG).entries == held[:2]
    assert (redis_client.zscore(k.parked, "u:user-a") is not None) is parked_after
    assert (redis_client.hget(k.parked_why, "u:user-a") is not None) is parked_after


def test_without_a_queue_a_claim_may_be_all_releases(
    claims: Claims, redis_client: redis.Redis, keys: Keys, token: str
) -> None:
    k = keys.shard(SHARD)
    now = redis_ms(redis_client)
    held = make_wait(redis_client, k, "u:user-a", range(1, 7), now - 1)
    assert claims.claim(SHARD, token, 4, BIG).entries == held[:4]
