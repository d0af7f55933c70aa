"""Helpers the tests share: waiting for a condition, building records, checking what arrived."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

#: The API key every test worker uses; tests look for it in logs and Redis and must not find it.
SENTINEL_API_KEY = "SENTINEL-KEY-7f3a9c1e5b"


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``.

    Tests synchronise on conditions (a count reached, a request in progress), never on sleeps;
    the short pause between polls only keeps the loop from spinning.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def seq_records(users: int, per_user: int, prefix: str = "user") -> list[dict[str, Any]]:
    """``per_user`` numbered updates for each user, interleaved across users as services send them."""
    return [
        {"user_id": f"{prefix}-{u:05d}", "user_properties": {"$set": {"seq": i}}}
        for i in range(per_user)
        for u in range(users)
    ]


def by_user(accepted: Iterable[dict[str, Any]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for record in accepted:
        out[record["user_id"]].append(record["user_properties"]["$set"]["seq"])
    return out


def check_delivery(accepted: list[dict[str, Any]], users: int, per_user: int, prefix: str = "user") -> int:
    """Every record arrived, each user's in enqueue order; returns how many arrived twice.

    A record sent again after a crash is a repeat of one already seen; once repeats are removed,
    each user's sequence must be exactly 0, 1, ..., per_user - 1.
    """
    duplicates = 0
    for user, seqs in by_user(accepted).items():
        seen: set[int] = set()
        first_time = []
        for s in seqs:
            if s in seen:
                duplicates += 1
            else:
                seen.add(s)
                first_time.append(s)
        assert first_time == list(range(per_user)), f"{user} received {seqs}"
    assert len(by_user(accepted)) == users, f"{len(by_user(accepted))} users received updates, expected {users}"
    return duplicates


def redis_holds(client: Any, pattern: str, needle: bytes) -> list[bytes]:
    """The keys matching ``pattern`` whose name or any value contains ``needle``.

    Values are read by type (DUMP output is compressed and could hide the needle).
    """
    found = []
    for key in client.scan_iter(pattern):
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key)]
        elif kind == "hash":
            values = [v for pair in client.hgetall(key).items() for v in pair]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        elif kind == "set":
            values = list(client.smembers(key))
        else:
            values = [repr(client.xrange(key)).encode()] if kind == "stream" else []
        if needle in key or any(needle in (v or b"") for v in values):
            found.append(key)
    return found
