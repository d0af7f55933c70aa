"""The hourly budget's scripts (worker/lua/budget_reserve.lua, budget_refund.lua, budget_move.lua)
against a real redis-server: what each user may be sent now, counted in the current ten-minute slot,
given back when not sent, and moved to the slot a claim ended in."""

from __future__ import annotations

import pytest
import redis

from producers.contract.keys import Keys, ShardKeys
from producers.contract.scripts import Script
from tests.support import pttl, redis_ms, text_hash
from worker.drain.budget import SLOTS, Allowance, BudgetStore

LIMIT = 3
WINDOW_S = 3600
SLOT_MS = WINDOW_S * 1000 // SLOTS
NOW = 1000 * SLOT_MS + 1234  # the script reads no clock: the caller's (Redis's) time picks the slot
CURRENT = NOW // SLOT_MS


@pytest.fixture
def budget(redis_client: redis.Redis) -> BudgetStore:
    return BudgetStore(redis_client, LIMIT, WINDOW_S)


@pytest.fixture
def k(keys: Keys) -> ShardKeys:
    return keys.shard(4)


def counts(client: redis.Redis, k: ShardKeys, slot: int) -> dict[str, str]:
    """A slot's counts per user, without its mark."""
    return {u: n for u, n in text_hash(client, k.budget(slot)).items() if u != "#max"}


def mark(client: redis.Redis, k: ShardKeys, slot: int) -> int:
    return int(client.hget(k.budget(slot), "#max") or 0)


def test_what_is_within_the_budget_is_counted_in_the_current_slot(
    budget: BudgetStore, redis_client: redis.Redis, k: ShardKeys
) -> None:
    reserved: dict[str, int] = {"u:a": 1}
    reservation = budget.reserve(k, {"u:a": 1, "u:b": 3}, NOW, reserved)
    assert reservation.slot_key == k.budget(CURRENT)
    assert reservation.limited == {}
    assert reserved == {"u:a": 2, "u:b": 3}
    assert counts(redis_client, k, CURRENT) == {"u:a": "1", "u:b": "3"}
    assert mark(redis_client, k, CURRENT) == 3  # the highest count in the slot
    # the slot outlives the six after it, during which it is still summed
    assert budget.ttl_ms == SLOT_MS * (SLOTS + 2)
    assert budget.ttl_ms - 1000 < pttl(redis_client, k.budget(CURRENT)) <= budget.ttl_ms


def test_a_user_past_its_budget_is_allowed_what_is_left_and_told_when_more_may_go(
    budget: BudgetStore, redis_client: redis.Redis, k: ShardKeys
) -> None:
    # Given a: 1 sent six slots ago, 1 three slots ago; b: 3 sent in the current slot; c: 2 seven
    # slots ago (no longer summed)
    redis_client.hset(k.budget(CURRENT - 6), "u:a", 1)
    redis_client.hset(k.budget(CURRENT - 3), "u:a", 1)
    redis_client.hset(k.budget(CURRENT), "u:b", 3)
    redis_client.hset(k.budget(CURRENT - 7), "u:c", 2)
    reserved: dict[str, int] = {}
    reservation = budget.reserve(k, {"u:a": 3, "u:b": 1, "u:c": 3}, NOW, reserved)
    # Then a may have one now, the next once the slot six back ages out; b none until its own slot does
    assert reservation.limited == {
        "u:a": Allowance(1, (CURRENT + 1) * SLOT_MS - NOW),
        "u:b": Allowance(0, (CURRENT + SLOTS + 1) * SLOT_MS - NOW),
    }
    assert reserved == {"u:a": 1, "u:b": 0, "u:c": 3}
    # and only what is allowed is counted: b, allowed nothing, is not written
    assert counts(redis_client, k, CURRENT) == {"u:a": "1", "u:b": "3", "u:c": "3"}


def test_the_script_answers_only_for_limited_users_with_their_counts_oldest_first(
    redis_client: redis.Redis, k: ShardKeys
) -> None:
    redis_client.hset(k.budget(CURRENT - 6), "u:a", 2)
    redis_client.hset(k.budget(CURRENT), "u:a", 1)
    slots = [k.budget(s) for s in range(CURRENT - SLOTS, CURRENT + 1)]
    # users u:a, u:b, u:c; a wants 2, c wants 4 (positions 0 and 2), b one
    args = [LIMIT, 60_000, 3, "u:a", "u:b", "u:c", 2, 0, 2, 2, 4]
    reply = Script(redis_client, "worker", "budget_reserve")(slots, args)
    # {position, allowed, the count in each of the seven slots}: a allowed none of 2, c 3 of 4
    assert reply == [0, 0, 2, 0, 0, 0, 0, 0, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0]
    assert counts(redis_client, k, CURRENT) == {"u:a": "1", "u:b": "1", "u:c": "3"}
    assert 59_000 < pttl(redis_client, k.budget(CURRENT)) <= 60_000


def test_a_refund_gives_back_what_was_not_sent_and_drops_emptied_users(
    budget: BudgetStore, redis_client: redis.Redis, k: ShardKeys
) -> None:
    slot = k.budget(CURRENT)
    redis_client.hset(slot, mapping={"u:a": 3, "u:b": 2, "u:c": 1})
    budget.refund(slot, {"u:a": 1, "u:b": 2, "u:c": 0, "u:d": 0})
    assert counts(redis_client, k, CURRENT) == {"u:a": "2", "u:c": "1"}
    # more than was counted (the slot expired meanwhile and was written again) leaves nothing below 0
    Script(redis_client, "worker", "budget_refund")([slot], ["u:a", 5])
    assert counts(redis_client, k, CURRENT) == {"u:c": "1"}


def test_a_slot_left_with_its_mark_only_is_deleted(
    budget: BudgetStore, redis_client: redis.Redis, k: ShardKeys
) -> None:
    # Given a slot whose one user is refunded everything: its mark would count nobody, yet keep the
    # sum of the marks high, and every user of a claim near the limit counted one by one
    budget.reserve(k, {"u:a": 2}, NOW, {})
    budget.refund(k.budget(CURRENT), {"u:a": 1})
    assert redis_client.exists(k.budget(CURRENT))
    budget.refund(k.budget(CURRENT), {"u:a": 1})
    assert not redis_client.exists(k.budget(CURRENT))


def test_a_claim_that_ended_in_its_own_slot_is_closed_like_a_refund(
    budget: BudgetStore, redis_client: redis.Redis, k: ShardKeys
) -> None:
    # Given a reserved 3 and b 1 in the current slot; a sent 2, b nothing
    budget.reserve(k, {"u:a": 3, "u:b": 1}, NOW, {})
    # When the worker's bounds on Redis's clock name the reserved slot only
    budget.move(k, k.budget(CURRENT), (NOW, NOW + 1), {"u:a": 3, "u:b": 1}, {"u:a": 2})
    # Then what was sent stays counted there, the rest is given back, and the mark stays a bound
    assert (counts(redis_client, k, CURRENT), mark(redis_client, k, CURRENT)) == ({"u:a": "2"}, 3)
    assert redis_client.keys(k.budget(0)[:-1] + "*") == [k.budget(CURRENT).encode()]


def test_a_claim_that_ended_in_a_later_slot_counts_what_it_sent_there(
    budget: BudgetStore, redis_client: redis.Redis, k: ShardKeys
) -> None:
    # Given a reserved 3 and b 1 in the current slot, and a later slot that counts a 1 and c 5
    budget.reserve(k, {"u:a": 3, "u:b": 1}, NOW, {})
    later = CURRENT + 2
    redis_client.hset(k.budget(later), mapping={"u:a": 1, "u:c": 5, "#max": 5})
    # When the claim ends after that slot began (Redis's clock is far later: clamped to the bound)
    budget.move(k, k.budget(CURRENT), (NOW, later * SLOT_MS), {"u:a": 3, "u:b": 1}, {"u:a": 2})
    # Then what a was sent is counted in the later slot, b's reservation is given back, and the
    # slot reserved in, left with its mark only, is gone
    assert counts(redis_client, k, later) == {"u:a": "3", "u:c": "5"}
    assert mark(redis_client, k, later) == 5
    assert not redis_client.exists(k.budget(CURRENT))
    assert budget.ttl_ms - 1000 < pttl(redis_client, k.budget(later)) <= budget.ttl_ms


@pytest.mark.parametrize("ahead", [False, True])
def test_what_was_sent_moves_to_the_slot_redis_s_clock_is_in_within_the_worker_s_bounds(
    budget: BudgetStore, redis_client: redis.Redis, k: ShardKeys, ahead: bool
) -> None:
    # Given bounds on Redis's clock that hold it (the slot now, or the next as it turns), or that
    # begin two slots ahead of it (a bound is a bound: the earliest is the slot counted in)
    first = redis_ms(redis_client) // SLOT_MS + (2 if ahead else 0)
    budget.reserve(k, {"u:a": 2}, NOW, {})
    budget.move(k, k.budget(CURRENT), (first * SLOT_MS, (first + 3) * SLOT_MS), {"u:a": 2}, {"u:a": 2})
    [key] = redis_client.keys(k.budget(0)[:-1] + "*")
    slot = int(key.rsplit(b":", 1)[1])
    assert slot == first if ahead else first <= slot <= first + 1
    assert (counts(redis_client, k, slot), mark(redis_client, k, slot)) == ({"u:a": "2"}, 2)


@pytest.mark.parametrize(
    ("marks", "wanted", "hmgets"),
    [
        # the marks of the seven slots plus the most one user wants, against LIMIT = 3; HMGET reads
        # every user's counts in one slot, and only slots that exist are read
        ({}, {"u:a": 1, "u:b": 1}, 0),
        ({CURRENT: 1}, {"u:a": 1}, 1),  # 1 + 1 <= 3: nobody can pass, the current slot only
        ({CURRENT - 6: 1}, {"u:a": 2}, 0),  # 1 + 2 <= 3: the older slot is not read
        ({CURRENT - 6: 1, CURRENT: 1}, {"u:a": 2}, 2),  # 2 + 2 > 3: each user counted in both
        ({CURRENT - 7: 3}, {"u:a": 3}, 0),  # a slot no longer summed does not count
    ],
)
def test_the_marks_skip_the_older_slots_only_when_nobody_can_reach_the_limit(
    redis_client: redis.Redis, k: ShardKeys, marks: dict[int, int], wanted: dict[str, int], hmgets: int
) -> None:
    # Given slots whose mark is set (on another user, z, so that a and b have nothing counted)
    for slot, high in marks.items():
        redis_client.hset(k.budget(slot), mapping={"u:z": high, "#max": high})
    budget = BudgetStore(redis_client, LIMIT, WINDOW_S)
    redis_client.config_resetstat()
    reservation = budget.reserve(k, wanted, NOW, {})
    # Then the decision is the exact one either way (a and b have nothing counted: all may go)
    assert reservation.limited == {}
    assert counts(redis_client, k, CURRENT) == {**({"u:z": str(marks[CURRENT])} if CURRENT in marks else {}),
                                                **{u: str(n) for u, n in wanted.items()}}  # fmt: skip
    # and the older slots were read per user only when a user might have been near the limit
    assert redis_client.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0) == hmgets


def test_a_mark_stays_a_bound_after_a_refund_so_the_decision_stays_exact(
    budget: BudgetStore, redis_client: redis.Redis, k: ShardKeys
) -> None:
    # Given a that was counted 3 (its slot's mark 3) and refunded 2: its count is 1, the mark stays 3
    budget.reserve(k, {"u:a": 3}, NOW, {})
    budget.refund(k.budget(CURRENT), {"u:a": 2})
    assert (counts(redis_client, k, CURRENT), mark(redis_client, k, CURRENT)) == ({"u:a": "1"}, 3)
    # When a wants 3 more, the marks say it might pass, so it is counted exactly: 2 may go
    reservation = budget.reserve(k, {"u:a": 3}, NOW, {})
    assert reservation.limited["u:a"].allowed == 2
    assert counts(redis_client, k, CURRENT) == {"u:a": "3"}


def test_a_slot_without_a_mark_is_counted_user_by_user(
    budget: BudgetStore, redis_client: redis.Redis, k: ShardKeys
) -> None:
    # Given a slot written before slots had marks (an upgrade): a has 3, the limit, in it
    redis_client.hset(k.budget(CURRENT - 2), "u:a", 3)
    # Then a is counted exactly and may have nothing, whatever the other slots' marks say
    reservation = budget.reserve(k, {"u:a": 1, "u:b": 1}, NOW, {})
    assert reservation.limited["u:a"].allowed == 0 and "u:b" not in reservation.limited
