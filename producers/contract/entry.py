"""How a record sits in Redis, and which shard it goes to.

An entry is ``2|<seq>|<enqueued_ms>|<attempts>|<key length>|<user key>|<identification JSON>``.

``seq`` is the entry's place in its shard, given by the enqueue script from a per-shard counter,
and ``enqueued_ms`` is Redis's clock at that moment: a producer sends only the tail
(``<attempts>|<key length>|<user key>|<JSON>``, see ``tail``) and the script puts the head in front.
So a shard's entries are numbered in the order Redis accepted them, whatever the producers'
clocks say; one user always maps to one shard, so ``seq`` orders each user's updates.  It is what
keeps a user's waiting updates in order (``worker/drain/waiting.py``) and what gives dead letters their
replay order.

The header lets a drainer group, order and age records without parsing their JSON, and lets the
batch body be built by joining the JSON parts as they are.  ``attempts`` counts the requests that
carried the record and failed in a retryable way; it is rewritten only on that (rare) path.
"""

from __future__ import annotations

import time
import zlib
from typing import NamedTuple

from producers.contract.errors import InvalidRecord

FORMAT = b"2"


class Entry(NamedTuple):
    """A decoded entry.  The header's numbers are read from ``raw`` when asked for: only the rare
    paths (a retry, a parking, a dead letter) need them, and reading three ints for every entry of
    every claim was a third of what decoding cost the drain (bench/stages.py)."""

    user_key: str
    data: bytes
    raw: bytes

    @property
    def seq(self) -> int:
        return int(self.raw.split(b"|", 2)[1])

    @property
    def enqueued_ms(self) -> int:
        return int(self.raw.split(b"|", 3)[2])

    @property
    def attempts(self) -> int:
        return int(self.raw.split(b"|", 4)[3])


def shard_of(user_key: str, shards: int) -> int:
    """A stable shard for the key: every process, producer or worker, must compute the same one."""
    return zlib.crc32(user_key.encode()) % shards


def now_ms() -> int:
    """This machine's clock, for what is shown to people (progress, logs), never for queue decisions."""
    return time.time_ns() // 1_000_000


def tail(user_key: str, data: bytes, attempts: int = 0) -> bytes:
    """What a producer sends for one record; the enqueue script prefixes ``2|<seq>|<enqueued_ms>|``."""
    key = user_key.encode()
    return b"%d|%d|%b|%b" % (attempts, len(key), key, data)


def encode(user_key: str, data: bytes, seq: int, enqueued_ms: int, attempts: int = 0) -> bytes:
    return b"2|%d|%d|%b" % (seq, enqueued_ms, tail(user_key, data, attempts))


def decode(raw: bytes) -> Entry:
    """Parse an entry; a malformed one raises InvalidRecord (the drain dead-letters it as undecodable)."""
    return decode_all([raw])[0]


def decode_all(raws: list[bytes]) -> list[Entry]:
    """``decode`` of each entry, in one loop (a drain decodes a thousand at a time); the first
    malformed one raises InvalidRecord."""
    out: list[Entry] = []
    append = out.append
    new = tuple.__new__  # what Entry(...) runs, without a Python-level call per entry
    for raw in raws:
        try:
            version, seq, enqueued, attempts, key_len, rest = raw.split(b"|", 5)
            n = int(key_len)
            # the numbers are read lazily, so they are checked here: digits, as the encoder writes them
            if version != FORMAT or rest[n : n + 1] != b"|":
                raise ValueError("bad header")
            if not (seq.isdigit() and enqueued.isdigit() and attempts.isdigit()):
                raise ValueError("bad header")
            append(new(Entry, (rest[:n].decode(), rest[n + 1 :], raw)))
        except (ValueError, UnicodeDecodeError):
            raise InvalidRecord("", "undecodable", f"queue entry cannot be decoded: {raw[:80]!r}") from None
    return out


def with_attempts(entry: Entry, attempts: int) -> Entry:
    return entry._replace(raw=encode(entry.user_key, entry.data, entry.seq, entry.enqueued_ms, attempts))
