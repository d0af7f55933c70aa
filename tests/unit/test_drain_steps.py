"""The drain's pure steps, as tables: how a settle changes inflight, which claimed updates wait
behind a user's waiting ones, how waiting members sort, how a request size learned from a 413
recovers, and the bounds the drain's clock puts on Redis's."""

from __future__ import annotations

import time

import pytest

from producers.contract.entry import decode, encode
from worker.drain import waiting
from worker.drain.clock import RedisClock
from worker.drain.request_size import request_size_limit
from worker.drain.settle import inflight_change


def _e(user: str, seq: int) -> bytes:
    return encode(user, b"{}", seq, 0)


A, B, C = _e("u:a", 1), _e("u:b", 2), _e("u:c", 3)


@pytest.mark.parametrize(
    ("current", "desired", "expected"),
    [
        ([A, B, C], [B, C], (1, None)),  # the head was delivered: trim it
        ([A, B, C], [], (3, None)),
        ([A, B, C], [A, B, C], (0, None)),  # nothing changed (a split, a config error)
        ([A, B, C], [A, C], (0, [A, C])),  # a record in the middle dead-lettered or parked
        ([A, B, C], [B, A], (0, [B, A])),  # merged items grouped by user
        ([A], [_e("u:a", 1) + b"x"], (0, [_e("u:a", 1) + b"x"])),  # attempts rewritten
    ],
)
def test_a_settle_trims_inflight_when_it_can(
    current: list[bytes], desired: list[bytes], expected: tuple[int, list[bytes] | None]
) -> None:
    assert inflight_change(current, desired) == expected


@pytest.mark.parametrize(
    ("claimed", "oldest", "sent", "back"),
    [
        # nobody waits: everything goes
        ([("u:a", 5), ("u:b", 6)], {}, [5, 6], {}),
        # a's queued updates were claimed while it waits with 3: they wait behind it
        ([("u:a", 5), ("u:b", 6), ("u:a", 7)], {"u:a": 3}, [6], {"u:a": [5, 7]}),
        # released (or retried) updates are older than all a waits with: they go
        ([("u:a", 1), ("u:a", 2), ("u:b", 6)], {"u:a": 3}, [1, 2, 6], {}),
        # a replayed dead letter (seq 1) waits: a's newer in-flight update waits for it
        ([("u:a", 4), ("u:b", 6)], {"u:a": 1}, [6], {"u:a": [4]}),
    ],
)
def test_an_update_goes_only_if_nothing_older_of_its_user_waits(
    claimed: list[tuple[str, int]], oldest: dict[str, int], sent: list[int], back: dict[str, list[int]]
) -> None:
    entries = [decode(_e(user, seq)) for user, seq in claimed]
    go, wait = waiting.split(entries, oldest)
    assert [e.seq for e in go] == sent
    assert {u: [decode(waiting.entry_of(m, u)).seq for m in ms] for u, ms in wait.items()} == back


def test_waiting_members_sort_by_user_then_seq() -> None:
    members = [waiting.member(decode(_e(u, s))) for u, s in [("u:b", 2), ("u:a", 10), ("u:a", 9), ("u:ab", 1)]]
    order = [(m.split(b"|")[0], decode(waiting.entry_of(m, m.split(b":", 1)[1].split(b"|")[0].decode())).seq)
             for m in sorted(members)]  # fmt: skip
    assert order == [(b"3:u:a", 9), (b"3:u:a", 10), (b"3:u:b", 2), (b"4:u:ab", 1)]


@pytest.mark.parametrize(
    ("learned", "age_s", "expected"),
    [
        (0, 0, 950_000),  # nothing learned
        (100_000, 10, 100_000),  # learned just now
        (100_000, 3_600, 200_000),  # one quiet hour: probe at twice the size
        (100_000, 3 * 3_600, 800_000),
        (100_000, 10 * 3_600, 950_000),  # never above the configured size
        (1_024, 30 * 86_400, 950_000),
    ],
)
def test_a_request_size_learned_from_a_413_recovers_after_quiet_hours(learned: int, age_s: int, expected: int) -> None:
    assert request_size_limit(950_000, learned, age_s * 1000, 3_600_000) == expected


def test_the_clock_bounds_redis_s_time_from_the_answer_and_from_the_asking() -> None:
    # Given Redis's clock read at 1,000,000 ms by a call asked 0.5 s before its answer came
    clock = RedisClock()
    asked = time.monotonic() - 0.5
    clock.sync(1_000_000, asked)
    # Then the earliest Redis's clock can be now counts from the answer, the latest from the asking
    earliest, latest = clock.now_ms(), clock.latest_ms()
    assert 1_000_000 <= earliest < 1_000_000 + 400
    assert latest >= earliest + 500
    # and with no asking time given, both count from the answer
    clock.sync(2_000_000)
    assert 0 < clock.latest_ms() - clock.now_ms() <= 2
