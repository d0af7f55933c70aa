"""Pure pieces of the wire: queue entries, sharding, the form encoder, batch cutting."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from producers.contract import entry
from producers.contract.errors import InvalidRecord
from worker.drain import batcher
from worker.drain.sink import batch_json, escape, form_body


@given(
    key=st.text(min_size=1, max_size=50),
    data=st.binary(max_size=200),
    seq=st.integers(0, 10**15 - 1),
    ms=st.integers(0, 2**50),
    n=st.integers(0, 10**6),
)
def test_entries_round_trip(key: str, data: bytes, seq: int, ms: int, n: int) -> None:
    raw = entry.encode(key, data, seq, ms, n)
    decoded = entry.decode(raw)
    assert (decoded.user_key, decoded.data, decoded.seq) == (key, data, seq)
    assert (decoded.enqueued_ms, decoded.attempts) == (ms, n)
    again = entry.with_attempts(decoded, n + 1)
    assert (again.attempts, again.seq, again.enqueued_ms) == (n + 1, seq, ms)
    # what a producer sends is the entry without its head, which the enqueue script writes
    assert raw == b"2|%d|%d|" % (seq, ms) + entry.tail(key, data, n)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"garbage",
        b"1|1|0|1|a|{}",
        b"2|x|1|0|1|a|{}",
        b"2|1|1|0|9|a|{}",
        b"2|1|1|0|1|ab{}",
        b"2|1|1|0|1|a",
        b"2||1|0|1|a|{}",
        b"2|1|-1|0|1|a|{}",
        b"2|1|1| 0|1|a|{}",
        b"2|1|1|0|-1|a|{}",
    ],
)
def test_malformed_entries_are_refused_not_guessed(raw: bytes) -> None:
    with pytest.raises(InvalidRecord) as caught:
        entry.decode(raw)
    assert caught.value.rule == "undecodable"


def test_sharding_is_stable_and_spreads_users() -> None:
    shards = [entry.shard_of(f"u:user-{i}", 16) for i in range(16_000)]
    assert entry.shard_of("u:user-1", 16) == entry.shard_of("u:user-1", 16)
    counts = [shards.count(s) for s in range(16)]
    assert min(counts) > 800 and max(counts) < 1200


json_text = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(key=st.text(min_size=1, max_size=40), value=json_text)
def test_form_body_parses_back_to_the_same_fields(key: str, value: object) -> None:
    identification = orjson.dumps([{"user_id": "user-1", "user_properties": {"v": value}}])
    body = form_body(key, identification)
    assert body.isascii()
    fields = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    assert fields == {"api_key": [key], "identification": [identification.decode()]}
    # The same text urlencode would give, only smaller: JSON's quotes and braces are left as they are.
    assert parse_qs(urlencode({"api_key": key, "identification": identification.decode()})) == fields


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        (b"a b", b"a+b"), (b"a+b", b"a%2Bb"), (b"50%", b"50%25"), (b"a&b=c;d#e", b"a%26b%3Dc%3Bd%23e"),
        (b'{"k":"v"}', b'{"k":"v"}'), ("é".encode(), b"%C3%A9"), (b"\x7f", b"%7F"),
    ],
)  # fmt: skip
def test_escape_touches_only_what_a_form_parser_reads_specially(raw: bytes, escaped: bytes) -> None:
    assert escape(raw) == escaped


def test_batch_json_joins_records_without_decoding_them() -> None:
    assert orjson.loads(batch_json([b'{"a":1}', b'{"b":2}'])) == [{"a": 1}, {"b": 2}]
    assert batch_json([]) == b"[]"


@pytest.mark.parametrize(
    ("sizes", "max_count", "max_bytes", "expected"),
    [
        ([], 10, 100, 0),
        ([10] * 5, 10, 1000, 5),
        ([10] * 5, 3, 1000, 3),
        # [a,b,c] of 10 bytes each: 2 brackets + 30 + 2 commas = 34
        ([10] * 5, 10, 34, 3),
        ([10] * 5, 10, 33, 2),
        ([500], 10, 100, 1),  # too large alone still goes alone
        ([10, 500, 10], 10, 100, 1),
    ],
)
def test_take_cuts_by_count_and_bytes(sizes: list[int], max_count: int, max_bytes: int, expected: int) -> None:
    assert batcher.take(sizes, max_count, max_bytes) == expected


@given(sizes=st.lists(st.integers(1, 300), max_size=200), max_count=st.integers(1, 50), max_bytes=st.integers(50, 3000))
def test_take_covers_everything_in_order_within_limits(sizes: list[int], max_count: int, max_bytes: int) -> None:
    start = 0
    while start < len(sizes):
        n = batcher.take(sizes[start:], max_count, max_bytes)
        chunk = sizes[start : start + n]
        assert 1 <= len(chunk) <= max_count
        assert len(chunk) == 1 or batcher.array_size(chunk) <= max_bytes
        # as many as fit: one more would break a limit
        if start + n < len(sizes):
            assert n == max_count or batcher.array_size(sizes[start : start + n + 1]) > max_bytes
        start += n
