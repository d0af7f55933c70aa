"""Amplitude's limits, as pure decisions: whom a 429 holds, what the hourly budget allows."""

from __future__ import annotations

from typing import Any

import pytest

from producers.contract.entry import decode, encode
from worker.drain.budget import Allowance, allowance
from worker.drain.outcome import Outcome, Verdict
from worker.drain.plan import Item
from worker.drain.remedies import throttled_users


@pytest.mark.parametrize(
    ("body", "batch_users", "held"),
    [
        ({"throttled_users": ["u1"]}, ["u1", "u2"], {"u:u1"}),
        ({"throttled_devices": ["d9"]}, ["u1", "d:d9"], {"d:d9"}),
        ({"throttled_events": [1]}, ["u1", "u2", "u3"], {"u:u2"}),
        ({}, ["u1", "u2"], {"u:u1", "u:u2"}),
    ],
)
def test_who_a_429_holds(body: dict[str, Any], batch_users: list[str], held: set[str]) -> None:
    outcome = Outcome(
        Verdict.THROTTLED, 429,
        throttled_users=frozenset(body.get("throttled_users", [])),
        throttled_devices=frozenset(body.get("throttled_devices", [])),
        throttled_indices=frozenset(body.get("throttled_events", [])),
    )  # fmt: skip
    batch = [item_for(u) for u in batch_users]
    assert throttled_users(outcome, batch) == held


def test_a_throttled_device_holds_the_user_of_its_records() -> None:
    outcome = Outcome(Verdict.THROTTLED, 429, throttled_devices=frozenset({"device-7"}))
    batch = [item_for("u1", b'{"user_id":"u1","device_id":"device-7"}'), item_for("u2")]
    held = throttled_users(outcome, batch)
    assert "u:u1" in held and "u:u2" not in held


def item_for(key: str, data: bytes = b"{}") -> Item:
    user_key = key if key.startswith("d:") else f"u:{key}"
    return Item(data, (decode(encode(user_key, data, 1, 0)),))


@pytest.mark.parametrize(
    ("counts", "wanted", "limit", "now_ms", "expected"),
    [
        ([0, 0, 0, 0, 0, 0, 0], 3, 5, 10_000, Allowance(3, 0)),
        ([1, 0, 0, 0, 0, 0, 2], 2, 5, 10_000, Allowance(2, 0)),
        ([1, 0, 0, 0, 0, 0, 2], 4, 5, 10_000, Allowance(2, 1_000)),  # slot 4 stops counting at 11 s
        # slot length 1 s, now in slot 10: the counts are slots 4..10; slot 4 stops counting at 11 s
        ([2, 1, 0, 0, 0, 0, 2], 3, 5, 10_500, Allowance(0, 500)),
        ([0, 0, 0, 0, 0, 0, 5], 1, 5, 10_500, Allowance(0, 6_500)),
        ([0, 0, 0, 0, 0, 0, 3], 4, 5, 10_500, Allowance(2, 6_500)),
    ],
)
def test_budget_allowance(counts: list[int], wanted: int, limit: int, now_ms: int, expected: Allowance) -> None:
    assert allowance(counts, wanted, limit, now_ms, slot_ms=1000) == expected
