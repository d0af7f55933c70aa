"""What to send (worker/drain/plan.py), as tables: items with and without merging, the budget's
shortfall and what it allows now, and how the next batch is cut."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson
import pytest

from producers.contract import entry
from producers.contract.entry import Entry
from worker.drain import plan
from worker.drain.plan import Batch, Item
from worker.drain.sink import batch_json, escape, form_body


def e(user: str, seq: int, props: dict[str, Any] | None = None, *, op: str = "$set") -> Entry:
    """Update ``seq`` of ``user``: ``op`` of ``props`` (by default a property named after the seq)."""
    record = {"user_id": user, "user_properties": {op: props if props is not None else {f"p{seq}": seq}}}
    return entry.decode(entry.encode(f"u:{user}", orjson.dumps(record), seq, 0))


def merged(user: str, ops: dict[str, Any]) -> bytes:
    return orjson.dumps({"user_id": user, "user_properties": ops})


def shape(items: Sequence[Item]) -> list[tuple[bytes, list[int]]]:
    """Each item as (its JSON, the seqs of the entries it carries)."""
    return [(i.data, [x.seq for x in i.entries]) for i in items]


# -- items ----------------------------------------------------------------------------------------
A1, B2, A3, A4 = e("user-a", 1), e("user-b", 2), e("user-a", 3), e("user-a", 4)
A_INSERT = e("user-a", 5, {"p1": "x"}, op="$preInsert")
A_SET_AFTER = e("user-a", 6)
BAD_1 = entry.decode(entry.encode("u:user-c", b"{not json", 7, 0))
BAD_2 = entry.decode(entry.encode("u:user-c", b'{"user_id":"user-c"}', 8, 0))

ITEMS = [
    # no merging: one item per entry, in order
    ([A1, B2, A3], False, [(A1.data, [1]), (B2.data, [2]), (A3.data, [3])]),
    # merging: a's updates fold into one identification, placed where a's first update was
    ([A1, B2, A3], True, [(merged("user-a", {"$set": {"p1": 1, "p3": 3}}), [1, 3]), (B2.data, [2])]),
    ([A1, A3, A4], True, [(merged("user-a", {"$set": {"p1": 1, "p3": 3, "p4": 4}}), [1, 3, 4])]),
    # a user's single update is sent as it is (its bytes, not a re-encoding)
    ([B2], True, [(B2.data, [2])]),
    # an update that does not compose with the run before ($preInsert after $set of the same
    # property) starts a new run: the runs stay apart, in order
    ([A1, A_INSERT, A_SET_AFTER], True,
     [(A1.data, [1]), (merged("user-a", {"$preInsert": {"p1": "x"}, "$set": {"p6": 6}}), [5, 6])]),
    # a user with a record that is not JSON: not ours to judge here, sent as is
    ([BAD_1, BAD_2], True, [(BAD_1.data, [7]), (BAD_2.data, [8])]),
]  # fmt: skip


@pytest.mark.parametrize(("decoded", "merge", "expected"), ITEMS)
def test_items(decoded: list[Entry], merge: bool, expected: list[tuple[bytes, list[int]]]) -> None:
    items = plan.items(decoded, merge=merge, max_record_bytes=64 * 1024)
    assert shape(items) == expected
    # whatever the grouping, every entry is carried once, and each user's in order
    assert sorted(plan.raw(items)) == sorted(x.raw for x in decoded)
    for user in {x.user_key for x in decoded}:
        assert [x.seq for x in plan.entries_of(items) if x.user_key == user] == sorted(
            x.seq for x in decoded if x.user_key == user
        )


def test_a_merge_too_large_for_one_record_is_declined() -> None:
    big = [e("user-a", i, {f"p{i}": "x" * 100}) for i in range(1, 5)]
    # each fits alone, two merged fit, four merged do not: halves are merged instead
    limit = len(big[0].data) * 2 + 10
    items = plan.items(big, merge=True, max_record_bytes=limit)
    assert [[x.seq for x in i.entries] for i in items] == [[1, 2], [3, 4]]
    assert all(len(i.data) <= limit for i in items)


def test_unmerge_gives_each_update_back_in_order() -> None:
    [item] = plan.items([A1, A3, A4], merge=True, max_record_bytes=64 * 1024)
    assert shape(plan.unmerge(item)) == [(A1.data, [1]), (A3.data, [3]), (A4.data, [4])]
    assert item.user_key == "u:user-a"


# -- the budget -----------------------------------------------------------------------------------
def single(*users: str) -> list[Item]:
    return [Item(e(u, n).data, (e(u, n),)) for n, u in enumerate(users, 1)]


@pytest.mark.parametrize(
    ("users", "left", "missing"),
    [
        (["a", "a", "b"], {}, {"u:a": 2, "u:b": 1}),
        (["a", "a", "b"], {"u:a": 2, "u:b": 1}, {}),
        (["a", "a", "b"], {"u:a": 1}, {"u:a": 1, "u:b": 1}),
        (["a", "a", "b"], {"u:a": 5, "u:c": 1}, {"u:b": 1}),  # more reserved than needed: nothing
        (["a", "a", "b"], {"u:a": 0}, {"u:a": 2, "u:b": 1}),
        ([], {"u:a": 1}, {}),
    ],
)
def test_shortfall(users: list[str], left: dict[str, int], missing: dict[str, int]) -> None:
    assert plan.shortfall(single(*users), left) == missing


@pytest.mark.parametrize(
    ("users", "left", "limited", "sent", "waits"),
    [
        # nobody limited: everything goes
        (["a", "b", "a"], {}, set(), [1, 2, 3], {}),
        # a may have one more: its first goes, the rest of it waits, in order; b goes
        (["a", "b", "a", "a"], {"u:a": 1}, {"u:a"}, [1, 2], {"u:a": [3, 4]}),
        # a may have none
        (["a", "b", "a"], {"u:a": 0}, {"u:a"}, [2], {"u:a": [1, 3]}),
        (["a", "b", "a"], {}, {"u:a"}, [2], {"u:a": [1, 3]}),
        # two limited users, each its own share
        (["a", "b", "a", "b", "c"], {"u:a": 1, "u:b": 2}, {"u:a", "u:b"}, [1, 2, 4, 5], {"u:a": [3]}),
    ],
)
def test_within(
    users: list[str], left: dict[str, int], limited: set[str], sent: list[int], waits: dict[str, list[int]]
) -> None:
    keep, wait = plan.within(single(*users), left, limited)
    assert [i.entries[0].seq for i in keep] == sent
    assert {u: [i.entries[0].seq for i in items] for u, items in wait.items()} == waits


# -- the next batch -------------------------------------------------------------------------------
def sized(n: int, size: int = 10) -> list[Item]:
    """``n`` items whose JSON is ``size`` bytes each."""
    return [Item(b'"' + b"%0*d" % (size - 2, i) + b'"', (e("user-a", i),)) for i in range(n)]


def non_ascii(n: int) -> list[Item]:
    """``n`` items of 10 bytes of JSON each (four two-byte letters), 26 bytes once form-encoded."""
    return [Item('"éééé"'.encode(), (e("user-a", i),)) for i in range(n)]


def form(records: list[bytes]) -> bytes:
    return escape(batch_json(records))


Encode = Callable[[list[bytes]], bytes]

BATCHES = [
    # items, careful, max count, max bytes, overhead, splits, encode -> size, splits after
    (sized(5), False, 3, 10_000, 0, [], batch_json, 3, []),  # the count
    (sized(5), False, 10, 23, 0, [], batch_json, 2, []),  # the bytes: [a,b] is 23
    (sized(5), False, 10, 33, 10, [], batch_json, 2, []),  # the body's overhead leaves less room
    (sized(3, 50), False, 10, 20, 0, [], batch_json, 1, []),  # too large alone: goes alone
    (sized(5), True, 10, 10_000, 0, [2, 3], batch_json, 1, [2, 3]),  # careful: one record at a time
    (sized(5), False, 10, 10_000, 0, [2, 3], batch_json, 2, [3]),  # a split's first part
    (sized(5), False, 3, 10_000, 0, [4, 1], batch_json, 3, [1, 1]),  # a part cut shorter: its rest goes next
    # non-ASCII JSON: 9 fit as JSON (100 bytes), but each grows to 26 bytes encoded: 3 fit (82)
    (non_ascii(10), False, 10, 100, 0, [], form, 3, []),
    (non_ascii(10), False, 10, 100, 0, [5], form, 3, [2]),
    (non_ascii(1), False, 10, 20, 0, [], form, 1, []),  # still alone when too large encoded
]  # fmt: skip


@pytest.mark.parametrize(
    ("pending", "careful", "max_count", "max_bytes", "overhead", "splits", "encode", "size", "after"), BATCHES
)
def test_next_batch(
    pending: list[Item], careful: bool, max_count: int, max_bytes: int, overhead: int, splits: list[int],
    encode: Encode, size: int, after: list[int],
) -> None:  # fmt: skip
    given = list(splits)
    batch = plan.next_batch(pending, careful=careful, max_count=max_count, max_bytes=max_bytes, overhead=overhead,
                            splits=splits, encode=encode)  # fmt: skip
    assert batch == Batch(size, encode([i.data for i in pending[:size]]), after)
    assert splits == given  # the caller's list is not changed
    if size > 1:
        assert len(batch.body) <= max_bytes


def test_next_batch_with_the_real_form_body() -> None:
    pending = non_ascii(10)
    overhead = len(form_body("key", b""))
    max_bytes = overhead + 100
    batch = plan.next_batch(pending, careful=False, max_count=10, max_bytes=max_bytes, overhead=overhead, splits=[],
                            encode=lambda records: form_body("key", batch_json(records)))  # fmt: skip
    assert batch.size == 3 and len(batch.body) == overhead + 82 <= max_bytes
