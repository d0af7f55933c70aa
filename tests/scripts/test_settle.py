"""The settle script (worker/lua/settle.lua) against a real redis-server: what one answer changes,
all or nothing: inflight, dead letters, waiting users, fingerprints and counters, every one of them
the shard's own (per-shard totals, stats, dead letters and fingerprints: one hash slot)."""

from __future__ import annotations

import orjson
import pytest
import redis

from producers.contract import entry
from producers.contract.keys import Keys
from tests.support import listed, make_wait, members, queue_entry, redis_ms, scored, snapshot, text_hash
from worker.deadletter import dead_letter
from worker.drain import waiting
from worker.drain.lease import Leases
from worker.drain.settle import DeadLetter, Parking, Settlement, Settlements
from worker.errors import LeaseLost
from worker.status import gather

SHARD = 5


class Shard:
    """A shard whose lease the test holds, with three records in flight."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client, self.keys, self.k = client, keys, keys.shard(SHARD)
        token = Leases(client, keys, 60).acquire(SHARD)
        assert token is not None
        self.token = token
        self.settlements = Settlements(client, keys)
        self.inflight = [queue_entry("u:user-a", 1), queue_entry("u:user-b", 2), queue_entry("u:user-a", 3)]
        client.rpush(self.k.inflight, *self.inflight)
        client.set(self.k.total, 10)

    def settle(self, s: Settlement) -> list[str]:
        return self.settlements.settle(SHARD, self.token, s)

    def delivered_this_minute(self, now_ms: int) -> int:
        """What the shard's minutes ring (iq.count_minute) counts as delivered in ``now_ms``'s minute."""
        minute = now_ms // 60_000
        ring = text_hash(self.client, self.k.minutes)
        assert ring.get(f"m{minute % 64}") == str(minute)
        return int(ring[f"d{minute % 64}"])


@pytest.fixture
def shard(redis_client: redis.Redis, keys: Keys) -> Shard:
    return Shard(redis_client, keys)


def test_delivered_records_are_trimmed_from_the_head_and_counted(shard: Shard, redis_client: redis.Redis) -> None:
    before = redis_ms(redis_client)
    assert shard.settle(Settlement(delivered=2, requests=1, trim=2)) == []
    after = redis_ms(redis_client)
    assert listed(redis_client, shard.k.inflight) == shard.inflight[2:]
    assert redis_client.get(shard.k.total) == b"8"
    stats = text_hash(redis_client, shard.k.stats)
    delivered_ms = int(stats.pop("last_delivery_ms"))
    assert before <= delivered_ms <= after
    assert stats == {"delivered": "2", "requests": "1"}
    # the delivery rate and the console's chart: this minute of the shard's ring counts them
    assert shard.delivered_this_minute(delivered_ms) == 2
    assert int(text_hash(redis_client, shard.k.minutes)[f"e{delivered_ms // 60_000 % 64}"]) == 0


def test_replace_gives_inflight_exactly(shard: Shard, redis_client: redis.Redis) -> None:
    retried = entry.encode("u:user-b", entry.decode(shard.inflight[1]).data, 2, 0, attempts=1)
    shard.settle(Settlement(requests=1, replace=[retried, shard.inflight[2]]))
    assert listed(redis_client, shard.k.inflight) == [retried, shard.inflight[2]]
    # nothing delivered: only the request is counted
    assert text_hash(redis_client, shard.k.stats) == {"requests": "1"}
    assert redis_client.get(shard.k.total) == b"10"
    assert redis_client.exists(shard.k.minutes) == 0


def test_replace_wins_over_trim_and_may_empty_inflight(shard: Shard, redis_client: redis.Redis) -> None:
    shard.settle(Settlement(delivered=3, trim=1, replace=[]))
    assert redis_client.exists(shard.k.inflight) == 0
    assert redis_client.get(shard.k.total) == b"7"


@pytest.mark.parametrize(("trim", "cleared"), [(3, True), (2, False)])
def test_recoveries_are_forgotten_once_inflight_is_empty(
    shard: Shard, redis_client: redis.Redis, trim: int, cleared: bool
) -> None:
    redis_client.hset(shard.k.state, mapping={"recoveries": 2, "recovered_from": "t0", "claimer": shard.token})
    shard.settle(Settlement(delivered=trim, trim=trim))
    expected = {"claimer": shard.token} if cleared else {"recoveries": "2", "recovered_from": "t0",
                                                         "claimer": shard.token}  # fmt: skip
    assert text_hash(redis_client, shard.k.state) == expected


def test_dead_letters_get_ids_per_shard_and_are_indexed_and_counted(
    shard: Shard, redis_client: redis.Redis, keys: Keys
) -> None:
    # Given fingerprints for both users, and b's dead letter already numbered 4 in this shard
    k = shard.k
    redis_client.set(k.fingerprint("u:user-a"), b"fa")
    redis_client.set(k.fingerprint("u:user-b"), b"fb")
    redis_client.set(k.dlq_seq, 4)
    # and another shard's dead letters, which a settle of this one never touches
    other = keys.shard(SHARD + 1)
    redis_client.set(other.dlq_seq, 9)
    redis_client.hset(other.dlq_counts, "invalid", 9)
    a = dead_letter(entry.decode(shard.inflight[0]), "invalid", 1111, detail="invalid field user_id", status=400)
    raw = DeadLetter("undecodable", b'{"reason":"undecodable"}')  # no user: no fingerprint
    # When a settle dead-letters two records and delivers one
    ids = shard.settle(Settlement(delivered=1, requests=1, trim=3, dead=[a, raw], failed_ms=1111, error="refused"))
    # Then they get the next ids of the shard, in order, and are indexed by failure time and counted
    assert ids == [f"{SHARD}-5", f"{SHARD}-6"]
    assert text_hash(redis_client, k.dlq_entries) == {f"{SHARD}-5": a.json.decode(),
                                                      f"{SHARD}-6": '{"reason":"undecodable"}'}  # fmt: skip
    assert scored(redis_client, k.dlq_index) == [(f"{SHARD}-5", 1111), (f"{SHARD}-6", 1111)]
    assert text_hash(redis_client, k.dlq_counts) == {"invalid": "1", "undecodable": "1"}
    assert redis_client.get(k.dlq_seq) == b"6"
    # the dead-lettered user's fingerprint is deleted (the next import sends it again), no other
    assert redis_client.exists(k.fingerprint("u:user-a")) == 0
    assert redis_client.get(k.fingerprint("u:user-b")) == b"fb"
    # delivered and dead-lettered both leave the total
    assert redis_client.get(k.total) == b"7"
    stats = text_hash(redis_client, k.stats)
    assert stats["last_error"] == "refused" and stats["dead_lettered"] == "2" and stats["delivered"] == "1"
    # and the count goes on
    assert shard.settle(Settlement(dead=[a], failed_ms=1112)) == [f"{SHARD}-7"]
    assert text_hash(redis_client, k.dlq_counts) == {"invalid": "2", "undecodable": "1"}
    assert orjson.loads(text_hash(redis_client, k.dlq_entries)[f"{SHARD}-7"])["reason"] == "invalid"
    assert (redis_client.get(other.dlq_seq), text_hash(redis_client, other.dlq_counts)) == (b"9", {"invalid": "9"})


def test_an_error_is_kept_with_its_time_and_no_error_leaves_it(shard: Shard, redis_client: redis.Redis) -> None:
    before = redis_ms(redis_client)
    shard.settle(Settlement(requests=1, error="HTTP 503"))
    after = redis_ms(redis_client)
    stats = text_hash(redis_client, shard.k.stats)
    assert stats["last_error"] == "HTTP 503" and before <= int(stats["last_error_ms"]) <= after
    shard.settle(Settlement(delivered=1, trim=1))
    assert text_hash(redis_client, shard.k.stats)["last_error"] == "HTTP 503"


def test_a_held_user_is_parked_among_its_waiting_updates(shard: Shard, redis_client: redis.Redis, keys: Keys) -> None:
    # Given user a waiting already with update 7 (deferred)
    now = redis_ms(redis_client)
    [older] = make_wait(redis_client, shard.k, "u:user-a", [7], now + 1000, reason="deferred")
    # When a 429 holds a (its in-flight updates 1 and 3) for 60 s, b's update delivered
    held = waiting.members([entry.decode(shard.inflight[0]), entry.decode(shard.inflight[2])])
    before = redis_ms(redis_client)
    shard.settle(Settlement(delivered=1, requests=1, replace=[],
                            parked=[Parking("u:user-a", 60_000, waiting.HELD, held)]))  # fmt: skip
    after = redis_ms(redis_client)
    # Then its updates wait in seq order, ahead of the newer one, until 60 s from now, held
    assert [waiting.entry_of(m, "u:user-a") for m in members(redis_client, shard.k.waiting)] == [
        shard.inflight[0], shard.inflight[2], older
    ]  # fmt: skip
    [(user, until)] = scored(redis_client, shard.k.parked)
    assert user == "u:user-a" and before + 60_000 <= until <= after + 60_000
    assert text_hash(redis_client, shard.k.parked_why) == {"u:user-a": "held"}
    assert redis_client.exists(shard.k.inflight) == 0


@pytest.mark.parametrize(
    ("hold_ms", "reason", "extended", "why"),
    [
        (60_000, "held", True, "held"),  # a longer hold extends the wait, with its reason
        (0, "", False, "deferred"),  # hold 0 and no reason: time and reason as they were
        (0, "held", False, "held"),  # a shorter hold never shortens it (GT), but names its reason
    ],
)
def test_a_hold_extends_a_wait_and_never_shortens_it(
    shard: Shard, redis_client: redis.Redis, hold_ms: int, reason: str, extended: bool, why: str
) -> None:
    now = redis_ms(redis_client)
    make_wait(redis_client, shard.k, "u:user-b", [9], now + 30_000, reason="deferred")
    member = waiting.member(entry.decode(shard.inflight[1]))
    shard.settle(Settlement(replace=[shard.inflight[0], shard.inflight[2]],
                            parked=[Parking("u:user-b", hold_ms, reason, [member])]))  # fmt: skip
    until = int(redis_client.zscore(shard.k.parked, "u:user-b") or 0)
    assert (until > now + 30_000) is extended and until >= now + 30_000
    assert text_hash(redis_client, shard.k.parked_why) == {"u:user-b": why}
    assert redis_client.zcard(shard.k.waiting) == 2


def test_a_user_that_did_not_wait_is_added_by_a_hold_of_zero(shard: Shard, redis_client: redis.Redis) -> None:
    before = redis_ms(redis_client)
    member = waiting.member(entry.decode(shard.inflight[1]))
    shard.settle(Settlement(parked=[Parking("u:user-b", 0, "", [member])]))
    after = redis_ms(redis_client)
    [(user, until)] = scored(redis_client, shard.k.parked)
    assert user == "u:user-b" and before <= until <= after
    assert text_hash(redis_client, shard.k.parked_why) == {}


def test_a_settle_without_the_lease_is_lease_lost_and_changes_nothing(
    shard: Shard, redis_client: redis.Redis, keys: Keys, namespace: str
) -> None:
    redis_client.set(shard.k.fingerprint("u:user-a"), b"fa")
    before = snapshot(redis_client, namespace)
    a = dead_letter(entry.decode(shard.inflight[0]), "invalid", 1111)
    member = waiting.member(entry.decode(shard.inflight[1]))
    with pytest.raises(LeaseLost):
        shard.settlements.settle(SHARD, "not-the-token", Settlement(
            delivered=1, requests=1, trim=1, dead=[a], error="x",
            parked=[Parking("u:user-b", 1000, "held", [member])],
        ))  # fmt: skip
    assert snapshot(redis_client, namespace) == before


def test_requests_are_counted_by_status(shard: Shard, redis_client: redis.Redis, keys: Keys) -> None:
    shard.settle(Settlement(delivered=1, requests=1, trim=1, status="200"))
    shard.settle(Settlement(requests=1, status="429"))
    shard.settle(Settlement(requests=1, status="no_answer"))
    shard.settle(Settlement(delivered=1, requests=1, trim=1, status="200"))
    shard.settle(Settlement(status="500"))  # settles no request: nothing to count
    stats = text_hash(redis_client, shard.k.stats)
    assert {k: v for k, v in stats.items() if k.startswith("status:")} == {
        "status:200": "2", "status:429": "1", "status:no_answer": "1"}  # fmt: skip
    assert gather(redis_client, keys, 8)["requests_by_status"] == {"200": 2, "429": 1, "no_answer": 1}
