"""How a record sits in a Redis list, and which shard it goes to.

An entry is ``1|<enqueued_ms>|<attempts>|<key length>|<user key>|<identification JSON>``.
The header lets a drainer group, order and age records without parsing their JSON, and lets the
batch body be built by joining the JSON parts as they are.  ``attempts`` counts the requests that
carried the record and failed in a retryable way; it is rewritten only on that (rare) path.
"""

from __future__ import annotations

import time
import zlib
from typing import NamedTuple

from producers.errors import InvalidRecord

FORMAT = b"1"


class Entry(NamedTuple):
    enqueued_ms: int
    attempts: int
    user_key: str
    data: bytes
    raw: bytes


def shard_of(user_key: str, shards: int) -> int:
    """A stable shard for the key: every process, producer or worker, must compute the same one."""
    return zlib.crc32(user_key.encode()) % shards


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def encode(user_key: str, data: bytes, enqueued_ms: int, attempts: int = 0) -> bytes:
    key = user_key.encode()
    return b"1|%d|%d|%d|%b|%b" % (enqueued_ms, attempts, len(key), key, data)


def decode(raw: bytes) -> Entry:
    """Parse an entry; a malformed one raises InvalidRecord (the drain dead-letters it as undecodable)."""
    try:
        version, enqueued, attempts, key_len, rest = raw.split(b"|", 4)
        n = int(key_len)
        if version != FORMAT or rest[n : n + 1] != b"|":
            raise ValueError("bad header")
        return Entry(int(enqueued), int(attempts), rest[:n].decode(), rest[n + 1 :], raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRecord("", "undecodable", f"queue entry cannot be decoded: {raw[:80]!r}") from None


def with_attempts(entry: Entry, attempts: int) -> Entry:
    raw = encode(entry.user_key, entry.data, entry.enqueued_ms, attempts)
    return entry._replace(attempts=attempts, raw=raw)
